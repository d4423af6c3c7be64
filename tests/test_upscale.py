"""Upscaling (model.scale 2, 3, 4): the network, the pool's paired tiles, training, frames and exports.

Tiny networks on tiny frames: each test takes seconds on one CPU core.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import OpenImageIO as oiio
import pytest
import torch
import yaml

from shotdata import make_shot, nudged, write_frame
from trainshot import TINY_MODEL, TINY_POOL, TINY_TRAIN

from duplidog.errors import DuplidogError
from duplidog.model import build_model, build_from_config

torch.set_num_threads(1)

TINY = dict(levels=2, stages=1, width=4, depth=1, block="res")  # size_multiple 4


# -- the network ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("channels", [(3, 3), (3, 1)])
def test_every_level_has_its_size_and_the_split_passes_give_the_whole(scale, channels):
    network = nudged(build_model("msrn", "small", *channels, scale=scale, **TINY)).double().eval()
    x = torch.rand(2, channels[0], 12, 16, dtype=torch.float64)
    with torch.no_grad():
        levels = network(x, all_levels=True)
        whole = network(x)
        split = network.finest_pass(network.coarse_pass(x))
    assert [tuple(t.shape) for t in levels] == [(2, channels[1], 6, 8), (2, channels[1], 12 * scale, 16 * scale)]
    assert torch.allclose(split, whole, atol=1e-12) and network.scale == scale
    assert build_from_config(network.config).scale == scale and network.config["scale"] == scale


@pytest.mark.parametrize("scale", [1, 2, 3])
def test_the_reach_bounds_how_far_one_input_pixel_moves_upscaled_output_pixels(scale):
    network = nudged(build_model("msrn", "small", 3, 3, scale=scale, levels=1, stages=1, width=4, depth=1,
                                 block="res", recurrent="none")).double().eval()
    side = 2 * (network.reach + 8)
    x = torch.rand(1, 3, side, side, dtype=torch.float64)
    changed = x.clone()
    centre = side // 2
    changed[:, :, centre, centre] += 1.0
    with torch.no_grad():
        difference = (network(changed) - network(x)).abs().amax(dim=(0, 1))
    rows, cols = torch.nonzero(difference > 0, as_tuple=True)
    in_input_pixels = lambda o: (o.double() + 0.5) / scale - 0.5  # noqa: E731  an output pixel's centre
    spread = float(torch.maximum((in_input_pixels(rows) - centre).abs(), (in_input_pixels(cols) - centre).abs()).max())
    assert spread > network.reach_bound() - 3  # the bound is close, not just large
    assert spread <= network.reach_bound() <= network.reach


def test_a_1x_network_keeps_its_layout_and_a_bad_scale_is_refused():
    network = build_model("msrn", "small", 3, 3, **TINY)
    assert tuple(network.head.weight.shape) == (3, 4, 3, 3) and network.scale == 1
    assert tuple(build_model("msrn", "small", 3, 3, scale=3, **TINY).head.weight.shape) == (27, 4, 3, 3)
    for bad in (0, 5, 2.5, True):
        with pytest.raises(DuplidogError, match="scale"):
            build_model("msrn", "small", 3, 3, scale=bad, **TINY)


# -- a shot whose keyframes are s times the plate's size ------------------------------------------------
def upscaled_shot(root: Path, scale: int, pool: dict | None = None, train_steps: int = 0) -> dict:
    """The tiny training shot (48x40 plates) with keyframes ``scale`` times larger: the plate enlarged by
    repeating pixels and graded, so each s x s block of the target averages to the graded source pixel."""
    from duplidog.imageio import read_pixels
    from duplidog.ingest import ingest
    from duplidog.pool import build_pool
    from duplidog.settings import resolve

    shot_file = make_shot(root / "shot", frames=range(1001, 1004), keyframes=(1001, 1002, 1003), size=(48, 40))
    for frame in (1001, 1002, 1003):
        plate = read_pixels(root / "shot/plate" / f"plate.{frame:04d}.exr")
        big = plate.repeat(scale, axis=0).repeat(scale, axis=1) * 0.8 + 0.05
        write_frame(root / "shot/fixed" / f"fixed.{frame:04d}.exr", big, pixel_type="float")
    user = yaml.safe_load(shot_file.read_text())
    user.update({"model": {**TINY_MODEL, "scale": scale}, "pool": {**TINY_POOL, **(pool or {})},
                 "train": {**TINY_TRAIN, "steps": train_steps or TINY_TRAIN["steps"]}, "seed": 0, "colorspace": "log"})
    config = resolve(user)
    ingest(config, root / "ingest")
    build_pool(root / "ingest/manifest.csv", root / "ingest/plan.json", root / "pool.zarr", config["pool"], seed=0)
    return {"config": config, "root": root}


def block_mean(tiles: np.ndarray, s: int) -> np.ndarray:
    n, c, h, w = tiles.shape
    return tiles.reshape(n, c, h // s, s, w // s, s).mean(axis=(3, 5))


@pytest.mark.parametrize("scale", [2, 3])
def test_the_pool_pairs_source_tiles_with_targets_s_times_their_size_flipped_and_turned_alike(tmp_path, scale):
    import zarr

    upscaled_shot(tmp_path, scale, {"augment_fraction": 1.0, "flips": True, "turns": True, "rotate_degrees": 0,
                                    "scale_min": 1.0, "scale_max": 1.0})
    group = zarr.open_group(str(tmp_path / "pool.zarr"), mode="r")
    source, target = np.asarray(group["source"][:], np.float32), np.asarray(group["target"][:], np.float32)
    assert source.shape[1:] == (3, 16, 16) and target.shape[1:] == (3, 16 * scale, 16 * scale)
    assert group.attrs["scale"] == scale and group.attrs["border"] == 3
    assert bool(np.asarray(group["augmented"][:]).all())
    # Every augmented target is its source's own picture, graded, at s times the size (float16 rounding).
    np.testing.assert_allclose(block_mean(target, scale), source * 0.8 + 0.05, atol=4e-3)


def test_warped_tiles_show_the_same_picture_at_both_sizes(tmp_path):
    import zarr

    upscaled_shot(tmp_path, 2, {"augment_fraction": 1.0, "flips": False, "turns": False, "rotate_degrees": 8,
                                "scale_min": 0.9, "scale_max": 1.2})
    group = zarr.open_group(str(tmp_path / "pool.zarr"), mode="r")
    source, target = np.asarray(group["source"][:], np.float32), np.asarray(group["target"][:], np.float32)
    assert target.shape[-1] == 2 * source.shape[-1]
    # The same rotation and zoom about the same centre: the downsized target follows the source (the
    # plate is noise, so a tile warped otherwise would differ by about its own spread, ~0.4).
    small = block_mean(target, 2)
    error = float(np.abs(small - (source * 0.8 + 0.05))[..., 3:-3, 3:-3].mean())
    shifted = float(np.abs(small[..., 1:, :] - (source[..., :-1, :] * 0.8 + 0.05))[..., 3:-3, 3:-3].mean())
    print(f"warped tiles: mean difference {error:.4f}, one pixel off {shifted:.4f}")
    assert error < 0.03 and shifted > 3 * error


def test_keyframes_of_another_size_than_scale_times_the_plate_are_refused_naming_the_file(tmp_path):
    from duplidog.ingest import ingest
    from duplidog.settings import resolve

    shot_file = make_shot(tmp_path / "shot", frames=range(1001, 1003), keyframes=(1001, 1002), size=(48, 40))
    user = yaml.safe_load(shot_file.read_text())
    config = resolve({**user, "model": {"scale": 2}})
    with pytest.raises(DuplidogError, match=r"fixed\.1001\.exr: keyframe size 48x40 .* times 2 .*96x80"):
        ingest(config, tmp_path / "ingest")


def test_training_learns_an_upscale_and_refuses_to_warm_start_another_scale(tmp_path):
    from duplidog.core.card import read_card
    from duplidog.train import train

    shot = upscaled_shot(tmp_path, 2, train_steps=6)
    config, root = shot["config"], shot["root"]
    result = train(root / "pool.zarr", root / "ingest/plan.json", root / "ingest/manifest.csv", root / "model",
                   root / "train", config)
    card = read_card(root / "model")
    assert card.scale == 2 and card.network["scale"] == 2 and result["steps"] == 6
    assert np.isfinite(result["validation_psnr"]) and "validation_psnr_identity" in result  # against bicubic

    other = upscaled_shot(tmp_path / "x3", 3, train_steps=2)
    warm = {**other["config"], "train": {**other["config"]["train"], "init_from": str(root / "model")}}
    with pytest.raises(DuplidogError, match=r"upscales x2, this shot's network x3 .*another scale"):
        train(tmp_path / "x3/pool.zarr", tmp_path / "x3/ingest/plan.json", tmp_path / "x3/ingest/manifest.csv",
              tmp_path / "x3/model", tmp_path / "x3/train", warm)


def test_a_pool_of_another_scale_than_the_model_is_refused(tmp_path):
    from duplidog.train import train

    shot = upscaled_shot(tmp_path, 2, train_steps=2)
    config = {**shot["config"], "model": {**shot["config"]["model"], "scale": 3}}
    with pytest.raises(DuplidogError, match=r"target tiles are 32 px for 16 px source tiles, but model.scale is 3"):
        train(tmp_path / "pool.zarr", tmp_path / "ingest/plan.json", tmp_path / "ingest/manifest.csv",
              tmp_path / "model", tmp_path / "train", config)


# -- frames and exports ---------------------------------------------------------------------------------
def save_upscaler(model_dir: Path, scale: int) -> Path:
    from duplidog import colour
    from duplidog.core.modelstore import save_model

    torch.manual_seed(scale)
    network = nudged(build_model("msrn", "small", 3, 3, scale=scale, **TINY), seed=scale)
    card = {"input_channels": ["R", "G", "B"], "output_channels": ["R", "G", "B"],
            "colorspace": colour.describe("linear"), "edge_context": 3, "training": {"shot": "up", "steps": 1}}
    save_model(model_dir, network, card)
    return model_dir


def write_overscan_frame(path: Path, pixels: np.ndarray) -> None:
    """A half EXR whose data window is offset inside a larger display window, with a metadata attribute."""
    height, width = pixels.shape[:2]
    write_frame(path, pixels, window=(4, 2, width + 10, height + 6), attributes={"Copyright": "upscale test"})


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_upscaled_frames_are_s_times_the_plate_with_windows_scaled_and_metadata_kept(tmp_path, scale):
    from duplidog.infer import infer_sequence

    model_dir = save_upscaler(tmp_path / "model", scale)
    rng = np.random.default_rng(scale)
    for frame in (1, 2):
        write_overscan_frame(tmp_path / f"plate/p.{frame:04d}.exr", rng.random((18, 22, 3), dtype=np.float32))
    infer_sequence(model_dir, str(tmp_path / "plate/p.%04d.exr"), str(tmp_path / "out/o.%04d.exr"), tile="none",
                   device="cpu")
    for frame in (1, 2):
        spec = oiio.ImageInput.open(str(tmp_path / f"out/o.{frame:04d}.exr")).spec()
        assert (spec.width, spec.height, spec.x, spec.y) == (22 * scale, 18 * scale, 4 * scale, 2 * scale)
        assert (spec.full_x, spec.full_y, spec.full_width, spec.full_height) == (0, 0, 32 * scale, 24 * scale)
        assert spec.format == oiio.TypeDesc("half") and list(spec.channelnames) == ["R", "G", "B"]
        assert spec.get_string_attribute("Copyright") == "upscale test"


@pytest.mark.parametrize("scale", [2, 3])
def test_tiled_upscaling_equals_the_whole_frame(tmp_path, scale):
    from duplidog.core.apply import apply_model

    network = nudged(build_model("msrn", "small", 3, 3, scale=scale, **TINY), seed=1).eval()
    frame = torch.rand(1, 3, 70, 90)
    whole = apply_model(network, frame, tile="none", precision="fp32")
    tiled = apply_model(network, frame, tile=48, precision="fp32")
    assert tuple(whole.shape[-2:]) == (70 * scale, 90 * scale) and tiled.shape == whole.shape
    assert float((tiled - whole).abs().max()) < 1e-4


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_nuke_exports_upscale_like_duplidog_at_every_scale(tmp_path, scale):
    from duplidog.core.card import read_card
    from duplidog.export import export, flame_sidecar

    model_dir = save_upscaler(tmp_path / "model", scale)
    nuke = export(model_dir, "nuke", tmp_path / "up.pt")  # checked against duplidog's inference inside
    assert nuke["max_scaled_difference"] <= 1e-4 and nuke["scale"] == scale
    assert f"outputScale {scale}" in (tmp_path / "up.nk").read_text()
    module = torch.jit.load(str(tmp_path / "up.pt"))
    with torch.no_grad():
        assert tuple(module(torch.rand(1, 3, 13, 21)).shape) == (1, 3, 13 * scale, 21 * scale)
    sidecar = flame_sidecar(read_card(model_dir), ("RGB", False), ("RGB", False))
    assert {o["ScalingFactor"] for o in sidecar["ModelDescription"]["Outputs"]} == {float(scale)}


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")
def test_the_flame_export_upscales_like_duplidog(tmp_path):
    """One scale: the ONNX export takes most of a minute on a loaded CPU, and its crop is the Nuke one's."""
    import onnxruntime

    from duplidog.export import export

    model_dir = save_upscaler(tmp_path / "model", 3)
    flame = export(model_dir, "flame", tmp_path / "up.onnx")  # checked against duplidog's inference inside
    assert flame["max_scaled_difference"] <= 1e-3
    sidecar = json.loads((tmp_path / "up.json").read_text())["ModelDescription"]
    assert {o["ScalingFactor"] for o in sidecar["Outputs"]} == {3.0}
    session = onnxruntime.InferenceSession(str(tmp_path / "up.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input_image": np.random.default_rng(0).random((1, 3, 13, 21), dtype=np.float32)})[0]
    assert got.shape == (1, 3, 39, 63)
