"""The quality bench: its baselines and scores are right, the peer is optional, and a short run gives
complete rows."""

import json
import math

import numpy as np
import pytest

from duplidog.core.previews import psnr
from duplidog.quality import (apply_curve, bench_quality, changed_region, check_bar, curve_baseline, fit_curve,
                              flicker, format_table, iou, mae, parse_summary, region_psnr, run_tunet,
                              score_shot, srgb_encode, worst_block_psnr)


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
    assert mae(a, b) == pytest.approx(1 / 16)
    assert np.allclose(srgb_encode(np.array([-1.0, 0.0, 0.0031308, 1.0, 0.18])),
                       [0.0, 0.0, 0.04045, 1.0, 0.4613561], atol=1e-5)


def test_the_changed_region_is_the_changed_pixels_grown_by_a_few_pixels():
    plate = np.zeros((20, 30, 3), np.float32)
    truth = plate.copy()
    truth[10, 15, 1] = 0.5  # one pixel, one channel
    truth[2, 2] = 0.01  # below the threshold
    region = changed_region(plate, truth, 0.02, dilate=4)
    assert region.dtype == bool and region.shape == (20, 30)
    assert region.sum() == 81 and region[6:15, 11:20].all()  # a 9x9 square
    assert not changed_region(plate, plate, 0.02).any()
    assert changed_region(plate, truth, 0.02, dilate=0).sum() == 1
    assert region_psnr(plate, truth, region) == pytest.approx(10 * math.log10(81 * 3 / 0.25))
    assert region_psnr(plate, truth, np.zeros_like(region)) is None


def test_a_mattes_region_is_its_edge_band():
    matte = np.zeros((40, 40, 1), np.float32)
    matte[10:30, 10:30] = 1.0
    matte[20, 5] = 0.5  # a soft pixel away from the edge
    region = changed_region(np.zeros((40, 40, 3), np.float32), matte, dilate=4)
    # The edge's two pixel rings (in and out), grown by 4: rows/columns 5..34, less the 10x10 core.
    ring = np.zeros((40, 40), bool)
    ring[5:35, 5:35] = True
    ring[15:25, 15:25] = False
    soft = np.zeros((40, 40), bool)
    soft[16:25, 1:10] = True
    assert (region == (ring | soft)).all()


def test_the_worst_block_finds_a_local_error_an_average_hides():
    truth = np.zeros((64, 96, 3), np.float32)
    result = truth.copy()
    result[40:44, 70:74] = 0.5  # inside block row 1, column 2
    assert worst_block_psnr(result, truth) == pytest.approx(10 * math.log10(32 * 32 / (16 * 0.25)))
    assert worst_block_psnr(result, truth) < psnr(result, truth) - 7
    assert worst_block_psnr(truth, truth) == math.inf
    edge = truth[:40, :40].copy()  # 40x40: the last blocks are 8 px wide and tall
    edge[39, 39] = 1.0
    assert worst_block_psnr(edge, truth[:40, :40]) == pytest.approx(10 * math.log10(64))


def test_flicker_is_the_psnr_of_the_frame_to_frame_change():
    rng = np.random.default_rng(2)
    truths = [rng.uniform(0, 1, (16, 16, 3)).astype(np.float32) for _ in range(4)]
    assert flicker(truths, truths) == math.inf
    assert flicker([t + 0.25 for t in truths], truths) > 60  # a constant offset does not flicker (but rounding)
    static = [truths[0]] * 4  # a result that does not move while the truth does
    low = flicker(static, truths)
    assert math.isfinite(low) and low < 12
    assert low == pytest.approx(psnr(np.stack([np.zeros_like(t) for t in truths[1:]]),
                                     np.stack([b - a for a, b in zip(truths, truths[1:])])))
    # Dicts pair only the frames f, f + 1 that both hold.
    by_frame = {1002: truths[0], 1003: truths[1], 1005: truths[2]}
    assert flicker({f: truths[0] for f in by_frame}, by_frame) == pytest.approx(psnr(truths[0], truths[1]))
    assert flicker({1: truths[0]}, {1: truths[0]}) is None


def test_score_shot_scores_linear_shots_on_display_values_and_mattes_as_they_are():
    rng = np.random.default_rng(3)
    truth = {f: rng.uniform(0, 2, (32, 32, 3)).astype(np.float32) for f in (1, 2, 3)}
    plates = {f: t.copy() for f, t in truth.items()}
    for f in plates:
        plates[f][:8, :8] = 0.0
    result = {f: truth[f] * 1.01 for f in (1, 2)}
    scores = score_shot(result, truth, plates, "cleanup", "linear")
    expected = np.mean([psnr(srgb_encode(result[f]), srgb_encode(truth[f])) for f in (1, 2)])
    assert scores["psnr"] == pytest.approx(expected) and scores["frames"] == 2
    assert scores["iou"] is None and scores["mae"] is None and scores["region_psnr"] is not None
    assert all(math.isfinite(scores[k]) for k in ("psnr", "region_psnr", "worst_block", "flicker"))
    assert score_shot(result, truth, plates, "grade", "srgb")["psnr"] == pytest.approx(
        np.mean([psnr(result[f], truth[f]) for f in (1, 2)]))
    mattes = {f: (t[..., :1] > 1).astype(np.float32) for f, t in truth.items()}
    roto = score_shot(mattes, mattes, plates, "roto", "linear")
    assert roto["iou"] == 1.0 and roto["mae"] == 0.0 and roto["psnr"] == math.inf


def test_the_peer_is_optional_and_its_summary_parses(tmp_path, monkeypatch):
    shot = tmp_path / "shot"
    (shot / "plate").mkdir(parents=True)
    (shot / "shot.json").write_text(json.dumps({"ext": "exr", "first": 1, "last": 2}))
    monkeypatch.delenv("TUNET_DIR", raising=False)
    driver = tmp_path / "run_tunet.sh"
    assert "not found" in run_tunet(shot, tmp_path / "out", 1.0, driver=driver)["error"]
    driver.write_text("exit 1\n")
    assert "TUNET_DIR" in run_tunet(shot, tmp_path / "out", 1.0, driver=driver)["error"]
    assert parse_summary("tunet: res=256 dims=16 lr=5e-4 steps=? train_s=180.5 infer_s=12.0") == {
        "res": 256, "dims": 16, "lr": 5e-4, "steps": None, "train_s": 180.5, "infer_s": 12.0}


def test_the_bar_compares_duplidog_with_tunet_and_doing_nothing():
    row = {"shot": "paintout", "task": "cleanup", "duplidog": {"region_psnr": 40.0}, "tunet": {"region_psnr": 36.5},
           "nothing": {"region_psnr": 20.0}, "curve": {"region_psnr": 22.0}}
    bar = check_bar(row)
    assert bar["metric"] == "region_psnr" and bar["holds"] and bar["best_other"] == "tunet"
    assert bar["vs_best"] == pytest.approx(3.5)
    assert check_bar({**row, "tunet": {"region_psnr": 38.0}})["holds"] is False
    assert check_bar({**row, "tunet": None})["holds"] is None
    roto = {"shot": "roto", "task": "roto", "duplidog": {"iou": 0.95}, "tunet": {"iou": 0.92}, "nothing": None,
            "curve": {"iou": 0.5}}
    assert check_bar(roto)["holds"] and check_bar(roto)["above_nothing"] is None


def test_a_short_run_gives_a_complete_row(tmp_path):
    from duplidog.quality.photos import PHOTO_SHOTS

    tiny = {"pool": {"tiles_per_keyframe": 16, "tile_size": 32, "border": 4},
            "train": {"batch_size": 4, "validate_every": 0, "checkpoint_every": 0}}
    kind = PHOTO_SHOTS[0]
    rows = bench_quality(shots=[kind], minutes=0.5, steps=3, out_dir=tmp_path, settings=tiny, size=(96, 64),
                         frames=12, peer=False, tag="tiny")
    (row,) = rows
    assert row["shot"] == kind and row["steps"] == 3 and row["frames"] > 0 and row["tunet"] is None
    for method in ("duplidog", "curve") + (("nothing",) if row["task"] != "roto" else ()):
        scores = row[method]
        keys = ("psnr", "region_psnr", "worst_block") + (("iou", "mae") if row["task"] == "roto" else ())
        assert all(scores[k] is not None and not math.isnan(scores[k]) for k in keys), (method, scores)
        assert scores["flicker"] is None or not math.isnan(scores["flicker"])
    shot_dir = tmp_path / kind
    assert (shot_dir / "duplidog_tiny/scores.json").is_file()
    written = (shot_dir / "shot.json").stat().st_mtime_ns
    table = format_table(rows)
    assert kind in table and "region PSNR" in table and "not checked" in table
    # The shot is kept: a second run (another tag) on the same shot does not write it again.
    again = bench_quality(shots=[kind], minutes=0.5, steps=1, out_dir=tmp_path, settings=tiny, size=(96, 64),
                          frames=12, peer=False, tag="other")
    assert (shot_dir / "shot.json").stat().st_mtime_ns == written and again[0]["steps"] == 1
    assert again[0]["curve"] == row["curve"]
