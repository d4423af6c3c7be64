"""Small shots written with OpenImageIO for the tests: plates, keyframes and a shot file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import OpenImageIO as oiio
import yaml


def write_frame(path: Path, pixels: np.ndarray, pixel_type: str = "half", channels=("R", "G", "B")) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width, nchannels = pixels.shape
    spec = oiio.ImageSpec(width, height, nchannels, pixel_type)
    spec.channelnames = tuple(channels)
    out = oiio.ImageOutput.create(str(path))
    assert out is not None and out.open(str(path), spec), oiio.geterror()
    assert out.write_image(np.ascontiguousarray(pixels, np.float32)), out.geterror()
    out.close()
    return path


def make_shot(root: Path, frames=range(1001, 1009), keyframes=(1001, 1004, 1008), size=(48, 40),
              name: str = "t1", channels=("R", "G", "B"), extra: dict | None = None) -> Path:
    """A plate of a drifting gradient-and-noise pattern and graded keyframes; returns the shot file."""
    width, height = size
    rng = np.random.default_rng(3)
    canvas = rng.random((height + 40, width + 40, len(channels)), dtype=np.float32) * 1.5
    for frame in frames:
        offset = frame - frames[0]
        plate = canvas[offset % 20: offset % 20 + height, offset: offset + width]
        write_frame(root / "plate" / f"plate.{frame:04d}.exr", plate, channels=channels)
        if frame in keyframes:
            write_frame(root / "fixed" / f"fixed.{frame:04d}.exr", plate * 0.8 + 0.05, channels=channels)
    shot = {"shot": name, "source": str(root / "plate/plate.%04d.exr"),
            "target": str(root / "fixed/fixed.####.exr"), **(extra or {})}
    shot_file = root / f"{name}.yaml"
    shot_file.write_text(yaml.safe_dump(shot), encoding="utf-8")
    return shot_file
