"""Photo bench shots: the layout the peer driver reads, their formats, and the fix each one asks for."""

from __future__ import annotations

import json

import numpy as np
import pytest

from duplidog.imageio import read_info, read_pixels
from duplidog.quality.photos import ASIDE_SHOTS, PHOTO_SHOTS, keyframes, write_photo_shot

SIZE = (96, 64)
FRAMES = 5
ALL = PHOTO_SHOTS + ASIDE_SHOTS
FORMAT = {"paintout": ("exr", "half", 16), "beauty": ("exr", "half", 16), "roto": ("exr", "half", 16),
          "degrain": ("dpx", "uint16", 10), "look": ("tif", "uint16", 16)}


def task_of(kind: str) -> str:
    return kind.removesuffix("_aside")


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    return {kind: (root / kind, write_photo_shot(kind, root / kind, SIZE, FRAMES, seed=3)) for kind in ALL}


def frames_of(shot):
    return list(range(shot["meta"]["first"], shot["meta"]["last"] + 1))


def changed(shot, reduce=np.mean) -> float:
    """Fraction of pixels where the truth is not the plate (the mean, or ``reduce``, over frames)."""
    return float(reduce([(shot["plates"][f] != shot["truth"][f]).any(-1).mean() for f in frames_of(shot)]))


def test_keyframes_spread_over_the_shot_first_and_last_included():
    assert keyframes(1001, 12) == [1001, 1004, 1008, 1012]
    assert keyframes(1001, 5) == [1001, 1002, 1003, 1005]
    assert keyframes(1001, 2) == [1001, 1002]


@pytest.mark.parametrize("kind", ALL)
def test_layout_is_what_the_peer_driver_reads(shots, kind):
    directory, shot = shots[kind]
    ext, _, _ = FORMAT[task_of(kind)]
    meta = json.loads((directory / "shot.json").read_text())
    assert meta == shot["meta"]
    assert meta["ext"] == ext and meta["kind"] == kind and meta["size"] == list(SIZE)
    assert (meta["first"], meta["last"]) == (1001, 1000 + FRAMES)
    assert meta["keyframes"] == [1001, 1002, 1003, 1005]
    assert meta["encoding"] == ("srgb" if ext in ("dpx", "tif") else "linear")
    assert meta["task"] == {"look": "grade", "roto": "roto"}.get(task_of(kind), "cleanup")
    assert shot["config"] == {"shot": kind, "source": str(directory / f"plate/plate.%04d.{ext}"),
                              "target": str(directory / f"fixed/fixed.%04d.{ext}"),
                              "output": str(directory / f"out/out.%04d.{ext}")}
    assert sorted(p.name for p in (directory / "fixed").iterdir()) == [f"fixed.{f}.{ext}" for f in meta["keyframes"]]
    for frame in frames_of(shot):
        plate, truth = directory / f"plate/plate.{frame}.{ext}", directory / f"truth/truth.{frame}.{ext}"
        np.testing.assert_array_equal(shot["plates"][frame], read_pixels(plate))
        np.testing.assert_array_equal(shot["truth"][frame], read_pixels(truth))
        assert shot["plates"][frame].dtype == np.float32 and shot["plates"][frame].shape == (SIZE[1], SIZE[0], 3)
        if frame in meta["keyframes"]:
            assert (directory / f"fixed/fixed.{frame}.{ext}").read_bytes() == truth.read_bytes()


@pytest.mark.parametrize("kind", ALL)
def test_formats_and_channels(shots, kind):
    directory, shot = shots[kind]
    ext, pixel_type, bits = FORMAT[task_of(kind)]
    plate = read_info(directory / f"plate/plate.1001.{ext}")
    truth = read_info(directory / f"truth/truth.1001.{ext}")
    assert (plate.pixel_type, plate.bits_per_sample, plate.channel_names) == (pixel_type, bits, ("R", "G", "B"))
    assert truth.channel_names == (("A",) if task_of(kind) == "roto" else ("R", "G", "B"))
    assert truth.pixel_type == pixel_type


@pytest.mark.parametrize("kind", ["paintout", "paintout_aside"])
def test_paintout_touches_at_most_three_percent(shots, kind):
    _, shot = shots[kind]
    assert 0.002 < changed(shot, np.min) and changed(shot, np.max) <= 0.03
    assert max(float(p.max()) for p in shot["plates"].values()) > 1.0  # scene-linear highlights


@pytest.mark.parametrize("kind", ["beauty", "beauty_aside"])
def test_beauty_removes_soft_dark_spots(shots, kind):
    _, shot = shots[kind]
    assert 0.005 < changed(shot) < 0.4
    for frame in frames_of(shot):
        spot = (shot["plates"][frame] != shot["truth"][frame]).any(-1)
        assert shot["plates"][frame][spot].mean() < shot["truth"][frame][spot].mean()


@pytest.mark.parametrize("kind", ["degrain", "degrain_aside"])
def test_degrain_truth_is_the_plate_without_its_grain(shots, kind):
    _, shot = shots[kind]
    assert changed(shot) > 0.9
    residual = [np.std(shot["plates"][f] - shot["truth"][f]) for f in frames_of(shot)]
    assert all(0.01 < r < 0.06 for r in residual)
    # Grain is drawn afresh every frame: its residuals are uncorrelated from one frame to the next.
    a, b = (shot["plates"][f] - shot["truth"][f] for f in (1001, 1002))
    assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.2


@pytest.mark.parametrize("kind", ["look", "look_aside"])
def test_look_is_more_than_a_per_channel_curve(shots, kind):
    _, shot = shots[kind]
    plate = np.stack([shot["plates"][f] for f in frames_of(shot)])
    truth = np.stack([shot["truth"][f] for f in frames_of(shot)])
    assert np.abs(plate - truth).mean() > 0.02
    # The best curve per channel (mean truth of each plate code bin) still misses by a clear margin.
    for c in range(3):
        bins = np.clip((plate[..., c] * 255).astype(int), 0, 255).ravel()
        counts = np.maximum(np.bincount(bins, minlength=256), 1)
        curve = np.bincount(bins, truth[..., c].ravel(), 256) / counts
        assert np.sqrt(np.mean((curve[bins] - truth[..., c].ravel()) ** 2)) > 0.01


@pytest.mark.parametrize("kind", ["roto", "roto_aside"])
def test_roto_matte_is_an_antialiased_moving_silhouette(shots, kind):
    _, shot = shots[kind]
    first, last = shot["truth"][1001][..., 0], shot["truth"][1000 + FRAMES][..., 0]
    assert first.min() == 0 and first.max() == 1 and ((first > 0) & (first < 1)).any()
    assert 0.02 < (first > 0.5).mean() < 0.3
    assert np.abs(first - last).mean() > 0.01  # it walks
    columns = np.nonzero(first.max(0) > 0.5)[0], np.nonzero(last.max(0) > 0.5)[0]
    assert columns[1].mean() > columns[0].mean()  # left to right


@pytest.mark.parametrize("kind", ["paintout", "degrain", "roto"])
def test_the_camera_moves_and_the_grain_changes_every_frame(shots, kind):
    _, shot = shots[kind]
    plates = [shot["plates"][f] for f in frames_of(shot)]
    assert all(np.abs(a - b).mean() > 1e-3 for a, b in zip(plates, plates[1:]))


def test_same_seed_same_shot_other_seed_other_shot(tmp_path, shots):
    _, first = shots["paintout"]
    again = write_photo_shot("paintout", tmp_path / "again", SIZE, FRAMES, seed=3)
    other = write_photo_shot("paintout", tmp_path / "other", SIZE, FRAMES, seed=4)
    for frame in frames_of(first):
        np.testing.assert_array_equal(again["plates"][frame], first["plates"][frame])
        np.testing.assert_array_equal(again["truth"][frame], first["truth"][frame])
    assert not np.array_equal(other["plates"][1001], first["plates"][1001])


def test_bench_and_aside_shots_differ(shots):
    for bench, aside in zip(PHOTO_SHOTS, ASIDE_SHOTS):
        assert shots[bench][1]["meta"]["photo"] != shots[aside][1]["meta"]["photo"]


def test_unknown_shot_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown photo shot"):
        write_photo_shot("cleanup", tmp_path)
