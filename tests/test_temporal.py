"""Neighbour frames (model.temporal_frames N): the window, the network, the pool's stacked tiles, training,
inference chunk by chunk, exports and a tiny pipeline run.

Tiny networks on tiny frames: each test takes seconds on one CPU core.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from shotdata import ROOT, TINY as PIPELINE_TINY, jobs_in, make_shot, model_card, nudged, snakemake, write_frame
from trainshot import TINY_MODEL, TINY_POOL, TINY_TRAIN

from duplidog import temporal
from duplidog.errors import DuplidogError
from duplidog.model import build_from_config, build_model

torch.set_num_threads(1)

TINY = dict(levels=2, stages=1, width=4, depth=1, block="res")  # size_multiple 4


# -- the window -----------------------------------------------------------------------------------------
def test_the_window_is_the_frame_then_its_neighbours_mirrored_at_the_shot_ends():
    assert temporal.window(1005, 0, 1001, 1010) == [1005]
    assert temporal.window(1005, 2, 1001, 1010) == [1005, 1003, 1004, 1006, 1007]
    assert temporal.window(1001, 1, 1001, 1010) == [1001, 1002, 1002]  # t-1 at the first frame is t+1
    assert temporal.window(1010, 2, 1001, 1010) == [1010, 1008, 1009, 1009, 1008]
    assert temporal.window(1002, 3, 1001, 1003) == [1002, 1003, 1002, 1001, 1003, 1002, 1001]  # folds back
    assert temporal.window(7, 2, 7, 7) == [7] * 5  # a one-frame shot
    assert temporal.needed_frames([1004, 1005, 1006], 1, 1001, 1006) == [1003, 1004, 1005, 1006]


def test_a_frame_cache_loads_each_frame_once_and_forgets_what_no_later_window_reads():
    loaded = []
    cache = temporal.FrameCache(lambda f: loaded.append(f) or np.full((2, 2, 1), f, np.float32))
    for frame in range(1001, 1007):
        stacked = temporal.stacked_frame(frame, 1, (1001, 1006), cache.get)
        cache.forget_before(frame - 1)
        assert stacked[0, 0].tolist() == temporal.window(frame, 1, 1001, 1006)
        assert len(cache) <= 3
    assert loaded == list(range(1001, 1007)) and cache.loads == 6


# -- the network ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("channels", [(3, 3), (3, 1)])
def test_a_temporal_network_reads_every_frame_in_its_stem_and_the_centre_frame_in_its_colour_path(channels):
    cin, cout = channels
    network = nudged(build_model("msrn", "small", cin, cout, temporal_frames=1, **TINY)).eval()
    assert network.stacked_channels == 3 * cin and network.temporal_frames == 1
    assert tuple(network.stem.weight.shape[:2]) == (4, 3 * cin + cout)
    assert build_from_config(network.config).temporal_frames == 1 and network.config["temporal_frames"] == 1
    x = torch.rand(2, 3 * cin, 12, 16)
    with torch.no_grad():
        whole = network(x)
        split = network.finest_pass(network.coarse_pass(x))
        assert tuple(whole.shape) == (2, cout, 12, 16) and torch.allclose(split, whole, atol=1e-6)
        # The neighbours change the result (through the encoder-decoder) ...
        moved = x.clone()
        moved[:, cin:] += 0.5
        assert float((network(moved) - whole).abs().max()) > 1e-6
        # ... but the colour path reads the centre frame alone.
        if network.colour is not None:
            colour = network.training_outputs(x)[1]
            assert torch.equal(colour, network.training_outputs(moved)[1])
            assert torch.equal(colour, network.colour(x[:, :cin]))
    with pytest.raises(ValueError, match="has 3 channels, the network reads 9"):
        network(torch.rand(1, 3, 12, 16))


def test_temporal_frames_0_is_the_one_frame_network_bit_for_bit():
    torch.manual_seed(5)
    plain = build_model("msrn", "small", 3, 3, **TINY)
    torch.manual_seed(5)
    zero = build_model("msrn", "small", 3, 3, temporal_frames=0, **TINY)
    assert plain.config == zero.config and zero.stacked_channels == 3
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), zero.state_dict().values()))
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(nudged(plain)(x), nudged(zero)(x))
    for bad in (-1, 4, 1.5, True):
        with pytest.raises(DuplidogError, match="temporal_frames"):
            build_model("msrn", "small", 3, 3, temporal_frames=bad, **TINY)


# -- a shot whose network reads neighbours ----------------------------------------------------------------
def temporal_shot(root: Path, n: int = 1, pool: dict | None = None, keyframes=(1001, 1003, 1006),
                  steps: int = 4, prepare=None) -> dict:
    """Six frames of the drifting plate (every frame differs), keyframes graded; ingested and pooled
    (after ``prepare(root)``, if given, has changed the files)."""
    from duplidog.ingest import ingest
    from duplidog.pool import build_pool
    from duplidog.settings import resolve

    shot_file = make_shot(root / "shot", frames=range(1001, 1007), keyframes=keyframes, size=(48, 40))
    if prepare is not None:
        prepare(root)
    user = yaml.safe_load(shot_file.read_text())
    user.update({"model": {**TINY_MODEL, "temporal_frames": n}, "pool": {**TINY_POOL, **(pool or {})},
                 "train": {**TINY_TRAIN, "steps": steps, "validate_every": 0, "checkpoint_every": 0},
                 "seed": 0, "colorspace": "log"})
    config = resolve(user)
    ingest(config, root / "ingest")
    build_pool(root / "ingest/manifest.csv", root / "ingest/plan.json", root / "pool.zarr", config["pool"], seed=0)
    return {"config": config, "root": root}


def test_a_missing_neighbour_plate_frame_is_refused_at_ingest_naming_it(tmp_path):
    from duplidog.ingest import ingest
    from duplidog.settings import resolve

    shot_file = make_shot(tmp_path / "shot", frames=range(1001, 1007), keyframes=(1001, 1006), size=(48, 40))
    (tmp_path / "shot/plate/plate.1004.exr").unlink()
    user = {**yaml.safe_load(shot_file.read_text()), "frames": "1001-1003,1005-1006"}
    ingest(resolve({**user, "model": {"temporal_frames": 0}}), tmp_path / "alone")  # one frame: no neighbours
    with pytest.raises(DuplidogError, match=r"plate\.1004\.exr: plate frame\(s\) 1004 missing, which "
                                            r"model.temporal_frames 1 reads"):
        ingest(resolve({**user, "model": {"temporal_frames": 1}}), tmp_path / "ingest")


def plate(root: Path, frame: int) -> np.ndarray:
    from duplidog.imageio import read_pixels

    return read_pixels(root / "shot/plate" / f"plate.{frame:04d}.exr")


def dihedral(tile: np.ndarray) -> list[np.ndarray]:
    """The 8 flips and turns of a (C, T, T) tile."""
    out = []
    for flipped in (tile, tile[:, :, ::-1]):
        for turns in range(4):
            out.append(np.rot90(flipped, turns, axes=(1, 2)))
    return out


@pytest.mark.parametrize("augment", [False, True])
def test_the_pool_stores_each_tile_with_its_neighbours_tiles_at_the_same_place_augmented_alike(tmp_path, augment):
    import zarr

    pool = ({"augment_fraction": 1.0, "flips": True, "turns": True, "rotate_degrees": 0, "scale_min": 1.0,
             "scale_max": 1.0} if augment else {})
    temporal_shot(tmp_path, 1, pool)
    plan = json.loads((tmp_path / "ingest/plan.json").read_text())
    assert plan["temporal_frames"] == 1
    group = zarr.open_group(str(tmp_path / "pool.zarr"), mode="r")
    assert group.attrs["temporal_frames"] == 1
    source = np.asarray(group["source"][:], np.float32)
    target = np.asarray(group["target"][:], np.float32)
    frames, positions = np.asarray(group["frame"][:]), np.asarray(group["position"][:])
    assert source.shape[1:] == (9, 16, 16) and target.shape[1:] == (3, 16, 16)
    ends = (1001, 1006)
    assert {int(f) for f in frames} == {1001, 1006}  # 1003 is the validation keyframe
    for tile, frame, (y, x), wanted in zip(source, frames, positions, target):
        window = temporal.window(int(frame), 1, *ends)
        crops = [plate(tmp_path, f)[y:y + 16, x:x + 16].transpose(2, 0, 1) for f in window]
        # Which flip and turn the keyframe's own tile had (the plate is noise: one of the 8 fits) ...
        fits = [k for k, d in enumerate(dihedral(crops[0])) if np.allclose(d, tile[:3], atol=2e-3)]
        assert len(fits) == 1 and (augment or fits == [0])
        # ... is what its neighbours' tiles had, at the same place; the target is the keyframe's graded.
        for index, crop in enumerate(crops):
            np.testing.assert_allclose(tile[3 * index: 3 * index + 3], dihedral(crop)[fits[0]], atol=2e-3)
        np.testing.assert_allclose(wanted, tile[:3] * 0.8 + 0.05, atol=4e-3)
    # At the first frame t-1 is t+1, at the last t+1 is t-1 (mirrored).
    for end in ends:
        np.testing.assert_array_equal(source[frames == end][:, 3:6], source[frames == end][:, 6:9])


def test_warped_temporal_tiles_show_every_frame_through_the_same_warp(tmp_path):
    import zarr

    from shotdata import write_frame

    # Frame 1002 is frame 1001 again: keyframe 1001's window (1001, 1002, 1002 mirrored) is one picture
    # three times, so tiles rotated and zoomed alike are equal channel for channel, and any other warp
    # of a neighbour would show.
    temporal_shot(tmp_path, 1, {"augment_fraction": 1.0, "flips": True, "turns": True, "rotate_degrees": 8,
                                "scale_min": 0.9, "scale_max": 1.2},
                  prepare=lambda root: write_frame(root / "shot/plate/plate.1002.exr", plate(root, 1001)))
    group = zarr.open_group(str(tmp_path / "pool.zarr"), mode="r")
    source = np.asarray(group["source"][:], np.float32)
    first = source[np.asarray(group["frame"][:]) == 1001]
    assert len(first) > 0
    np.testing.assert_array_equal(first[:, 0:3], first[:, 3:6])
    np.testing.assert_array_equal(first[:, 0:3], first[:, 6:9])
    last = source[np.asarray(group["frame"][:]) == 1006]  # other frames: the neighbours differ
    assert float(np.abs(last[:, 0:3] - last[:, 3:6]).mean()) > 0.05


def test_a_pool_of_another_temporal_frames_than_the_model_is_refused_naming_the_pool(tmp_path):
    from duplidog.train import train

    shot = temporal_shot(tmp_path, 1)
    config = {**shot["config"], "model": {**shot["config"]["model"], "temporal_frames": 2}}
    with pytest.raises(DuplidogError, match=r"pool\.zarr: pool tiles carry 3 frame\(s\) \(temporal_frames 1\), "
                                            r"but model.temporal_frames is 2"):
        train(tmp_path / "pool.zarr", tmp_path / "ingest/plan.json", tmp_path / "ingest/manifest.csv",
              tmp_path / "model", tmp_path / "train", config)


def test_training_a_temporal_network_and_refusing_to_warm_start_another_temporal_frames(tmp_path):
    from duplidog.core.card import read_card
    from duplidog.train import train

    shot = temporal_shot(tmp_path / "a", 1, steps=4)
    root = tmp_path / "a"
    result = train(root / "pool.zarr", root / "ingest/plan.json", root / "ingest/manifest.csv", root / "model",
                   root / "train", shot["config"])
    card = read_card(root / "model")
    assert card.temporal_frames == 1 and card.network["temporal_frames"] == 1 and result["steps"] == 4
    assert card.network["in_channels"] == 3 and card.input_channels == ("R", "G", "B")
    assert np.isfinite(result["validation_psnr"]) and result["validation_psnr_identity"] is not None

    other = temporal_shot(tmp_path / "b", 0, steps=2)
    warm = {**other["config"], "train": {**other["config"]["train"], "init_from": str(root / "model")}}
    with pytest.raises(DuplidogError, match=r"reads 3 frame\(s\) \(temporal_frames 1\), this shot's network 1 "
                                            r"\(model.temporal_frames 0\)"):
        train(tmp_path / "b/pool.zarr", tmp_path / "b/ingest/plan.json", tmp_path / "b/ingest/manifest.csv",
              tmp_path / "b/model", tmp_path / "b/train", warm)


def test_the_train_bench_times_the_network_a_temporal_pool_trains(tmp_path):
    # It built an in -> in network from the pool's stacked channels (9 -> 9 for RGB with N = 1).
    from duplidog.bench.train import bench_train

    shot = temporal_shot(tmp_path, 1)
    config = {**shot["config"], "train": {**shot["config"]["train"], "batch_size": 2, "num_workers": 1}}
    result = bench_train(str(tmp_path / "pool.zarr"), config, presets=["small"], steps=1, warmup=0, device="cpu",
                         print_fn=lambda line: None)
    assert set(result["steps_per_s"]) == {"small"} and result["steps_per_s"]["small"] > 0


# -- inference: a sliding window, chunk by chunk ---------------------------------------------------------
def save_temporal_model(model_dir: Path, n: int = 1, space: str = "log") -> Path:
    from duplidog import colour
    from duplidog.core.modelstore import save_model

    torch.manual_seed(n)
    network = nudged(build_model("msrn", "small", 3, 3, temporal_frames=n, **TINY), seed=n)
    card = {"input_channels": ["R", "G", "B"], "output_channels": ["R", "G", "B"],
            "colorspace": colour.describe(space), "edge_context": 3, "training": {"shot": "t1", "steps": 1}}
    save_model(model_dir, network, card)
    return model_dir


def output(root: Path, name: str, frame: int) -> np.ndarray:
    from duplidog.imageio import read_pixels

    return read_pixels(root / name / f"o.{frame:04d}.exr")


def test_frames_at_a_chunk_edge_equal_a_single_chunk_run_and_each_plate_frame_is_read_once(tmp_path, monkeypatch):
    from duplidog import imageio
    from duplidog.infer import infer_frames

    temporal_shot(tmp_path, 1)
    model_dir = save_temporal_model(tmp_path / "model", 1)
    plan = tmp_path / "ingest/plan.json"
    settings = {"device": "cpu", "tile": "none", "precision": "fp32"}
    reads: list[str] = []
    real = imageio.read_pixels
    monkeypatch.setattr(imageio, "read_pixels",
                        lambda path, *a, **k: reads.append(Path(path).name) or real(path, *a, **k))
    infer_frames(model_dir, plan, range(1001, 1007), str(tmp_path / "whole/o.%04d.exr"), settings)
    assert sorted(reads) == [f"plate.{f}.exr" for f in range(1001, 1007)]  # six frames, each read once
    reads.clear()
    infer_frames(model_dir, plan, range(1001, 1004), str(tmp_path / "chunks/o.%04d.exr"), settings)
    assert sorted(reads) == [f"plate.{f}.exr" for f in range(1001, 1005)]  # 1004: the neighbour past its end
    reads.clear()
    infer_frames(model_dir, plan, range(1004, 1007), str(tmp_path / "chunks/o.%04d.exr"), settings)
    assert sorted(reads) == [f"plate.{f}.exr" for f in range(1003, 1007)]
    for frame in range(1001, 1007):
        np.testing.assert_array_equal(output(tmp_path, "chunks", frame), output(tmp_path, "whole", frame))


def test_the_sliding_window_is_mirrored_at_the_shot_ends(tmp_path):
    from duplidog import colour
    from duplidog.core.apply import apply_model
    from duplidog.infer import infer_frames
    from duplidog.core.modelstore import load_model

    temporal_shot(tmp_path, 2)
    model_dir = save_temporal_model(tmp_path / "model", 2)
    settings = {"device": "cpu", "tile": "none", "precision": "fp32"}
    infer_frames(model_dir, tmp_path / "ingest/plan.json", [1001, 1002, 1006], str(tmp_path / "out/o.%04d.exr"),
                 settings)
    model, _ = load_model(model_dir)
    windows = {1001: [1001, 1003, 1002, 1002, 1003], 1002: [1002, 1002, 1001, 1003, 1004],
               1006: [1006, 1004, 1005, 1005, 1004]}
    for frame, window in windows.items():
        assert temporal.window(frame, 2, 1001, 1006) == window
        stacked = np.concatenate([colour.encode(plate(tmp_path, f), "log", ["R", "G", "B"]) for f in window], axis=2)
        image = torch.from_numpy(np.ascontiguousarray(stacked.transpose(2, 0, 1)))[None]
        wanted = apply_model(model, image, tile="none", precision="fp32", ensemble=1)[0].permute(1, 2, 0).numpy()
        got = output(tmp_path, "out", frame)
        np.testing.assert_allclose(got, colour.decode(wanted, "log", ["R", "G", "B"]), atol=2e-3)  # half EXR
        # ... and not what the frame alone with unmirrored copies of itself would give
        alone = torch.from_numpy(np.ascontiguousarray(np.concatenate([plate(tmp_path, frame)] * 5, axis=2)
                                                      .transpose(2, 0, 1)))[None]
        other = apply_model(model, alone, tile="none", precision="fp32", ensemble=1)[0].permute(1, 2, 0).numpy()
        assert float(np.abs(other - wanted).max()) > 1e-3


def test_a_run_without_a_plan_mirrors_at_the_ends_of_the_sequence_on_disk(tmp_path):
    from duplidog.infer import infer_frames, infer_sequence

    temporal_shot(tmp_path, 1)
    model_dir = save_temporal_model(tmp_path / "model", 1)
    settings = {"device": "cpu", "tile": "none", "precision": "fp32"}
    infer_frames(model_dir, tmp_path / "ingest/plan.json", [1001, 1004, 1006], str(tmp_path / "plan/o.%04d.exr"),
                 settings)
    infer_sequence(model_dir, str(tmp_path / "shot/plate/plate.%04d.exr"), str(tmp_path / "free/o.%04d.exr"),
                   frames=[1001, 1004, 1006], settings=settings)
    for frame in (1001, 1004, 1006):
        np.testing.assert_array_equal(output(tmp_path, "free", frame), output(tmp_path, "plan", frame))


def test_a_missing_neighbour_is_refused_naming_it_before_a_plan_less_run_and_when_the_dag_is_built(tmp_path):
    # A plate with a gap: frames 1005 and 1007 read 1006 as a neighbour. Without the check, a plan-less run
    # failed in its reader part-way through, and Snakemake said only that an input was missing.
    import re
    import subprocess

    from duplidog.infer import infer_sequence

    make_shot(tmp_path / "data", frames=range(1001, 1009), keyframes=(1001, 1004, 1008), size=(48, 40))
    (tmp_path / "data/plate/plate.1006.exr").unlink()
    model_dir = save_temporal_model(tmp_path / "model", 1)
    with pytest.raises(DuplidogError, match=r"plate\.1006\.exr: plate frame\(s\) 1006 missing, which "
                                            r"model.temporal_frames 1 reads"):
        infer_sequence(model_dir, str(tmp_path / "data/plate/plate.%04d.exr"), str(tmp_path / "out/o.%04d.exr"),
                       settings={"device": "cpu", "tile": "none"})
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())

    root = Path(__file__).resolve().parents[1]
    shot = {"shot": "t1", "source": "data/plate/plate.%04d.exr", "target": "data/fixed/fixed.####.exr",
            "frames": "1001-1005,1007-1008"}
    for n, refused in ((0, False), (1, True)):
        (tmp_path / "t1.yaml").write_text(yaml.safe_dump({**shot, "model": {"temporal_frames": n}}), encoding="utf-8")
        dry_run = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(root / "Snakefile"),
                                  "--profile", str(root / "profiles/local"), "--cores", "1", "--configfile",
                                  str(tmp_path / "t1.yaml"), "-n"], cwd=tmp_path, capture_output=True, text=True)
        said = re.search(r"^shot t1: \S*plate\.1006\.exr: plate frame\(s\) 1006 missing, which "
                         r"model.temporal_frames 1 reads", dry_run.stdout + dry_run.stderr, re.M)
        assert (dry_run.returncode != 0 and said is not None) == refused, dry_run.stderr[-2000:]


def test_a_one_frame_model_reads_and_writes_as_before(tmp_path):
    """temporal_frames 0: the plan, the pool and the frames are those of a shot without the setting."""
    import zarr

    from duplidog.infer import infer_frames

    temporal_shot(tmp_path, 0)
    assert json.loads((tmp_path / "ingest/plan.json").read_text())["temporal_frames"] == 0
    group = zarr.open_group(str(tmp_path / "pool.zarr"), mode="r")
    assert group["source"].shape[1] == 3 and group.attrs["temporal_frames"] == 0
    model_dir = save_temporal_model(tmp_path / "model", 0)
    summary = infer_frames(model_dir, tmp_path / "ingest/plan.json", [1002, 1003], str(tmp_path / "out/o.%04d.exr"),
                           {"device": "cpu", "tile": "none"})
    assert summary["frames"] == 2


# -- exports ----------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
def test_the_nuke_export_takes_every_frame_stacked_and_says_so(tmp_path):
    from duplidog.export import export

    model_dir = save_temporal_model(tmp_path / "model", 1, space="linear")
    nuke = export(model_dir, "nuke", tmp_path / "t.pt")  # checked against duplidog's inference inside
    assert nuke["max_scaled_difference"] <= 1e-4
    assert nuke["temporal_frames"] == 1 and nuke["input_frames"] == ["t", "t-1", "t+1"]
    assert nuke["input_channels"] == ["R", "G", "B"] and not (tmp_path / "t.nk").exists()
    module = torch.jit.load(str(tmp_path / "t.pt"))
    with torch.no_grad():
        assert tuple(module(torch.rand(1, 9, 13, 21)).shape) == (1, 3, 13, 21)
    extra = {"duplidog_card.json": ""}  # the card inside the file records it too
    torch.jit.load(str(tmp_path / "t.pt"), _extra_files=extra)
    assert json.loads(extra["duplidog_card.json"])["temporal_frames"] == 1


def test_the_flame_sidecar_lists_the_neighbour_frames_after_the_frame_itself():
    from duplidog import colour
    from duplidog.export import flame_sidecar

    card = model_card(temporal_frames=1, colorspace=colour.describe("linear"))
    described = flame_sidecar(card, ("RGB", True), ("RGB", False))["ModelDescription"]
    inputs = [(e["Type"], e["Channels"], e["Description"]) for e in described["Inputs"]]
    assert inputs == [("Front", "RGB", "plate, scene-linear"), ("Matte", "A", "plate alpha"),
                      ("Aux", "RGB", "plate frame t-1, scene-linear"), ("Aux", "A", "plate alpha, frame t-1"),
                      ("Aux", "RGB", "plate frame t+1, scene-linear"), ("Aux", "A", "plate alpha, frame t+1")]
    assert {e["Name"] for e in described["Inputs"]} == {"input_image"}
    assert "reads 3 frames (t, t-1, t+1)" in described["Description"]
    plain = flame_sidecar(dataclasses.replace(card, temporal_frames=0), ("RGB", True), ("RGB", False))["ModelDescription"]
    assert len(plain["Inputs"]) == 2 and "frames" not in plain["Description"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")
def test_the_flame_export_of_an_rgba_temporal_model_matches_duplidog(tmp_path):
    from duplidog import colour
    from duplidog.export import export
    from duplidog.core.modelstore import save_model

    torch.manual_seed(2)
    network = nudged(build_model("msrn", "small", 4, 4, temporal_frames=1, **TINY), seed=2)
    save_model(tmp_path / "model", network, {"input_channels": ["A", "R", "G", "B"],
                                             "output_channels": ["A", "R", "G", "B"],
                                             "colorspace": colour.describe("linear"), "edge_context": 3})
    flame = export(tmp_path / "model", "flame", tmp_path / "t.onnx")  # host order RGBA per frame, checked inside
    assert flame["max_scaled_difference"] <= 1e-3 and flame["input_frames"] == ["t", "t-1", "t+1"]
    sidecar = json.loads((tmp_path / "t.json").read_text())["ModelDescription"]
    assert [e["Type"] for e in sidecar["Inputs"]] == ["Front", "Matte", "Aux", "Aux", "Aux", "Aux"]


# -- the workflow -----------------------------------------------------------------------------------------
@pytest.mark.pipeline
def test_a_tiny_snakemake_run_with_temporal_frames_1(tmp_path):
    """The whole workflow with model.temporal_frames: 1; a plate frame is an input of every chunk that
    reads it, so replacing one reruns its own chunk and the one whose window reaches over it."""
    import zarr

    from duplidog import imageio

    make_shot(tmp_path / "data", frames=range(1001, 1009), keyframes=(1001, 1004, 1008))
    shot = {"shot": "t1", "source": "data/plate/plate.%04d.exr", "target": "data/fixed/fixed.####.exr",
            **PIPELINE_TINY, "model": {**PIPELINE_TINY["model"], "temporal_frames": 1},
            "train": {**PIPELINE_TINY["train"], "steps": 3}}
    shot_file = tmp_path / "t1.yaml"
    shot_file.write_text(yaml.safe_dump(shot), encoding="utf-8")
    local = ("--profile", str(ROOT / "profiles/local"), "--cores", "2", "--configfile", str(shot_file))
    snakemake(*local, cwd=tmp_path)
    results = tmp_path / "results/t1"
    for frame in range(1001, 1009):
        assert imageio.read_info(results / f"output/t1.{frame}.exr").width == 48
    assert json.loads((results / "model/model.json").read_text())["temporal_frames"] == 1
    assert zarr.open_group(str(results / "pool/pool.zarr"), mode="r")["source"].shape[1] == 9
    # Frame 1006 is no keyframe's neighbour (1001, 1004, 1008 read 1002, 1003, 1005, 1007): replacing it
    # reruns its chunk (1004-1006) and the next (1007-1008, whose 1007 reads it), not training.
    plate_1006 = tmp_path / "data/plate/plate.1006.exr"
    write_frame(plate_1006, imageio.read_pixels(plate_1006) * 1.01)
    planned = jobs_in(snakemake(*local, "-n", cwd=tmp_path))
    assert planned == {"infer_chunk__t1__1004_1006", "infer_chunk__t1__1007_1008", "assemble", "all"}
