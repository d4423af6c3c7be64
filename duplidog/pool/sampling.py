"""Where training tiles come from: weighted random positions on a keyframe.

A keyframe's interesting pixels are few. In a paint cleanup the fix may cover 2% of the frame; a
network trained on uniformly drawn tiles would spend 98% of its steps learning "leave it alone". So
each pixel gets a weight:

* **change**: how much before and after differ there (``|target - source|`` for channels both have;
  for target channels the source lacks, such as a roto matte, the target's own gradient, since a
  matte's information is its edges),
* **detail**: the source's local gradient magnitude (texture and edges, where a network has most to
  learn and where flat-area mistakes would not show),
* a **uniform floor**: a share of the probability spread evenly, so every part of the frame can be
  drawn and the network also learns what must stay unchanged.

Change and detail are each normalised to sum to one before mixing, so the weights do not depend on
exposure or on how strong the fix is. A drawn pixel is then placed at a random spot inside the tile's
loss region (the tile minus its context border), so tiles land on the change but not always centred.

Two samplers draw pixels from those weights: ``FullSampler`` (the exact 2D distribution, one cumulative
sum over H*W) and ``SeparableSampler`` (a row from the row marginal and a column from the column
marginal: O(H+W) memory, but the product of marginals also puts mass where a change's row meets
another change's column, and spreads a diagonal wire over its whole bounding box). See the package
docstring for the measured comparison.

All maps are computed in the working space, where the network and its loss live.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

SAMPLERS = ("full", "separable")


def gradient_magnitude(image: np.ndarray) -> np.ndarray:
    """Per-pixel |dx| + |dy| (forward differences), averaged over channels: (H, W, C) -> (H, W)."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 2:
        image = image[:, :, None]
    magnitude = np.zeros(image.shape[:2], dtype=np.float32)
    magnitude[:, :-1] += np.abs(np.diff(image, axis=1)).mean(axis=2)
    magnitude[:-1, :] += np.abs(np.diff(image, axis=0)).mean(axis=2)
    return magnitude


def change_map(
    source: np.ndarray,
    target: np.ndarray,
    source_channels: Sequence[str],
    target_channels: Sequence[str],
) -> np.ndarray:
    """Where before and after differ, (H, W): the mean over target channels of |target - source| for
    channels the source also has, and of the target's gradient for channels it does not (a matte)."""
    change = np.zeros(target.shape[:2], dtype=np.float32)
    for t, name in enumerate(target_channels):
        if name in source_channels:
            change += np.abs(target[:, :, t] - source[:, :, list(source_channels).index(name)])
        else:
            change += gradient_magnitude(target[:, :, t])
    return change / max(len(target_channels), 1)


#: A pixel counts as changed (``changed_area``) where the change map, a mean over channels of working-space
#: differences, exceeds this: well under one 8-bit code value per channel is left out as rounding.
CHANGED_THRESHOLD = 0.003
#: ... and so do its neighbours within this many pixels, so an object's outline is drawn with it.
CHANGED_RADIUS = 2


def changed_area(change: np.ndarray, threshold: float = CHANGED_THRESHOLD, radius: int = CHANGED_RADIUS) -> np.ndarray:
    """1 where the change map exceeds ``threshold`` (and within ``radius`` px of it), else 0: every
    changed pixel draws tiles alike, however strong its change. With the magnitude itself a bright
    marker on a dark sky draws several times the tiles of a pale one on a white object, which the
    network then leaves half painted out."""
    from scipy import ndimage

    changed = change > threshold
    if radius > 0 and changed.any():
        changed = ndimage.binary_dilation(changed, iterations=radius)
    return changed.astype(np.float32)


def pixel_weights(
    change: np.ndarray,
    detail: np.ndarray,
    change_weight: float,
    detail_weight: float,
    uniform_floor: float,
) -> np.ndarray:
    """Probability of each pixel (H, W), float64 summing to 1.

    Each term is normalised to sum to one, mixed by its weight, and ``uniform_floor`` of the total is
    spread evenly (a term that is zero everywhere, such as the change of identical frames, drops out).
    """
    terms = []
    for share, term in ((change_weight, change), (detail_weight, detail)):
        total = float(np.sum(term, dtype=np.float64))
        if share > 0 and total > 0 and np.isfinite(total):
            terms.append((share, term / total))
    weights = np.zeros(change.shape, dtype=np.float64)
    shares = sum(share for share, _ in terms)
    for share, term in terms:
        weights += (share / shares) * term
    floor = uniform_floor if terms else 1.0
    weights *= 1.0 - floor
    weights += floor / weights.size
    return weights


class FullSampler:
    """Draw pixels from the exact 2D distribution (cumulative sum over the flattened weights)."""

    name = "full"

    def __init__(self, weights: np.ndarray):
        self.width = weights.shape[1]
        self.cdf = np.cumsum(weights, axis=None, dtype=np.float64)

    def draw(self, rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
        """``count`` pixel positions as (rows, columns) int64 arrays."""
        u = rng.random(count) * self.cdf[-1]
        flat = np.minimum(np.searchsorted(self.cdf, u, side="right"), self.cdf.size - 1)
        return flat // self.width, flat % self.width


class SeparableSampler:
    """Draw a row from the row marginal and, independently, a column from the column marginal."""

    name = "separable"

    def __init__(self, weights: np.ndarray):
        self.row_cdf = np.cumsum(weights.sum(axis=1, dtype=np.float64))
        self.column_cdf = np.cumsum(weights.sum(axis=0, dtype=np.float64))

    def draw(self, rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
        u = rng.random((2, count))
        rows = np.searchsorted(self.row_cdf, u[0] * self.row_cdf[-1], side="right")
        columns = np.searchsorted(self.column_cdf, u[1] * self.column_cdf[-1], side="right")
        return np.minimum(rows, self.row_cdf.size - 1), np.minimum(columns, self.column_cdf.size - 1)


def make_sampler(name: str, weights: np.ndarray) -> FullSampler | SeparableSampler:
    if name == "full":
        return FullSampler(weights)
    if name == "separable":
        return SeparableSampler(weights)
    raise ValueError(f"unknown sampler {name!r} (use one of {', '.join(SAMPLERS)})")


class BoxMeans:
    """Mean of a map over any axis-aligned box in O(1), from a summed-area table."""

    def __init__(self, values: np.ndarray):
        table = np.zeros((values.shape[0] + 1, values.shape[1] + 1), dtype=np.float64)
        np.cumsum(np.cumsum(values, axis=0, dtype=np.float64), axis=1, out=table[1:, 1:])
        self.table = table

    def mean(self, top: np.ndarray, left: np.ndarray, height: int, width: int) -> np.ndarray:
        t = self.table
        bottom, right = top + height, left + width
        total = t[bottom, right] - t[top, right] - t[bottom, left] + t[top, left]
        return total / float(height * width)


def position_limits(size: int, tile_size: int, margin: int) -> tuple[int, int]:
    """Smallest and largest tile corner along one axis keeping ``margin`` pixels clear of both edges."""
    return margin, size - tile_size - margin


def draw_tile_positions(
    sampler: FullSampler | SeparableSampler,
    activity: BoxMeans,
    rng: np.random.Generator,
    count: int,
    frame_shape: tuple[int, int],
    tile_size: int,
    border: int,
    edge_margin: int,
    detail_threshold: float,
    max_attempts: int,
) -> tuple[np.ndarray, int, int]:
    """Top-left corners (count', 2) int32 (y, x) of tiles, and the number of redraws and of tiles given up.

    Each tile's loss region (inside ``border``) contains a pixel drawn from the sampler, at a uniformly
    random place in that region, and the tile is clamped to keep ``edge_margin`` pixels from the frame
    edge. A tile whose mean activity over its loss region is below ``detail_threshold`` is redrawn, up
    to ``max_attempts`` draws in all; tiles still flat after that are left out (count' <= count).
    """
    height, width = frame_shape
    y_low, y_high = position_limits(height, tile_size, edge_margin)
    x_low, x_high = position_limits(width, tile_size, edge_margin)
    inner = tile_size - 2 * border
    accepted = np.zeros((0, 2), dtype=np.int32)
    pending, redraws = count, 0
    for attempt in range(max(max_attempts, 1)):
        if pending == 0:
            break
        if attempt:
            redraws += pending
        rows, columns = sampler.draw(rng, pending)
        offsets = rng.integers(border, border + inner, size=(2, pending))
        ys = np.clip(rows - offsets[0], y_low, y_high)
        xs = np.clip(columns - offsets[1], x_low, x_high)
        if detail_threshold > 0:
            keep = activity.mean(ys + border, xs + border, inner, inner) >= detail_threshold
            ys, xs = ys[keep], xs[keep]
        accepted = np.concatenate([accepted, np.stack([ys, xs], axis=1).astype(np.int32)])
        pending = count - len(accepted)
    return accepted, redraws, pending
