"""apply_model: tiled output equals whole-frame output everywhere (edges and corners included), and the
frame-level runner moves only tiles to the device, never clamps, and restores the network's mode."""

from __future__ import annotations

import re

import pytest
import torch

from duplidog.errors import DuplidogError
from duplidog.core.apply import apply_model, plan_run
from shotdata import DEVICES
from standin_model import TinyPyramid


@pytest.fixture(scope="module")
def net():
    return TinyPyramid(3, 3, width=4).eval()


def frame(height, width, channels=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    # Scene-like values: mostly 0..1, with some well above 1 and some negative, to catch any clamp.
    return torch.randn(1, channels, height, width, generator=g) * 2.0 + 0.5


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("height,width,tile", [
    (563, 1000, 128), (563, 1000, 200), (2000, 37, 64), (2000, 37, 100), (97, 131, 48), (5, 3, 48),
])
def test_tiled_equals_whole_frame_everywhere(net, device, height, width, tile):
    image = frame(height, width)
    whole = apply_model(net, image, tile="none", device=device, precision="fp32")
    tiled = apply_model(net, image, tile=tile, device=device, precision="fp32")
    assert whole.shape == tiled.shape == (1, 3, height, width)
    assert whole.device.type == tiled.device.type == "cpu" and tiled.dtype == torch.float32
    difference = (whole - tiled).abs()
    assert difference.max().item() <= 1e-3, f"worst at {divmod(int(difference.amax(1).argmax()), width)}"
    # The frame's border rows and columns in particular (where a Hann window would fade to zero).
    for edge in (difference[..., 0, :], difference[..., -1, :], difference[..., :, 0], difference[..., :, -1]):
        assert edge.max().item() <= 1e-3
    net.to("cpu")


def test_an_ensemble_of_flipped_and_turned_copies_stays_exact_in_tiles():
    from duplidog.core.ensemble import TRANSFORMS, resolve_ensemble, transform, untransform

    x = frame(8, 12)
    assert all(torch.equal(untransform(transform(x, k), k), x) for k in range(8))
    assert len({tuple(transform(x, k).flatten().tolist()) for k in TRANSFORMS[8]}) == 8
    matte = TinyPyramid(3, 1, width=4).eval()
    matte.out_channels = 1
    assert resolve_ensemble("auto", 3, 1) == 8 and resolve_ensemble("auto", 3, 3) == 1
    assert resolve_ensemble("auto", 3, 3, scale=2) == 8  # an upscale averages 8 too
    image = frame(150, 97, seed=3)
    averaged = apply_model(matte, image, tile="none", edge_context=8)  # auto: a matte averages 8
    tiled = apply_model(matte, image, tile=64, edge_context=8, ensemble=8)
    single = apply_model(matte, image, tile="none", edge_context=8, ensemble=1)
    assert (averaged - tiled).abs().max().item() <= 1e-3
    assert (averaged - single).abs().max().item() > 1e-3
    with pytest.raises(DuplidogError, match="infer.ensemble"):
        apply_model(matte, image, ensemble=3)


def test_mirrored_edge_context_is_exact_too(net):
    image = frame(150, 97, seed=1)
    whole = apply_model(net, image, tile="none", edge_context=20)
    tiled = apply_model(net, image, tile=64, edge_context=20)
    assert (whole - tiled).abs().max().item() <= 1e-3
    # and it does change the edge (the network meets mirrored context instead of its zero padding)
    plain = apply_model(net, image, tile="none", edge_context=0)
    assert (plain - whole)[..., 0, :].abs().max().item() > 1e-4


def test_auto_edge_context_is_the_context_the_model_was_trained_with(net):
    image = frame(70, 45, seed=2)
    unknown = apply_model(net, image, tile="none")  # a network without the attribute: no context
    assert torch.equal(unknown, apply_model(net, image, tile="none", edge_context=0))
    net.edge_context = 20
    try:
        assert torch.equal(apply_model(net, image, tile="none"), apply_model(net, image, tile="none", edge_context=20))
    finally:
        del net.edge_context
    with pytest.raises(DuplidogError, match="edge_context"):
        apply_model(net, image, edge_context="wide")


def test_the_exactness_test_catches_an_understated_reach():
    """With the reach understated, tile seams blend inexact pixels: the comparison above must notice."""
    liar = TinyPyramid(3, 3, width=4).eval()
    true_reach = liar.reach
    image = frame(300, 300, seed=3)
    whole = apply_model(liar, image, tile="none")
    liar.reach = 2
    tiled = apply_model(liar, image, tile=32, overlap=8)
    assert (whole - tiled).abs().max().item() > 1e-3
    liar.reach = true_reach


def test_nothing_is_clamped_and_output_channels_follow_the_model():
    matte_net = TinyPyramid(3, 1, width=4).eval()
    image = frame(90, 70) * 100.0  # scene-linear highlights far above 1
    out = apply_model(matte_net, image, tile=48)
    assert out.shape == (1, 1, 90, 70)
    assert out.max().item() > 1.0 and out.min().item() < 0.0


def test_auto_runs_whole_frame_within_the_cpu_budget_and_tiles_beyond_it(net):
    image = frame(301, 517)
    small = plan_run(net, tuple(image.shape), "auto", cpu_pixel_budget=10_000_000)
    assert small.grid is None
    from_ram = plan_run(net, tuple(image.shape), "auto", cpu_pixel_budget=None)  # the RAM decides
    assert from_ram.grid is None and from_ram.dtype == torch.float32
    tight = plan_run(net, tuple(image.shape), "auto", cpu_pixel_budget=20_000, batch_size=4)
    assert tight.grid is not None and len(tight.grid) > 1
    assert tight.grid.tile_height * tight.grid.tile_width * tight.batch_size <= 20_000 or tight.batch_size == 1
    whole = apply_model(net, image, tile="none")
    auto = apply_model(net, image, tile="auto", cpu_pixel_budget=20_000)
    assert (whole - auto).abs().max().item() <= 1e-3


def test_every_tile_and_overlap_the_schema_accepts_plans_and_runs(net):
    # Issue 12.3: tiles too small for the overlap are enlarged, overlaps below the reach raised.
    assert plan_run(net, (1, 3, 200, 300), 10_000).grid is None  # a tile as large as the frame: whole frame
    image = frame(200, 300)
    whole = apply_model(net, image, tile="none", edge_context=0)
    for setting in ({"tile": 16}, {"tile": 17, "overlap": 1}, {"tile": 64}, {"tile": 400}, {"tile": "none"},
                    {"tile": "auto", "overlap": 1}, {"tile": 48, "overlap": 500}):
        settings = {"overlap": None, "edge_context": 0, **setting}
        plan = plan_run(net, (1, 3, 200, 300), settings["tile"], settings["overlap"], edge_context=0, device="cpu")
        if plan.grid is not None:
            assert plan.grid.overlap >= 2 * net.reach + 1
        tiled = apply_model(net, image, tile=settings["tile"], overlap=settings["overlap"], edge_context=0,
                            cpu_pixel_budget=20_000)
        assert (whole - tiled).abs().max().item() <= 1e-3, setting


def test_training_mode_is_restored_and_gradients_are_not_recorded(net):
    net.train()
    out = apply_model(net, frame(40, 40), tile=48)
    assert net.training and not out.requires_grad
    net.eval()


def test_bad_arguments_are_clear(net):
    with pytest.raises(DuplidogError, match="infer.tile"):
        apply_model(net, frame(40, 40), tile="huge")
    with pytest.raises(DuplidogError, match="infer.precision"):
        apply_model(net, frame(40, 40), precision="int8")
    with pytest.raises(ValueError, match=r"\(1, C, H, W\)"):
        apply_model(net, torch.zeros(3, 40, 40))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_reduced_precision_on_gpu_stays_close_to_fp32(net):
    image = frame(563, 1000)
    reference = apply_model(net, image, tile="none", precision="fp32", device="cpu")
    for tile in ("none", 128):
        fast = apply_model(net, image, tile=tile, precision="auto", device="cuda")
        assert fast.device.type == "cpu"
        assert (fast - reference).abs().max().item() < 0.1
    net.to("cpu")


def test_the_real_network_tiles_exactly():
    """duplidog's MSRN (the small preset, reach ~550 pixels, grid of 16) through the same comparison."""
    model = pytest.importorskip("duplidog.model")
    torch.manual_seed(0)
    net = model.build_model(preset="small").eval()
    image = frame(1400, 45, seed=2)
    whole = apply_model(net, image, tile="none")
    tiled = apply_model(net, image, tile=1280)
    assert (whole - tiled).abs().max().item() <= 1e-3


# ---------------------------------------------------------------------------------------------------
# infer_frames: files in, files out.

import json  # noqa: E402
import os  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from duplidog import colour, imageio  # noqa: E402
from duplidog.infer import infer_frames, infer_sequence  # noqa: E402
from shotdata import PLAN_FRAMES as FRAMES, make_model, write_frame, write_plan_shot  # noqa: E402

@pytest.fixture
def shot(tmp_path):
    plan = write_plan_shot(tmp_path)
    make_model(tmp_path / "model", ("R", "G", "B"), ("R", "G", "B"))
    return tmp_path, plan


def test_outputs_keep_the_source_spec_carry_alpha_bit_exact_and_record_provenance(shot):
    root, plan = shot
    summary = infer_frames(root / "model", plan, FRAMES, str(root / "out/out.%04d.exr"), {"device": "cpu"},
                           summary_path=root / "infer/chunk.json")
    assert summary["frames"] == 4 and summary["seconds"] > 0 and summary["fps"] > 0
    assert json.loads((root / "infer/chunk.json").read_text())["frames"] == 4
    card = json.loads((root / "model/model.json").read_text())
    for frame in FRAMES:
        source = imageio.read_info(root / f"plate/plate.{frame}.exr")
        out = imageio.read_info(root / f"out/out.{frame}.exr")
        assert (out.width, out.height, out.pixel_type, out.compression) == (52, 36, "half", "piz")
        assert out.channel_names == ("R", "G", "B", "A")
        assert out.attributes["studio:camera"] == "A cam"
        assert imageio.provenance(out)["model_id"] == card["id"]
        assert imageio.provenance(out)["version"]
        alpha_in = imageio.read_pixels(source.path, ["A"])
        alpha_out = imageio.read_pixels(out.path, ["A"])
        np.testing.assert_array_equal(alpha_in.view(np.uint32), alpha_out.view(np.uint32))
        rgb = imageio.read_pixels(out.path, ["R", "G", "B"])
        assert rgb.max() > 100.0  # the highlight came through, unclamped


def test_the_result_is_the_model_applied_in_its_working_space(shot):
    from duplidog.core.modelstore import load_model

    root, plan = shot
    infer_frames(root / "model", plan, [1002], str(root / "out/out.%04d.exr"), {"device": "cpu", "tile": "none"})
    net, card = load_model(root / "model", "cpu")
    source = imageio.read_pixels(root / "plate/plate.1002.exr", ["R", "G", "B"])
    x = torch.from_numpy(colour.encode(source, "linear").transpose(2, 0, 1).copy())[None]
    with torch.no_grad():
        expected = colour.decode(net(x)[0].permute(1, 2, 0).numpy(), "linear")
    written = imageio.read_pixels(root / "out/out.1002.exr", ["R", "G", "B"])
    np.testing.assert_allclose(written, expected.astype(np.float16).astype(np.float32), rtol=2e-3, atol=2e-3)


def test_chunks_give_the_same_frames_as_one_run(shot):
    root, plan = shot
    infer_frames(root / "model", plan, FRAMES, str(root / "one/f.%04d.exr"), {"device": "cpu"})
    infer_frames(root / "model", plan, FRAMES[:1], str(root / "split/f.%04d.exr"), {"device": "cpu"})
    infer_frames(root / "model", plan, FRAMES[1:], str(root / "split/f.%04d.exr"), {"device": "cpu", "tile": 256})
    for frame in FRAMES:
        a = imageio.read_pixels(root / f"one/f.{frame}.exr")
        b = imageio.read_pixels(root / f"split/f.{frame}.exr")
        np.testing.assert_array_equal(a, b)


def test_each_frame_is_written_under_a_temporary_name_then_renamed(shot, monkeypatch):
    root, plan = shot
    renames = []
    real_replace = os.replace

    def recording_replace(src, dst):
        renames.append((Path(src), Path(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", recording_replace)
    infer_frames(root / "model", plan, FRAMES, str(root / "out/out.%04d.exr"), {"device": "cpu"})
    finals = {dst: src for src, dst in renames}
    for frame in FRAMES:
        final = root / f"out/out.{frame}.exr"
        assert final in finals, f"{final} was not renamed into place"
        assert finals[final].parent == final.parent and finals[final].name != final.name
        assert finals[final].suffix == ".exr" and not finals[final].exists()
    assert sorted(p.name for p in (root / "out").iterdir()) == [f"out.{f}.exr" for f in FRAMES]


def test_a_matte_model_writes_one_channel(tmp_path):
    plan = write_plan_shot(tmp_path, outputs=("mask",), passthrough=())
    make_model(tmp_path / "model", ("R", "G", "B"), ("mask",), space="log")
    infer_frames(tmp_path / "model", plan, FRAMES[:2], None, {"device": "cpu"})
    info = imageio.read_info(tmp_path / "out/out.1001.exr")
    assert info.channel_names == ("mask",) and info.pixel_type == "half" and (info.width, info.height) == (52, 36)
    assert np.isfinite(imageio.read_pixels(info.path)).all()


def test_a_corrupt_source_frame_stops_the_chunk_naming_it_and_leaves_no_partial_frame(shot):
    root, plan = shot
    (root / "plate/plate.1003.exr").write_bytes(b"not an exr at all")
    with pytest.raises(DuplidogError, match="plate.1003.exr"):
        infer_frames(root / "model", plan, FRAMES, str(root / "out/out.%04d.exr"), {"device": "cpu"})
    names = sorted(p.name for p in (root / "out").iterdir()) if (root / "out").exists() else []
    assert "out.1003.exr" not in names and not [n for n in names if ".tmp-" in n]


def test_a_truncated_frame_mid_chunk_is_one_error_naming_it_and_the_good_frames_are_kept(shot):
    # Issue 13.16: the reader's error came chained to a queue.Empty, and the frames before it were lost.
    root, plan = shot
    whole = (root / "plate/plate.1003.exr").read_bytes()
    (root / "plate/plate.1003.exr").write_bytes(whole[: len(whole) * 2 // 3])  # header intact, pixels cut
    with pytest.raises(DuplidogError, match=r"plate.1003.exr: ") as caught:
        infer_frames(root / "model", plan, FRAMES, str(root / "out/out.%04d.exr"), {"device": "cpu", "read_ahead": 3})
    assert caught.value.__context__ is None and caught.value.__cause__ is None
    assert "\n" not in str(caught.value)
    assert sorted(p.name for p in (root / "out").iterdir()) == ["out.1001.exr", "out.1002.exr"]


def test_a_plate_frame_replaced_since_ingest_by_another_kind_is_refused_naming_it(shot):
    root, plan_path = shot
    plan = json.loads(plan_path.read_text())
    plan["channel_names"] = ["R", "G", "B", "A"]
    plan_path.write_text(json.dumps(plan))
    write_frame(root / "plate/plate.1003.exr", np.zeros((36, 52, 3), np.float32),
                attributes={"compression": "piz"})  # its alpha gone
    with pytest.raises(DuplidogError, match=r"plate.1003.exr: channels R,G,B, but the plate's were R,G,B,A at ingest"):
        infer_frames(root / "model", plan_path, FRAMES, str(root / "out/out.%04d.exr"), {"device": "cpu"})
    write_frame(root / "plate/plate.1003.exr", np.zeros((36, 52, 4), np.float32), "float", ("R", "G", "B", "A"),
                attributes={"compression": "piz"})
    with pytest.raises(DuplidogError, match=r"plate.1003.exr: pixel type float, but the plate's was half"):
        infer_frames(root / "model", plan_path, FRAMES, str(root / "out/out.%04d.exr"), {"device": "cpu"})


def test_channels_the_model_was_not_trained_on_are_refused(tmp_path):
    plan = write_plan_shot(tmp_path)
    make_model(tmp_path / "model", ("R", "G", "A"), ("R", "G", "B"))
    with pytest.raises(DuplidogError, match="trained with input channels"):
        infer_frames(tmp_path / "model", plan, FRAMES, None, {"device": "cpu"})


def test_infer_sequence_needs_no_plan(shot):
    root, _ = shot
    summary = infer_sequence(root / "model", str(root / "plate/plate.%04d.exr"), str(root / "seq/s.####.exr"),
                             tile="auto", device="cpu")
    assert summary["frames"] == 4
    info = imageio.read_info(root / "seq/s.1004.exr")
    assert info.channel_names == ("R", "G", "B", "A")


def test_the_infer_command_takes_settings_and_ends_in_one_line(shot, capsys, monkeypatch):
    from duplidog.cli import main

    root, _ = shot
    monkeypatch.chdir(root)
    argv = ["infer", "--model", "model", "--source", "plate/plate.%04d.exr", "--output", "cli/c.####.exr",
            "--tile", "64", "--precision", "fp32", "--device", "cpu", "--set", "infer.ensemble=2"]
    assert main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and re.match(r"infer: 4 frames in [\d.]+ s \([\d.]+ frames/s\) to cli/c.####.exr", out[0])
    assert main(argv[:-2] + ["--set", "train.steps=3"]) == 2
    assert "only infer.* settings apply here" in capsys.readouterr().err
    assert main(argv[:-2] + ["--set", "infer.ensemble=3"]) == 2


def test_a_killed_runs_temporaries_of_this_jobs_frames_are_removed_and_no_others(shot):
    root, _ = shot
    out = root / "stale"
    out.mkdir()
    mine = out / ".s.1002.tmp-0123abcd.exr"  # what a kill -9 during the write of frame 1002 leaves
    other = out / ".s.1003.tmp-0123abcd.exr"  # frame 1003 belongs to another (maybe running) job
    for path in (mine, other):
        path.write_bytes(b"")
    infer_sequence(root / "model", str(root / "plate/plate.%04d.exr"), str(out / "s.####.exr"), frames=[1001, 1002],
                   device="cpu")
    assert not mine.exists() and other.exists()
    assert sorted(p.name for p in out.iterdir()) == [".s.1003.tmp-0123abcd.exr", "s.1001.exr", "s.1002.exr"]


def test_infer_sequence_refuses_to_write_over_its_source(shot):
    root, _ = shot
    plate = root / "plate/plate.1004.exr"
    before = plate.read_bytes()
    for output in (str(root / "plate/plate.%04d.exr"), str(root / "plate/../plate/plate.####.exr")):
        with pytest.raises(DuplidogError, match=r"output would overwrite the source or target frame"):
            infer_sequence(root / "model", str(root / "plate/plate.%04d.exr"), output, device="cpu")
    assert plate.read_bytes() == before


def test_the_benchmark_runs_and_prints_ratios_against_read_write(capsys):
    from duplidog.bench.infer import bench_infer

    results = bench_infer(frames=1, width=96, height=64, threads=1)
    printed = capsys.readouterr().out
    assert "x read+write" in printed and "whole" in printed and "tiled" in printed
    assert results["whole_ratio"] > 0 and results["tiled_ratio"] > 0 and results["read_write_mpix_per_s"] > 0


def test_apply_model_defaults_are_the_schema_defaults():
    import inspect

    from duplidog.settings import defaults

    parameters = inspect.signature(apply_model).parameters
    for key, value in defaults()["infer"].items():
        if key in parameters:
            assert parameters[key].default == value or key == "device", key
