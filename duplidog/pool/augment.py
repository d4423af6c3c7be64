"""Augmented tiles: more variety from a few keyframes, without teaching the network anything false.

A shot's frames differ from its keyframes by camera moves, exposure drift and grain, so some tiles are
varied in those ways: flips and 90 degree turns, a small rotation and a scale (the camera), an exposure
change in stops and a per-channel gain (the light), additive grain (the film or sensor).

What keeps it honest:

* Geometric changes are applied to source and target together (one warp over their stacked
  channels), so the pair still shows the same transformation. Rotation and scale crop a window large
  enough that the warped tile has no empty corners; where the frame cannot give such a window the tile
  keeps only its flips and turns.
* Resampling happens on scene values, before the working-space encode, as a camera would see them.
* Exposure and gain multiply scene values (scene-linear: a real exposure change) before encoding. They
  are off by default (``colour_to: none``): a grade, a look or a key is a function of the very values
  they would change, so no change to the target keeps such a pair true (grade(2x) is not 2 grade(x));
  on the quality shots they cost a colour look (docs/quality.md). With ``colour_to: both`` the target
  channels that the source also has get the same factors (a paint fix follows the light), with
  ``colour_to: source`` only the source changes (the network learns to ignore such changes: right for
  the roto of an object). Target channels the source lacks (a matte) are never recoloured.
* A temporal tile (the keyframe's channels, then its neighbour frames') is cut, warped, flipped and
  turned as one stack, and every frame gets the same exposure and gain; grain is drawn for each frame.
* Grain is added in the working space, where code values are roughly perceptual. It follows
  ``colour_to`` too: with ``both`` the same grain is added to matching target channels, so the network
  learns to keep grain rather than to remove it.

Per tile, on numpy arrays of at most a few hundred pixels a side: cheap next to reading the frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np


@dataclass(frozen=True)
class TileAugmentation:
    """The random choices for one augmented tile."""

    flip_x: bool
    flip_y: bool
    turns: int  # quarter turns counter-clockwise
    angle_degrees: float
    scale: float  # > 1 magnifies
    exposure_stops: float
    gains: tuple[float, ...]  # one per source channel
    grain_sigma: float

    @property
    def warps(self) -> bool:
        return self.angle_degrees != 0.0 or self.scale != 1.0


def draw_augmentation(rng: np.random.Generator, settings: dict, source_channels: int) -> TileAugmentation:
    """Draw one tile's augmentation from the pool settings (a setting of 0 turns that change off, and
    ``colour_to: none`` all of exposure, gain and grain)."""
    rotate = float(settings["rotate_degrees"])
    scale_min, scale_max = float(settings["scale_min"]), float(settings["scale_max"])
    recolour = settings.get("colour_to", "none") != "none"
    stops = float(settings["exposure_stops"]) if recolour else 0.0
    gain = float(settings["colour_gain"]) if recolour else 0.0
    grain = float(settings["grain"]) if recolour else 0.0
    return TileAugmentation(
        flip_x=bool(settings["flips"]) and bool(rng.random() < 0.5),
        flip_y=bool(settings["flips"]) and bool(rng.random() < 0.5),
        turns=int(rng.integers(0, 4)) if settings["turns"] else 0,
        angle_degrees=float(rng.uniform(-rotate, rotate)) if rotate > 0 else 0.0,
        scale=float(math.exp(rng.uniform(math.log(scale_min), math.log(scale_max))))
        if scale_max > scale_min
        else scale_min,
        exposure_stops=float(rng.uniform(-stops, stops)) if stops > 0 else 0.0,
        gains=tuple(float(g) for g in rng.uniform(1 - gain, 1 + gain, source_channels))
        if gain > 0
        else (1.0,) * source_channels,
        grain_sigma=float(rng.uniform(0, grain)) if grain > 0 else 0.0,
    )


def window_size(tile_size: int, angle_degrees: float, scale: float) -> int:
    """Side of the square window whose warp fills a ``tile_size`` tile: the rotated, rescaled tile's
    bounding box plus a pixel each side for bilinear interpolation."""
    angle = math.radians(angle_degrees)
    extent = tile_size * (abs(math.cos(angle)) + abs(math.sin(angle))) / scale
    return max(int(math.ceil(extent - 1e-9)) + 2, tile_size + 2)


def warp(window: np.ndarray, tile_size: int, angle_degrees: float, scale: float) -> np.ndarray:
    """Rotate by ``angle_degrees`` and scale by ``scale`` about the window centre; (S, S, C) -> (T, T, C).

    Bilinear. Output pixel centres map inside the window (``window_size`` makes sure), so no corner is
    filled by padding; with angle 0 and scale 1 it is an exact crop.
    """
    size = window.shape[0]
    angle = math.radians(angle_degrees)
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    offsets = np.arange(tile_size, dtype=np.float64) + 0.5 - tile_size / 2
    oy, ox = np.meshgrid(offsets, offsets, indexing="ij")
    centre = size / 2 - 0.5  # pixel-centre coordinates of the window's centre
    ys = np.clip(centre + cos * oy - sin * ox, 0, size - 1)
    xs = np.clip(centre + sin * oy + cos * ox, 0, size - 1)
    y0 = np.minimum(np.floor(ys).astype(np.int64), size - 2)
    x0 = np.minimum(np.floor(xs).astype(np.int64), size - 2)
    fy = (ys - y0)[:, :, None].astype(np.float32)
    fx = (xs - x0)[:, :, None].astype(np.float32)
    top = window[y0, x0] * (1 - fx) + window[y0, x0 + 1] * fx
    bottom = window[y0 + 1, x0] * (1 - fx) + window[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def shared_channels(source_channels: Sequence[str], target_channels: Sequence[str]) -> list[tuple[int, int]]:
    """(source index, target index) of channels both have: they receive the same colour and grain."""
    return [(source_channels.index(n), t) for t, n in enumerate(target_channels) if n in source_channels]


def apply_colour(
    source: np.ndarray,
    target: np.ndarray,
    augmentation: TileAugmentation,
    pairs: list[tuple[int, int]],
    colour_to: str,
) -> None:
    """Exposure and per-channel gain on scene values (H, W, C), in place."""
    factors = np.asarray(augmentation.gains, dtype=np.float32) * np.float32(2.0**augmentation.exposure_stops)
    if source.shape[2] != factors.shape[0]:  # a temporal tile: every frame of it in the same light
        source *= np.tile(factors, source.shape[2] // factors.shape[0])
    else:
        source *= factors
    if colour_to == "both":
        for s, t in pairs:
            target[:, :, t] *= factors[s]


def add_grain(
    source: np.ndarray,
    target: np.ndarray,
    augmentation: TileAugmentation,
    pairs: list[tuple[int, int]],
    colour_to: str,
    rng: np.random.Generator,
) -> None:
    """Additive Gaussian grain on working-space values (H, W, C), in place."""
    if augmentation.grain_sigma <= 0:
        return
    grain = rng.normal(0.0, augmentation.grain_sigma, source.shape).astype(np.float32)
    source += grain
    if colour_to == "both":
        factor = target.shape[0] // source.shape[0]  # an upscaling shot's target: each grain s x s pixels
        if factor > 1:
            grain = grain.repeat(factor, axis=0).repeat(factor, axis=1)
        for s, t in pairs:
            target[:, :, t] += grain[:, :, s]


def orient(tile: np.ndarray, augmentation: TileAugmentation) -> np.ndarray:
    """Flips and quarter turns of an (H, W, C) tile: exact pixel permutations."""
    if augmentation.flip_x:
        tile = tile[:, ::-1]
    if augmentation.flip_y:
        tile = tile[::-1]
    if augmentation.turns:
        tile = np.rot90(tile, augmentation.turns, axes=(0, 1))
    return tile


def augmented_tile(
    source_frame: np.ndarray,
    target_frame: np.ndarray,
    top: int,
    left: int,
    tile_size: int,
    edge_margin: int,
    augmentation: TileAugmentation,
    pairs: list[tuple[int, int]],
    colour_to: str,
    encoders: tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]],
    rng: np.random.Generator,
    scale: int = 1,
) -> tuple[np.ndarray, np.ndarray, TileAugmentation]:
    """One augmented (source, target) pair of (T, T, C) working-space tiles from scene-value frames.

    The window is centred on the tile at (top, left) and moved inward if it would leave the frame (or
    the ``edge_margin`` strip); a frame too small for the window drops rotation and scale. Returns the
    augmentation actually applied. ``scale``: an upscaling shot's target frame and tile are this many
    times the source's size; the target is warped by itself over the same area (``scale`` times its
    window and tile), so both show the same picture.
    """
    s = scale
    height, width = source_frame.shape[:2]
    cin = source_frame.shape[2]
    if augmentation.warps:
        size = window_size(tile_size, augmentation.angle_degrees, augmentation.scale)
        if size > min(height, width) - 2 * edge_margin:
            augmentation = TileAugmentation(**{**augmentation.__dict__, "angle_degrees": 0.0, "scale": 1.0})
    if augmentation.warps:
        corner_y = top + (tile_size - size) // 2
        corner_x = left + (tile_size - size) // 2
        corner_y = int(np.clip(corner_y, edge_margin, height - edge_margin - size))
        corner_x = int(np.clip(corner_x, edge_margin, width - edge_margin - size))
        if s == 1:  # one warp over the stacked channels
            stacked = np.concatenate(
                [
                    source_frame[corner_y : corner_y + size, corner_x : corner_x + size],
                    target_frame[corner_y : corner_y + size, corner_x : corner_x + size],
                ],
                axis=2,
            )
            warped = warp(stacked, tile_size, augmentation.angle_degrees, augmentation.scale)
            source, target = warped[:, :, :cin], warped[:, :, cin:]
        else:  # the same rotation and zoom about the same centre, at each image's own size
            source = warp(source_frame[corner_y : corner_y + size, corner_x : corner_x + size], tile_size,
                          augmentation.angle_degrees, augmentation.scale)
            target = warp(target_frame[s * corner_y : s * (corner_y + size), s * corner_x : s * (corner_x + size)],
                          s * tile_size, augmentation.angle_degrees, augmentation.scale)
    else:
        source = source_frame[top : top + tile_size, left : left + tile_size].copy()
        target = target_frame[s * top : s * (top + tile_size), s * left : s * (left + tile_size)].copy()
    apply_colour(source, target, augmentation, pairs, colour_to)
    source, target = encoders[0](source), encoders[1](target)
    source = np.array(source, dtype=np.float32)
    target = np.array(target, dtype=np.float32)
    add_grain(source, target, augmentation, pairs, colour_to, rng)
    return orient(source, augmentation), orient(target, augmentation), augmentation
