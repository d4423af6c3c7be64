"""The quality benchmark: its baselines and scores are right, and a short run gives complete rows."""

import math

import numpy as np
import pytest

from duplidog.quality import apply_curve, bench_quality, curve_baseline, fit_curve, format_rows, iou, psnr


def test_a_fitted_curve_recovers_a_per_channel_function_beyond_its_range():
    x = np.random.default_rng(0).uniform(0, 4, 10000).astype(np.float32)
    curve = fit_curve(x, 2 * x + 0.1)
    probe = np.array([0.5, 2.0, 3.9, 6.0, -1.0], np.float32)  # the last two outside the fitted range
    assert np.allclose(apply_curve(curve, probe), 2 * probe + 0.1, atol=0.02)


def test_the_curve_baseline_maps_channels_and_mattes_from_luminance():
    rng = np.random.default_rng(1)
    plates = [rng.uniform(0, 1, (8, 8, 3)).astype(np.float32) for _ in range(3)]
    graded = [p * np.array([1.5, 1.0, 0.5], np.float32) for p in plates]
    result = curve_baseline(plates[:2], graded[:2], plates[2:])[0]
    assert result.shape == (8, 8, 3) and np.allclose(result, graded[2], atol=0.03)
    mattes = [(p.mean(-1, keepdims=True) > 0.5).astype(np.float32) for p in plates]
    matte = curve_baseline(plates[:2], mattes[:2], plates[2:])[0]
    assert matte.shape == (8, 8, 1) and iou(matte, mattes[2]) > 0.8


def test_scores():
    a = np.zeros((4, 4, 1), np.float32)
    b = a.copy()
    b[0, 0] = 1.0
    assert iou(b, b) == 1.0 and iou(b, 1 - b) == 0.0 and iou(a, a) == 1.0
    assert psnr(a, a) == math.inf and psnr(a, b) == pytest.approx(10 * math.log10(16))


def test_a_short_run_scores_unseen_frames_of_the_look_and_the_matte(tmp_path):
    tiny = {"pool": {"tiles_per_keyframe": 16, "tile_size": 32, "border": 4},
            "train": {"batch_size": 4, "validate_every": 0, "checkpoint_every": 0}}
    rows = bench_quality(steps=3, shots=("look", "roto"), out_dir=tmp_path, settings=tiny,
                         size=(96, 64))
    assert [r["shot"] for r in rows] == ["look", "roto"]
    for row in rows:
        assert row["frames"] == 20 and row["steps"] == 3
        assert all(math.isfinite(row[k]) for k in ("model", "curve", "margin"))
    assert rows[0]["nothing"] is not None and rows[1]["nothing"] is None
    assert 0.0 <= rows[1]["model"] <= 1.0
    assert (tmp_path / "roto/out/out.1002.exr").is_file()
    assert "look" in format_rows(rows) and "IoU" in format_rows(rows)


def test_the_roto_shot_is_not_a_key_no_curve_of_the_plate_separates_its_objects(tmp_path):
    from duplidog import demo
    from duplidog.quality import write_shot

    shot = write_shot("roto", tmp_path, 96, 64)
    keys = demo.KEYFRAMES
    unseen = [f for f in demo.FRAMES if f not in keys][::5]
    mattes = [shot["truth"][f] for f in unseen]
    assert all(0.05 < m.mean() < 0.5 and m.max() == 1.0 for m in mattes)  # objects in every frame, edges soft
    assert any(0.0 < v < 1.0 for v in np.unique(mattes[0]))
    curve = curve_baseline([shot["plates"][f] for f in keys], [shot["truth"][f] for f in keys],
                           [shot["plates"][f] for f in unseen])
    assert np.mean([iou(c, m) for c, m in zip(curve, mattes)]) < 0.7
