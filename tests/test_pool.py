"""The tile pool: layout on disk, where tiles are drawn, and what augmentation does to them.

Each test writes two or three tiny keyframes (96x160 EXR) with OpenImageIO, a manifest and a plan, and
builds a real pool; the pool is read back with plain ``zarr.open_group``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from duplidog import colour
from duplidog.errors import DuplidogError
from duplidog.core.pool_store import open_pool, pool_fingerprint
from duplidog.pool import build_pool
from duplidog.pool.sampling import gradient_magnitude
from shotdata import write_frame

H, W = 96, 160
T, B = 32, 4  # tile size and border used throughout (small frames, small tiles)
CHANGE = (slice(60, 76), slice(110, 126))  # where the "fix" differs from the plate

SMALL = {"tile_size": T, "border": B, "tiles_per_keyframe": 40, "shard_tiles": 16, "augment_fraction": 0.0}
NO_COLOUR = {"exposure_stops": 0.0, "colour_gain": 0.0, "grain": 0.0}


def textured(rng: np.random.Generator, low: float = 0.05, high: float = 0.6) -> np.ndarray:
    """A plate with detail everywhere: smooth gradients plus fine noise, scene values."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    smooth = 0.5 + 0.25 * np.sin(xx / 9.0)[..., None] * np.cos(yy / 13.0)[..., None] * np.array([1.0, 0.7, 0.4])
    return (low + (high - low) * (0.6 * smooth + 0.4 * rng.random((H, W, 3)))).astype(np.float32)


def painted(source: np.ndarray) -> np.ndarray:
    """The artist's fix: a patch painted brighter."""
    target = source.copy()
    target[CHANGE] += 0.5
    return target


def make_shot(
    folder: Path,
    sources: list[np.ndarray],
    targets: list[np.ndarray],
    colorspace: str = "display",
    target_channels: tuple[str, ...] = ("R", "G", "B"),
    validation: np.ndarray | None = None,
) -> tuple[Path, Path]:
    """Keyframes 1001, 1002, ... as EXR files plus manifest.csv and plan.json; returns their paths.

    A validation keyframe (frame 1100) and an inference-only frame (1101) are added to the manifest:
    neither may end up in the pool.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (source, target) in enumerate(zip(sources, targets)):
        frame = 1001 + i
        write_frame(folder / f"plate.{frame}.exr", source, "float", ["R", "G", "B"])
        write_frame(folder / f"fixed.{frame}.exr", target, "float", list(target_channels))
        rows.append({"frame": frame, "role": "train", "source": str(folder / f"plate.{frame}.exr"),
                     "target": str(folder / f"fixed.{frame}.exr")})
    held_out = validation if validation is not None else sources[0]
    write_frame(folder / "plate.1100.exr", held_out, "float", ["R", "G", "B"])
    write_frame(folder / "fixed.1100.exr", held_out[:, :, : len(target_channels)], "float", list(target_channels))
    rows.append({"frame": 1100, "role": "validation", "source": str(folder / "plate.1100.exr"),
                 "target": str(folder / "fixed.1100.exr")})
    rows.append({"frame": 1101, "role": "infer", "source": str(folder / "plate.1100.exr"), "target": ""})
    for row in rows:
        row.update({"width": W, "height": H, "nchannels": 3, "channel_names": "R,G,B", "pixel_type": "float",
                    "target_nchannels": len(target_channels) if row["target"] else 0,
                    "target_channel_names": ",".join(target_channels) if row["target"] else ""})
    manifest = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    plan = {"shot": "t", "colorspace": colorspace, "input_channels": ["R", "G", "B"],
            "output_channels": list(target_channels), "passthrough_channels": [],
            "train_frames": [r["frame"] for r in rows if r["role"] == "train"], "validation_frames": [1100],
            "width": W, "height": H, "nonfinite": "error"}
    plan_path = folder / "plan.json"
    plan_path.write_text(json.dumps(plan))
    return manifest, plan_path


@pytest.fixture
def paint_shot(tmp_path):
    rng = np.random.default_rng(3)
    sources = [textured(rng), textured(rng)]
    return make_shot(tmp_path / "shot", sources, [painted(s) for s in sources], colorspace="linear"), sources


def inner_overlaps_change(positions: np.ndarray) -> np.ndarray:
    """Whether each tile's loss region (inside the border) overlaps the changed patch."""
    y, x = positions[:, 0], positions[:, 1]
    return (
        (y + B < CHANGE[0].stop) & (y + T - B > CHANGE[0].start)
        & (x + B < CHANGE[1].stop) & (x + T - B > CHANGE[1].start)
    )


def test_layout_opens_with_plain_zarr(paint_shot, tmp_path):
    (manifest, plan), sources = paint_shot
    stats = build_pool(manifest, plan, tmp_path / "pool.zarr", SMALL, seed=5)
    group = zarr.open_group(str(tmp_path / "pool.zarr"), mode="r")
    n = stats["tiles"]
    assert n == 80 and stats["tiles_per_keyframe"] == {"1001": 40, "1002": 40}
    source, target = group["source"], group["target"]
    assert source.shape == (n, 3, T, T) and target.shape == (n, 3, T, T)
    assert source.dtype == np.float16 and target.dtype == np.float16
    assert source.chunks == (1, 3, T, T) and source.shards == (16, 3, T, T)
    assert target.chunks == (1, 3, T, T) and target.shards == (16, 3, T, T)
    codec = source.compressors[0]
    assert isinstance(codec, ZstdCodec) or (isinstance(codec, BloscCodec) and codec.cname.value == "zstd")
    shard_files = [p for p in (tmp_path / "pool.zarr" / "source").rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert len(shard_files) == math.ceil(n / 16)  # one file per shard, not per tile
    assert group["frame"].shape == (n,) and group["frame"].dtype == np.int32
    assert group["position"].shape == (n, 2) and group["position"].dtype == np.int32
    assert group["augmented"].shape == (n,) and group["augmented"].dtype == bool
    assert set(group["frame"][:].tolist()) == {1001, 1002}  # validation and infer frames left out

    attrs = dict(group.attrs)
    assert attrs["tile_size"] == T and attrs["border"] == B and attrs["seed"] == 5
    assert attrs["source_channels"] == ["R", "G", "B"] and attrs["target_channels"] == ["R", "G", "B"]
    assert attrs["colorspace"] == "linear"
    assert attrs["sampling"]["tiles_per_keyframe"] == 40 and attrs["sampling"]["sampler"] in ("full", "separable")
    assert attrs["augmentation"]["augment_fraction"] == 0.0
    assert attrs["statistics"]["tiles"] == n and attrs["statistics"]["bytes"] > 0
    assert attrs["statistics"]["seconds"] >= 0 and attrs["statistics"]["augmented"] == 0
    every_source_value = source[:].astype(np.float32)
    assert attrs["source_range"] == [float(every_source_value.min()), float(every_source_value.max())]

    # Plain tiles are the working-space crops at their recorded positions.
    frames, positions = group["frame"][:], group["position"][:]
    for i in (0, 17, n - 1):
        y, x = positions[i]
        frame_source = sources[frames[i] - 1001]
        expected = colour.encode(frame_source[y : y + T, x : x + T], "linear").transpose(2, 0, 1)
        np.testing.assert_allclose(source[i].astype(np.float32), expected, rtol=2e-3, atol=1e-4)
        expected_target = colour.encode(painted(frame_source)[y : y + T, x : x + T], "linear").transpose(2, 0, 1)
        np.testing.assert_allclose(target[i].astype(np.float32), expected_target, rtol=2e-3, atol=1e-4)
    assert open_pool(tmp_path / "pool.zarr").attrs["tile_size"] == T


def test_tiles_concentrate_on_the_change(paint_shot, tmp_path):
    (manifest, plan), _ = paint_shot
    many = {**SMALL, "tiles_per_keyframe": 200, "shard_tiles": 100}
    weighted = build_pool(manifest, plan, tmp_path / "w.zarr", many, seed=1)
    uniform = build_pool(manifest, plan, tmp_path / "u.zarr", {**many, "change_weight": 0, "detail_weight": 0}, seed=1)
    hits_weighted = inner_overlaps_change(zarr.open_group(weighted["path"], mode="r")["position"][:]).mean()
    hits_uniform = inner_overlaps_change(zarr.open_group(uniform["path"], mode="r")["position"][:]).mean()
    # A 16x16 patch in a 96x160 frame: about 15% of uniformly placed 32-pixel tiles touch it.
    assert 0.08 < hits_uniform < 0.25
    assert hits_weighted > 0.5 and hits_weighted > 3 * hits_uniform
    separable = build_pool(manifest, plan, tmp_path / "s.zarr", {**many, "sampler": "separable"}, seed=1)
    hits_separable = inner_overlaps_change(zarr.open_group(separable["path"], mode="r")["position"][:]).mean()
    assert hits_separable > 2 * hits_uniform


def test_uniform_floor_reaches_everywhere(paint_shot, tmp_path):
    (manifest, plan), _ = paint_shot
    many = {**SMALL, "tiles_per_keyframe": 200, "shard_tiles": 100}
    stats = build_pool(manifest, plan, tmp_path / "p.zarr", many, seed=2)
    positions = zarr.open_group(stats["path"], mode="r")["position"][:]
    assert (~inner_overlaps_change(positions)).mean() > 0.1  # not every tile sits on the fix
    assert positions[:, 1].min() < 40  # the far (left) side of the frame is drawn too


def test_edge_option(tmp_path):
    rng = np.random.default_rng(4)
    source = textured(rng)
    target = source.copy()
    target[:12, :12] += 0.5  # the fix is in the corner: tiles are pulled to the edge
    manifest, plan = make_shot(tmp_path / "shot", [source], [target])
    settings = {**SMALL, "tiles_per_keyframe": 100}
    with_edges = build_pool(manifest, plan, tmp_path / "e.zarr", {**settings, "include_edges": True})
    positions = zarr.open_group(with_edges["path"], mode="r")["position"][:]
    assert ((positions[:, 0] == 0) | (positions[:, 1] == 0)).sum() > 10
    without = build_pool(manifest, plan, tmp_path / "n.zarr", {**settings, "include_edges": False})
    positions = zarr.open_group(without["path"], mode="r")["position"][:]
    assert positions[:, 0].min() >= B and positions[:, 1].min() >= B
    assert positions[:, 0].max() <= H - T - B and positions[:, 1].max() <= W - T - B


def test_flat_tiles_are_skipped(tmp_path):
    rng = np.random.default_rng(5)
    source = np.full((H, W, 3), 0.18, np.float32)
    source[:, 100:] = textured(rng)[:, 100:]  # detail only on the right; left is a flat grey card
    manifest, plan = make_shot(tmp_path / "shot", [source], [source.copy()])
    settings = {**SMALL, "tiles_per_keyframe": 60, "detail_weight": 0, "uniform_floor": 1.0}

    def flat_fraction(stats):
        tiles = zarr.open_group(stats["path"], mode="r")["source"][:].astype(np.float32)
        inner = tiles[:, :, B : T - B, B : T - B].transpose(0, 2, 3, 1)
        return np.mean([gradient_magnitude(t).mean() < 0.002 for t in inner])

    kept = build_pool(manifest, plan, tmp_path / "all.zarr", {**settings, "detail_threshold": 0})
    assert flat_fraction(kept) > 0.3  # uniform draws do land on the grey card
    skipped = build_pool(manifest, plan, tmp_path / "skip.zarr", {**settings, "detail_threshold": 0.01})
    assert flat_fraction(skipped) == 0 and skipped["redraws"] > 0 and skipped["tiles"] == 60

    flat = np.full((H, W, 3), 0.18, np.float32)
    manifest, plan = make_shot(tmp_path / "flat", [flat], [flat.copy()])
    with pytest.raises(DuplidogError, match="flatter than pool.detail_threshold"):
        build_pool(manifest, plan, tmp_path / "flat.zarr", {**settings, "detail_threshold": 0.01, "max_attempts": 3})
    assert not (tmp_path / "flat.zarr").exists()


def test_augmented_fraction_and_tiles_differ(paint_shot, tmp_path):
    (manifest, plan), sources = paint_shot
    stats = build_pool(manifest, plan, tmp_path / "a.zarr", {**SMALL, "augment_fraction": 0.25}, seed=3)
    group = zarr.open_group(stats["path"], mode="r")
    augmented, frames = group["augmented"][:], group["frame"][:]
    assert stats["augmented"] == 20 and augmented.sum() == 20
    assert all(augmented[frames == f].sum() == 10 for f in (1001, 1002))  # per keyframe, exactly
    assert group.attrs["statistics"]["augmented"] == 20
    positions, source = group["position"][:], group["source"][:].astype(np.float32)
    for i in range(len(frames)):
        y, x = positions[i]
        crop = colour.encode(sources[frames[i] - 1001][y : y + T, x : x + T], "linear").transpose(2, 0, 1)
        same = np.allclose(source[i], crop, rtol=2e-3, atol=1e-4)
        assert same != augmented[i]


def _linear_fix(source: np.ndarray) -> np.ndarray:
    return source * np.array([2.0, 0.5, -1.0], np.float32) + np.array([0.1, 0.0, 1.0], np.float32)


def test_geometric_augmentation_moves_source_and_target_together(tmp_path):
    rng = np.random.default_rng(6)
    sources = [textured(rng), textured(rng)]
    manifest, plan = make_shot(tmp_path / "shot", sources, [_linear_fix(s) for s in sources], colorspace="display")
    settings = {**SMALL, **NO_COLOUR, "augment_fraction": 1.0, "rotate_degrees": 8.0, "scale_min": 0.8,
                "scale_max": 1.25}
    stats = build_pool(manifest, plan, tmp_path / "g.zarr", settings, seed=7)
    group = zarr.open_group(stats["path"], mode="r")
    source, target = group["source"][:].astype(np.float32), group["target"][:].astype(np.float32)
    assert group["augmented"][:].all()
    expected = _linear_fix(source.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(target, expected, atol=4e-3)  # float16 rounding only
    # ... and the warp really happened: tiles are not plain crops (or flips of them) of the plate.
    positions, frames = group["position"][:], group["frame"][:]
    y, x = positions[0]
    crop = sources[frames[0] - 1001][y : y + T, x : x + T]
    assert not any(np.allclose(np.rot90(c, k), source[0].transpose(1, 2, 0), atol=1e-2)
                   for c in (crop, crop[::-1], crop[:, ::-1], crop[::-1, ::-1]) for k in range(4))


def test_flips_and_turns_keep_a_nonlinear_fix_exact(tmp_path):
    rng = np.random.default_rng(8)
    sources = [textured(rng)]
    manifest, plan = make_shot(tmp_path / "shot", sources, [s**2 for s in sources], colorspace="display")
    settings = {**SMALL, **NO_COLOUR, "augment_fraction": 1.0, "rotate_degrees": 0.0, "scale_min": 1.0,
                "scale_max": 1.0}
    stats = build_pool(manifest, plan, tmp_path / "f.zarr", settings, seed=9)
    group = zarr.open_group(stats["path"], mode="r")
    source, target = group["source"][:].astype(np.float32), group["target"][:].astype(np.float32)
    np.testing.assert_allclose(target, source**2, rtol=2e-3, atol=1e-5)
    positions = group["position"][:]
    turned = 0
    for i, (y, x) in enumerate(positions):
        crop = sources[0][y : y + T, x : x + T].transpose(2, 0, 1)
        turned += not np.allclose(source[i], crop, atol=1e-3)
    assert turned > len(positions) // 2  # 3 of 4 orientations differ from the plain crop


def test_colour_follows_colour_to(tmp_path):
    rng = np.random.default_rng(10)
    sources = [textured(rng)]
    # An identity fix, so any difference between pool source and target is the augmentation's.
    manifest, plan = make_shot(tmp_path / "shot", sources, [s.copy() for s in sources], colorspace="linear")
    settings = {**SMALL, "augment_fraction": 1.0, "exposure_stops": 1.0, "colour_gain": 0.2, "grain": 0.0}
    both = zarr.open_group(build_pool(manifest, plan, tmp_path / "b.zarr", {**settings, "colour_to": "both"})["path"])
    np.testing.assert_allclose(both["target"][:].astype(np.float32), both["source"][:].astype(np.float32), atol=1e-6)

    only = zarr.open_group(build_pool(manifest, plan, tmp_path / "s.zarr", {**settings, "colour_to": "source"})["path"])
    source = colour.decode(only["source"][:].astype(np.float32), "linear")
    target = colour.decode(only["target"][:].astype(np.float32), "linear")
    ratio = source / target  # per tile and channel: 2**stops * gain, the same at every pixel
    per_tile = ratio.reshape(*ratio.shape[:2], -1)
    assert np.abs(np.log(per_tile.mean(axis=2))).max() > 0.05  # colour was changed
    spread = per_tile.std(axis=2) / per_tile.mean(axis=2)
    assert spread.max() < 5e-3  # a multiplication of scene values, not of encoded ones

    untouched = zarr.open_group(build_pool(manifest, plan, tmp_path / "n.zarr", {**settings, "grain": 0.05,
                                                                               "colour_to": "none"})["path"])
    np.testing.assert_array_equal(untouched["target"][:], untouched["source"][:])  # no colour, no grain

    grain = {**settings, "exposure_stops": 0.0, "colour_gain": 0.0, "grain": 0.05}
    grainy = zarr.open_group(build_pool(manifest, plan, tmp_path / "g.zarr", {**grain, "colour_to": "both"})["path"])
    source, target = grainy["source"][:].astype(np.float32), grainy["target"][:].astype(np.float32)
    np.testing.assert_allclose(target, source, atol=1e-6)  # the same grain on both
    plain = colour.encode(sources[0], "linear")
    y, x = grainy["position"][0]
    assert not np.allclose(np.sort(source[0].ravel()), np.sort(plain[y : y + T, x : x + T].ravel()), atol=1e-2)


def test_deterministic_with_a_seed(paint_shot, tmp_path):
    (manifest, plan), _ = paint_shot
    settings = {**SMALL, "augment_fraction": 0.5}
    first = build_pool(manifest, plan, tmp_path / "1.zarr", settings, seed=11)
    second = build_pool(manifest, plan, tmp_path / "2.zarr", settings, seed=11)
    other = build_pool(manifest, plan, tmp_path / "3.zarr", settings, seed=12)
    a, b, c = (zarr.open_group(s["path"], mode="r") for s in (first, second, other))
    for name in ("source", "target", "frame", "position", "augmented"):
        np.testing.assert_array_equal(a[name][:], b[name][:])
    assert pool_fingerprint(first["path"]) == pool_fingerprint(second["path"])
    assert not np.array_equal(a["position"][:], c["position"][:])
    assert pool_fingerprint(first["path"]) != pool_fingerprint(other["path"])


def test_fingerprint_follows_the_pixels(paint_shot, tmp_path):
    (manifest, plan), sources = paint_shot
    first = pool_fingerprint(build_pool(manifest, plan, tmp_path / "1.zarr", SMALL)["path"])
    target_path = pd.read_csv(manifest)["target"][0]
    write_frame(Path(target_path), painted(sources[0]) + 0.01, "float", ["R", "G", "B"])  # the artist re-fixes a frame
    assert pool_fingerprint(build_pool(manifest, plan, tmp_path / "2.zarr", SMALL)["path"]) != first


def test_matte_pool_rgb_to_alpha(tmp_path):
    rng = np.random.default_rng(12)
    sources = [textured(rng), textured(rng)]
    yy, xx = np.mgrid[0:H, 0:W]
    matte = ((yy - 48) ** 2 + (xx - 80) ** 2 < 20**2).astype(np.float32)[..., None]
    manifest, plan = make_shot(tmp_path / "shot", sources, [matte, matte], colorspace="linear", target_channels=("A",))
    settings = {**SMALL, "augment_fraction": 0.5, "colour_to": "source"}
    stats = build_pool(manifest, plan, tmp_path / "m.zarr", settings)
    group = zarr.open_group(stats["path"], mode="r")
    n = stats["tiles"]
    assert group["source"].shape == (n, 3, T, T) and group["target"].shape == (n, 1, T, T)
    assert group["target"].chunks == (1, 1, T, T)
    assert group.attrs["target_channels"] == ["A"]
    target = colour.decode(group["target"][:].astype(np.float32), "linear")
    plain = ~group["augmented"][:]
    for i in np.flatnonzero(plain)[:5]:
        y, x = group["position"][i]
        np.testing.assert_allclose(target[i, 0], matte[y : y + T, x : x + T, 0], atol=2e-3)
    # Matte edges are the target's detail: most tiles see some of the edge.
    edge = np.abs(np.diff(target[:, 0, B : T - B, B : T - B], axis=-1)).max(axis=(1, 2)) > 0.2
    assert edge.mean() > 0.4
    # Exposure, gain and grain went to the source only: augmented mattes still lie in 0..1 and reach 1.
    augmented_mattes = target[~plain]
    assert augmented_mattes.min() > -2e-3 and augmented_mattes.max() < 1 + 2e-3
    assert np.isclose(augmented_mattes.max(), 1, atol=2e-3)


def test_settings_and_input_errors(paint_shot, tmp_path):
    (manifest, plan), _ = paint_shot
    with pytest.raises(DuplidogError, match="pool.tile_size"):
        build_pool(manifest, plan, tmp_path / "x.zarr", {**SMALL, "tile_size": 36})
    with pytest.raises(DuplidogError, match="pool.border"):
        build_pool(manifest, plan, tmp_path / "x.zarr", {**SMALL, "border": 14})
    with pytest.raises(DuplidogError, match="plate.1001.exr.*smaller than a 128-pixel tile"):
        build_pool(manifest, plan, tmp_path / "x.zarr", {**SMALL, "tile_size": 128, "border": 16})
    with pytest.raises(DuplidogError, match="manifest not found"):
        build_pool(tmp_path / "nope.csv", plan, tmp_path / "x.zarr", SMALL)
    with pytest.raises(DuplidogError, match="tile pool not found"):
        open_pool(tmp_path / "x.zarr")
    (tmp_path / "foreign.zarr").mkdir()
    zarr.create_group(str(tmp_path / "foreign.zarr"), overwrite=True)
    with pytest.raises(DuplidogError, match="not a duplidog tile pool"):
        open_pool(tmp_path / "foreign.zarr")


def test_a_failed_build_leaves_the_old_pool(paint_shot, tmp_path):
    (manifest, plan), _ = paint_shot
    pool = tmp_path / "pool.zarr"
    build_pool(manifest, plan, pool, SMALL)
    before = pool_fingerprint(pool)
    Path(pd.read_csv(manifest)["source"][1]).unlink()  # the second keyframe vanishes mid-build
    with pytest.raises(DuplidogError, match="plate.1002.exr"):
        build_pool(manifest, plan, pool, {**SMALL, "tiles_per_keyframe": 8})
    assert pool_fingerprint(pool) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_writer_streams_whole_shards(tmp_path):
    """Tiles reach the disk a shard at a time, so memory holds one shard, not the pool."""
    from duplidog.core.pool_store import TileWriter, compressor

    writer = TileWriter(tmp_path / "p.zarr", 40, 3, 1, 16, 8, compressor({"compressor": "zstd", "zstd_level": 3}),
                        {"duplidog_pool": 1})
    assert writer.buffers["source"].shape == (8, 3, 16, 16)
    shards = lambda: sorted(p.parts[-4] for p in (tmp_path / "p.zarr" / "source" / "c").rglob("*") if p.is_file())
    for i in range(8):
        assert shards() == []
        writer.add(np.full((3, 16, 16), i, np.float16), np.zeros((1, 16, 16), np.float16), 1, i, 0, False)
    assert shards() == ["0"] and writer.filled == 0
    for i in range(3):
        writer.add(np.full((3, 16, 16), 8 + i, np.float16), np.zeros((1, 16, 16), np.float16), 1, i, 0, True)
    assert writer.close() == 11
    group = zarr.open_group(str(tmp_path / "p.zarr"), mode="r")
    assert group["source"].shape == (11, 3, 16, 16) and group["augmented"][:].sum() == 3
    np.testing.assert_array_equal(group["source"][:, 0, 0, 0], np.arange(11))


def test_every_changed_pixel_draws_tiles_alike_however_strong_its_change():
    from duplidog.pool import sampling

    source = np.zeros((64, 96, 3), np.float32)
    target = source.copy()
    target[10:16, 10:16] = 1.0  # a bright marker painted out
    target[40:46, 70:76] = 0.05  # a pale one of the same size
    change = sampling.change_map(source, target, "RGB", "RGB")
    by_magnitude = sampling.pixel_weights(change, np.zeros_like(change), 1.0, 0.0, 0.0)
    by_area = sampling.pixel_weights(sampling.changed_area(change), np.zeros_like(change), 1.0, 0.0, 0.0)
    bright, pale = (slice(8, 18), slice(8, 18)), (slice(38, 48), slice(68, 78))
    assert by_magnitude[bright].sum() > 10 * by_magnitude[pale].sum()
    assert by_area[bright].sum() == pytest.approx(by_area[pale].sum())
    assert by_area[30, 40] == 0  # unchanged pixels far from both draw nothing from this term
    assert not sampling.changed_area(np.zeros((8, 8), np.float32)).any()
