"""The quality bench's baselines and scores.

Baselines: doing nothing (the plate) and a per-channel curve fitted on the keyframes (the fix a
compositor could get from a 1D LUT). Scores, all with peak 1.0: PSNR of the whole frame, PSNR inside
the region the fix changes (``changed_region``: a paint-out's patch, a matte's edge band), the worst
32x32 block's PSNR (a local failure an average hides), temporal PSNR (``flicker``: how well the
frame-to-frame change matches the truth's) and, for mattes, IoU and mean absolute error.

``score_shot`` scores linear shots on display values (the sRGB OETF of max(x, 0), what an artist
looks at and the space the TuNet peer works in), sRGB-encoded shots as they are, mattes as they are.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from duplidog.core.previews import block_psnrs, psnr, psnr_of_mse

CURVE_BINS = 64
REGION_THRESHOLD = 0.02  # display units: a change smaller than this is not part of the fix
REGION_DILATE = 4  # px
BLOCK = 32


# -- baselines -------------------------------------------------------------------------------------
def fit_curve(source: np.ndarray, target: np.ndarray, bins: int = CURVE_BINS) -> tuple[np.ndarray, np.ndarray]:
    """A piecewise-linear curve source -> target through the mean target of each source quantile bin."""
    source, target = source.ravel().astype(np.float64), target.ravel().astype(np.float64)
    edges = np.unique(np.quantile(source, np.linspace(0, 1, bins + 1)))
    which = np.clip(np.searchsorted(edges, source, side="right") - 1, 0, len(edges) - 2)
    counts = np.bincount(which, minlength=len(edges) - 1)
    keep = counts > 0
    xs = (np.bincount(which, source, len(edges) - 1)[keep] / counts[keep])
    ys = (np.bincount(which, target, len(edges) - 1)[keep] / counts[keep])
    return xs, ys


def apply_curve(curve: tuple[np.ndarray, np.ndarray], values: np.ndarray) -> np.ndarray:
    """The curve at ``values``, extended linearly past its ends (scene-linear values are unbounded)."""
    xs, ys = curve
    if len(xs) < 2:
        return np.full_like(values, ys[0] if len(ys) else 0.0)
    out = np.interp(values, xs, ys)
    low, high = values < xs[0], values > xs[-1]
    out[low] = ys[0] + (values[low] - xs[0]) * (ys[1] - ys[0]) / (xs[1] - xs[0])
    out[high] = ys[-1] + (values[high] - xs[-1]) * (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
    return out.astype(np.float32)


def curve_baseline(key_sources: Sequence[np.ndarray], key_targets: Sequence[np.ndarray],
                   plates: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per output channel, a curve from the matching source channel (or from luminance for a matte)."""
    src, tgt = np.stack(key_sources), np.stack(key_targets)
    same = src.shape[-1] == tgt.shape[-1]

    def feature(images: np.ndarray, channel: int) -> np.ndarray:
        return images[..., channel] if same else images[..., :3].mean(-1)

    curves = [fit_curve(feature(src, c), tgt[..., c]) for c in range(tgt.shape[-1])]
    return [np.stack([apply_curve(curves[c], feature(p, c)) for c in range(tgt.shape[-1])], -1) for p in plates]


# -- display values --------------------------------------------------------------------------------
def srgb_encode(values: np.ndarray) -> np.ndarray:
    """The standard sRGB OETF of x clipped to [0, 1]: what a monitor shows, and all that the peer's
    8-bit files can hold, so neither method is scored on highlights the other cannot deliver."""
    x = np.clip(np.asarray(values, np.float64), 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055).astype(np.float32)


def display(image: np.ndarray, task: str, encoding: str) -> np.ndarray:
    """What is scored: linear images sRGB-encoded, sRGB-encoded images and mattes as they are."""
    if task == "roto" or encoding != "linear":
        return np.asarray(image, np.float32)
    return srgb_encode(image)


# -- scores ----------------------------------------------------------------------------------------
def iou(result: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> float:
    a, b = result > threshold, truth > threshold
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def mae(result: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean(np.abs(result.astype(np.float64) - truth.astype(np.float64))))


def dilate_mask(mask: np.ndarray, radius: int) -> np.ndarray:
    """``mask`` (bool HxW) grown by ``radius`` px in every direction (a square structuring element)."""
    out = np.asarray(mask, bool)
    if radius <= 0:
        return out.copy()
    for axis in (0, 1):
        grown = out.copy()
        n = out.shape[axis]
        for shift in range(1, min(radius, n - 1) + 1):
            ahead = [slice(None)] * 2
            behind = [slice(None)] * 2
            ahead[axis], behind[axis] = slice(shift, None), slice(None, n - shift)
            grown[tuple(ahead)] |= out[tuple(behind)]
            grown[tuple(behind)] |= out[tuple(ahead)]
        out = grown
    return out


def changed_region(plate: np.ndarray, truth: np.ndarray, threshold: float = REGION_THRESHOLD,
                   dilate: int = REGION_DILATE, *, matte: bool | None = None) -> np.ndarray:
    """Where the fix acts (bool HxW), grown by ``dilate`` px.

    For an image: where |truth - plate| exceeds ``threshold`` in any channel. For a matte (``matte``;
    default: the truth has one channel and the plate more): the matte's edge band, where it lies
    strictly between ``threshold`` and 1 - ``threshold`` or within ``dilate`` px of the edge of
    matte > 0.5. Compare both images in the space they are scored in (``display``).
    """
    truth = np.asarray(truth, np.float32)
    if truth.ndim == 2:
        truth = truth[..., None]
    plate = np.asarray(plate, np.float32)
    if plate.ndim == 2:
        plate = plate[..., None]
    if matte is None:
        matte = truth.shape[-1] == 1 and plate.shape[-1] != 1
    if matte:
        m = truth[..., 0]
        soft = (m > threshold) & (m < 1 - threshold)
        inside = m > 0.5
        edge = dilate_mask(inside, 1) & ~inside  # the outside pixels touching the inside
        edge |= inside & dilate_mask(~inside, 1)  # and the inside pixels touching the outside
        return dilate_mask(soft | edge, dilate)
    changed = np.any(np.abs(truth - plate) > threshold, axis=-1)
    return dilate_mask(changed, dilate)


def region_psnr(result: np.ndarray, truth: np.ndarray, region: np.ndarray, peak: float = 1.0) -> float | None:
    """PSNR over the pixels of ``region`` (bool HxW), every channel; None for an empty region."""
    region = np.asarray(region, bool)
    if not region.any():
        return None
    diff = result.astype(np.float64)[region] - truth.astype(np.float64)[region]
    return psnr_of_mse(float(np.mean(diff ** 2)), peak)


def worst_block_psnr(result: np.ndarray, truth: np.ndarray, block: int = BLOCK, peak: float = 1.0) -> float:
    """The lowest PSNR over the non-overlapping ``block`` x ``block`` blocks."""
    return float(block_psnrs(result, truth, block, peak).min())


def flicker(results, truths, peak: float = 1.0) -> float | None:
    """Temporal PSNR: PSNR of the frame-to-frame change of the results against the truth's.

    ``results`` and ``truths`` are sequences of consecutive frames, or dicts frame -> image, where the
    pairs are the frames f, f + 1 that both hold. The squared error is pooled over every pair; inf if
    the result changes exactly as the truth does, None if there is no pair.
    """
    if isinstance(results, Mapping):
        pairs = [(f, f + 1) for f in sorted(results) if f + 1 in results]
        get_r, get_t = results.__getitem__, truths.__getitem__
    else:
        pairs = [(i, i + 1) for i in range(len(results) - 1)]
        get_r, get_t = results.__getitem__, truths.__getitem__
    if not pairs:
        return None
    total, count = 0.0, 0
    for a, b in pairs:
        dr = get_r(b).astype(np.float64) - get_r(a).astype(np.float64)
        dt = get_t(b).astype(np.float64) - get_t(a).astype(np.float64)
        total += float(np.sum((dr - dt) ** 2))
        count += dr.size
    return psnr_of_mse(total / count, peak)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def score_shot(results: Mapping[int, np.ndarray], truth: Mapping[int, np.ndarray],
               plates: Mapping[int, np.ndarray], task: str, encoding: str,
               threshold: float = REGION_THRESHOLD, dilate: int = REGION_DILATE, block: int = BLOCK) -> dict:
    """Per-shot means over the frames of ``results``: psnr (whole frame), region_psnr, worst_block,
    flicker (temporal PSNR over the pairs f, f + 1 of those frames) and, for roto, iou and mae."""
    frames = sorted(results)
    if not frames:
        raise ValueError("score_shot: no frames to score")
    shown = {f: display(results[f], task, encoding) for f in frames}
    true = {f: display(truth[f], task, encoding) for f in frames}
    roto = task == "roto"
    regions = {f: changed_region(true[f] if roto else display(plates[f], task, encoding), true[f], threshold,
                                 dilate, matte=roto) for f in frames}
    scores = {
        "psnr": _mean(psnr(shown[f], true[f]) for f in frames),
        "region_psnr": _mean(region_psnr(shown[f], true[f], regions[f]) for f in frames),
        "worst_block": _mean(worst_block_psnr(shown[f], true[f], block) for f in frames),
        "flicker": flicker(shown, true),
        "iou": _mean(iou(shown[f], true[f]) for f in frames) if roto else None,
        "mae": _mean(mae(shown[f], true[f]) for f in frames) if roto else None,
        "region_fraction": _mean(float(regions[f].mean()) for f in frames),
        "frames": len(frames),
    }
    return scores
