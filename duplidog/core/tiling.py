"""Where the tiles go and how much each one counts: the geometry of exact, seamless tiled inference.

A convolutional network's output pixel depends only on the input within ``reach`` pixels of it, and
on where the pooling grid falls. So a tile gives *exactly* the whole-frame answer for every pixel that
is more than ``reach`` from a tile edge -- provided the tile's origin sits on the pooling grid (a
multiple of ``size_multiple``) and the frame was padded the same way in both modes. This module
arranges that:

* ``frame_padding`` says how far the frame is mirror-padded (``duplidog.core.mirror``) on the bottom and right up to a multiple of
  ``size_multiple`` (and, optionally, by ``context`` pixels on every side). Tiles that touch the frame
  edge share the padded frame's own border, so the network's border treatment is the same in both
  modes and edge pixels are exact too. Padding by the full reach is not the default: with a reach of
  hundreds of pixels (the MSRN presets) it would triple the work on a 2K frame.
* ``axis_plan`` lays tiles along one axis with origins on the grid and neighbours sharing at least
  ``overlap`` pixels, and gives each tile a 1-D weight that is 1 in its middle, falls to 0 along a
  raised-cosine ramp inside the shared strip, and is exactly 0 within ``reach`` of an interior tile
  edge -- so only exact pixels are ever blended. At the frame edge the weight stays 1 (a Hann window
  that zeroes the outermost row would divide by zero or darken the edge). A neighbour's ramp is the
  complement (``1 - w``), so the weights of any pixel sum to exactly one and no normalising pass is
  needed. The 2-D weight of a tile is the outer product of its two axis weights.

Everything here is plain integer geometry plus numpy weights; no torch, no devices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np



def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def round_down(value: int, multiple: int) -> int:
    return value // multiple * multiple


@dataclass(frozen=True)
class FramePadding:
    """Mirror padding of a frame: ``before`` pixels ahead of it and ``after`` behind, per axis."""

    top: int
    bottom: int
    left: int
    right: int

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        return height + self.top + self.bottom, width + self.left + self.right


def frame_padding(height: int, width: int, multiple: int, context: int = 0) -> FramePadding:
    """Pad by ``context`` on every side, then on the bottom/right up to a multiple of ``multiple``."""
    padded_h = round_up(height + 2 * context, multiple)
    padded_w = round_up(width + 2 * context, multiple)
    return FramePadding(context, padded_h - height - context, context, padded_w - width - context)


@dataclass(frozen=True)
class AxisTile:
    """One tile along one axis.

    ``origin``/``size``: the input span in padded-frame pixels. ``keep_start``/``keep_stop``: the part
    of the tile's *output* that gets any weight, in visible output pixels (padded borders dropped).
    ``weight``: the 1-D blend weight over the kept span (float32, in [0, 1]).
    """

    origin: int
    size: int
    keep_start: int
    keep_stop: int
    weight: np.ndarray


def tile_origins(length: int, tile: int, overlap: int, multiple: int) -> list[int]:
    """Origins (multiples of ``multiple``) covering ``[0, length)`` with tiles of ``tile`` pixels,
    neighbours sharing at least ``overlap`` pixels, as few tiles as possible, spread evenly.

    ``length`` and ``tile`` must be multiples of ``multiple``; ``tile - overlap >= multiple``.
    """
    if tile >= length:
        return [0]
    stride = tile - overlap
    count = 1 + math.ceil((length - tile) / stride)
    while True:
        span = length - tile
        origins = [round_down(i * span // (count - 1), multiple) for i in range(count)]
        origins[-1] = span
        if all(b - a <= stride for a, b in zip(origins, origins[1:])):
            return origins
        count += 1  # rounding to the grid widened a gap: one more tile fixes it


def raised_cosine(t: np.ndarray) -> np.ndarray:
    """0 at t <= 0, 1 at t >= 1, a smooth half-cosine between (zero slope at both ends)."""
    t = np.clip(t, 0.0, 1.0)
    return 0.5 - 0.5 * np.cos(np.pi * t)


def axis_plan(
    visible: int, pad_before: int, padded: int, tile: int, overlap: int, reach: int, multiple: int,
    scale: int = 1,
) -> list[AxisTile]:
    """Tiles along one axis and their blend weights, in output pixels (input pixels times ``scale``).

    ``visible``: the frame's length; ``pad_before``: mirror padding ahead of it; ``padded``: the padded
    length (a multiple of ``multiple``); ``tile``: tile length in padded-input pixels (a multiple of
    ``multiple``); ``overlap``: the least number of input pixels neighbours share (``>= 2 * reach + 1``
    so a ramp fits between the two inexact strips).
    """
    tile = min(tile, padded)
    origins = tile_origins(padded, tile, overlap, multiple)
    n = len(origins)
    s = scale
    # The blend strip between tile i and i+1: centred in their shared span, inside both tiles' exact
    # parts (reach clear of either tile edge), and no wider than the narrowest stride, so that the
    # strips of successive pairs never overlap and each pixel sees at most two tiles per axis.
    strips: list[tuple[float, float]] = []
    if n > 1:
        min_stride = min(b - a for a, b in zip(origins, origins[1:]))
        for a, b in zip(origins, origins[1:]):
            shared = a + tile - b
            width = min(shared - 2 * reach, min_stride)
            if width <= 0:
                raise AssertionError("tile overlap too small for the reach; check the caller's overlap")
            centre = (b + a + tile) / 2.0
            strips.append((s * (centre - width / 2.0), s * (centre + width / 2.0)))

    visible_start, visible_stop = s * pad_before, s * (pad_before + visible)
    tiles = []
    for i, origin in enumerate(origins):
        start = strips[i - 1][0] if i > 0 else s * origin
        stop = strips[i][1] if i < n - 1 else s * (origin + tile)
        keep_start = max(visible_start, math.floor(start))
        keep_stop = min(visible_stop, math.ceil(stop))
        centres = np.arange(keep_start, keep_stop, dtype=np.float64) + 0.5
        weight = np.ones_like(centres)
        if i > 0:
            lo, hi = strips[i - 1]
            weight *= raised_cosine((centres - lo) / (hi - lo))
        if i < n - 1:
            lo, hi = strips[i]
            weight *= 1.0 - raised_cosine((centres - lo) / (hi - lo))
        if keep_stop > keep_start and weight.any():
            nonzero = np.flatnonzero(weight)
            first, last = int(nonzero[0]), int(nonzero[-1]) + 1
            tiles.append(
                AxisTile(origin, tile, keep_start + first - visible_start, keep_start + last - visible_start,
                         weight[first:last].astype(np.float32))
            )
    return tiles


@dataclass(frozen=True)
class TileGrid:
    """The 2-D tiling of one frame: the padding and the tiles along each axis (tiles = their product),
    and the ``overlap`` and ``reach`` they were laid out with."""

    padding: FramePadding
    rows: list[AxisTile]
    columns: list[AxisTile]
    tile_height: int
    tile_width: int
    overlap: int = 0
    reach: int = 0

    def __len__(self) -> int:
        return len(self.rows) * len(self.columns)

    def tiles(self):
        """Each tile as (row AxisTile, column AxisTile), row-major."""
        for row in self.rows:
            for column in self.columns:
                yield row, column


def minimum_overlap(reach: int) -> int:
    """Neighbouring tiles must share both inexact strips (``reach`` each) plus at least one pixel to blend on."""
    return 2 * reach + 1


def default_overlap(reach: int, multiple: int) -> int:
    """Both inexact strips plus a ramp of a quarter of the reach (at least 8 pixels, one grid step)."""
    return 2 * reach + max(8, multiple, reach // 4)


def smallest_tile(overlap: int, multiple: int) -> int:
    """The smallest tile that leaves a stride of one grid step beyond the overlap."""
    return round_up(overlap + multiple, multiple)


def plan_tiles(
    height: int, width: int, tile: int, reach: int, multiple: int, overlap: int | None = None, scale: int = 1,
    context: int = 0, padding_multiple: int | None = None,
) -> TileGrid:
    """The tile grid for a ``height`` x ``width`` frame with square tiles of (about) ``tile`` pixels.

    Every setting plans: ``tile`` is rounded down to the grid (``multiple``: the steps tile origins
    and sizes take) and, where it is smaller than the overlap plus one grid step, enlarged to that; an
    ``overlap`` below ``minimum_overlap(reach)`` is raised to it, since a smaller one would blend
    inexact pixels. The grid's ``overlap`` and tile sizes say what was used. ``padding_multiple``:
    what the frame is padded to (default ``multiple``), the whole network's grid when tiles run on a
    finer one (split inference: see ``duplidog.core.apply``).
    """
    overlap = default_overlap(reach, multiple) if overlap is None else max(int(overlap), minimum_overlap(reach))
    tile = max(round_down(int(tile), multiple), smallest_tile(overlap, multiple))
    padding = frame_padding(height, width, padding_multiple or multiple, context)
    padded_h, padded_w = padding.padded_size(height, width)
    tile_h, tile_w = min(tile, padded_h), min(tile, padded_w)
    rows = axis_plan(height, padding.top, padded_h, tile_h, overlap, reach, multiple, scale)
    columns = axis_plan(width, padding.left, padded_w, tile_w, overlap, reach, multiple, scale)
    return TileGrid(padding, rows, columns, tile_h, tile_w, overlap, reach)
