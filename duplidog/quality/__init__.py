"""The quality bench: duplidog against TuNet, doing nothing and a fitted curve on photographic shots.

``scores`` (baselines and scores), ``peer`` (TuNet through its driver), ``bench`` (the bench and its
table), ``photos`` (the shots; its names load on first use).
"""

from duplidog.quality.bench import (bar_for, bench_quality, check_bar, evaluate_baselines, evaluate_duplidog,
                                    evaluate_tunet, format_table, load_shot, prepare_shot, shot_kinds,
                                    unseen_frames)
from duplidog.quality.peer import parse_summary, run_tunet, shot_fingerprint
from duplidog.quality.scores import (apply_curve, changed_region, curve_baseline, dilate_mask,
                                     display, fit_curve, flicker, iou, mae, region_psnr, score_shot,
                                     srgb_encode, worst_block_psnr)

_PHOTOS = ("PHOTO_SHOTS", "ASIDE_SHOTS", "write_photo_shot")


def __getattr__(name):
    if name in _PHOTOS:
        from duplidog.quality import photos

        return getattr(photos, name)
    raise AttributeError(f"module 'duplidog.quality' has no attribute {name!r}")


__all__ = ["apply_curve", "bar_for", "bench_quality", "changed_region", "check_bar",
           "curve_baseline", "dilate_mask", "display", "evaluate_baselines", "evaluate_duplidog", "evaluate_tunet",
           "fit_curve", "flicker", "format_table", "iou", "load_shot", "mae", "parse_summary", "prepare_shot",
           "region_psnr", "run_tunet", "score_shot", "shot_fingerprint", "shot_kinds", "srgb_encode",
           "unseen_frames", "worst_block_psnr", *_PHOTOS]
