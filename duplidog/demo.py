"""The built-in demo shot: a camera drifting over a procedural scene, with a few frames "fixed" by hand.

The plate is scene-linear half-float EXR (values above 1 in the highlights, as a real plate has). The
fix is what an artist would do on a few frames: a warm grade with more contrast, and dust spots on the
lens painted out. The dust sits on the lens, so it stays put while the scene moves under it -- the
network has to learn "remove small dark spots" and "apply the look", not memorise positions.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

FRAMES = list(range(1001, 1025))
KEYFRAMES = [1001, 1008, 1016, 1024]
WIDTH, HEIGHT = 320, 180
PLATE = "plate/demo_plate.%04d.exr"
FIXED = "fixed/demo_fixed.%04d.exr"


def _value_noise(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth multi-octave noise in [0, 1], shape (3, H, W): several colours of detail."""
    total = np.zeros((3, height, width), np.float32)
    amplitude, norm = 1.0, 0.0
    for cells in (4, 9, 20, 45, 100, 220):
        grid = torch.from_numpy(rng.random((1, 3, cells, cells * width // height + 1), dtype=np.float32))
        layer = F.interpolate(grid, size=(height, width), mode="bicubic", align_corners=False)[0].numpy()
        total += amplitude * layer
        norm += amplitude
        amplitude *= 0.75
    return total / norm


def scene(height: int, width: int, seed: int = 7) -> np.ndarray:
    """A large scene-linear canvas (H, W, 3): textured ground, soft shapes and a few bright highlights."""
    rng = np.random.default_rng(seed)
    noise = _value_noise(height, width, rng)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    stripes = 0.5 + 0.5 * np.sin(xx / 5.0 + 6.0 * noise[0]) * np.sin(yy / 8.0 + 4.0 * noise[1])
    base = np.stack(
        [0.05 + 0.5 * noise[0] * stripes, 0.06 + 0.45 * noise[1], 0.04 + 0.35 * noise[2] * (1.2 - stripes)], -1
    )
    for _ in range(12):  # highlights well above 1.0: the pipeline must keep them
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(3, 9)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        base += blob[..., None] * rng.uniform(2.0, 8.0) * np.array([1.0, 0.9, 0.7], np.float32)
    return base.astype(np.float32)


def dust(height: int, width: int, seed: int = 11) -> np.ndarray:
    """Lens dust: small soft dark spots, fixed in frame; a multiplier (H, W, 1) in (0, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    transmission = np.ones((height, width), np.float32)
    for _ in range(max(4, width * height // 4000)):
        cy, cx, r = rng.uniform(4, height - 4), rng.uniform(4, width - 4), rng.uniform(1.0, 2.2)
        transmission *= 1 - 0.75 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    return transmission[..., None]


def grade(linear: np.ndarray) -> np.ndarray:
    """The artist's look: warmer, a little more contrast around mid-grey, in scene-linear."""
    warm = linear * np.array([1.3, 1.0, 0.7], np.float32)
    pivot = 0.18
    return (pivot * np.power(np.maximum(warm, 0) / pivot, 1.25)).astype(np.float32)


def frame_offset(frame: int) -> tuple[float, float]:
    """The camera move: a slow drift with a slight ease, in pixels."""
    t = frame - FRAMES[0]
    return 2.5 * t + 6 * math.sin(t / 5.0), 1.2 * t


def render(frame: int, canvas: np.ndarray, width: int, height: int) -> np.ndarray:
    """The plate at one frame: the canvas window at the camera position (sub-pixel, bilinear)."""
    ox, oy = frame_offset(frame)
    x0, y0 = int(math.floor(ox)), int(math.floor(oy))
    fx, fy = ox - x0, oy - y0
    window = canvas[y0: y0 + height + 1, x0: x0 + width + 1]
    top = window[:-1, :-1] * (1 - fx) + window[:-1, 1:] * fx
    bottom = window[1:, :-1] * (1 - fx) + window[1:, 1:] * fx
    return top * (1 - fy) + bottom * fy


def write_demo(directory: str | Path, width: int = WIDTH, height: int = HEIGHT, frames: list[int] | None = None,
               keyframes: list[int] | None = None) -> Path:
    """Write the demo shot into ``directory`` and return the path of its shot YAML file."""
    from duplidog import imageio

    directory = Path(directory)
    frames = frames or FRAMES
    keyframes = keyframes or KEYFRAMES
    reach_x, reach_y = (int(max(frame_offset(f)[i] for f in frames)) + 2 for i in (0, 1))
    canvas = scene(height + reach_y + 2, width + reach_x + 2)
    spots = dust(height, width)
    like = imageio.new_like(directory / PLATE, width, height, attributes={"oiio:ColorSpace": "lin_rec709_scene"})
    for frame in frames:
        clean = render(frame, canvas, width, height)
        imageio.write_pixels(directory / PLATE.replace("%04d", f"{frame:04d}"), clean * spots, like)
        if frame in keyframes:
            imageio.write_pixels(directory / FIXED.replace("%04d", f"{frame:04d}"), grade(clean), like)
    shot_file = directory / "demo.yaml"
    shot_file.write_text(
        "# The duplidog demo shot: run with\n"
        f"#   snakemake --profile profiles/local --configfile {shot_file}\n"
        "shot: demo\n"
        f"source: {directory / PLATE}\n"
        f"target: {directory / FIXED}\n",
        encoding="utf-8",
    )
    return shot_file
