"""Bench shots for upscaling: a photograph filmed at full size is the truth, its downscale the plate.

``upscale2`` and ``upscale3`` film a bundled photograph (the astronaut: fabric, lettering, a flag, hair)
with the slow camera move of ``duplidog.quality.photos`` at the truth's size, at about one photo pixel
per truth pixel (so the truth holds the photo's own detail, not an enlargement's), then shrink every frame 2 or 3 times with
OpenImageIO's resize (lanczos3, its default for shrinking) into the plate. The keyframes are the truth
on a few frames, so duplidog learns ``model.scale`` times the plate's size from them and is scored on
the frames it never saw against the truth, beside the plate enlarged bicubically (OpenImageIO's resize
with the Catmull-Rom cubic), which is what "doing nothing" means for an upscale. No grain: the task is
detail, not noise. 16-bit TIFF, display-referred.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

#: shot -> scale
UPSCALE_SHOTS = {"upscale2": 2, "upscale3": 3}
DOWNSCALE_FILTER = "lanczos3"
BICUBIC_FILTER = "catmull-rom"


def resize(pixels: np.ndarray, width: int, height: int, filtername: str) -> np.ndarray:
    """(H, W, C) float32 resized to ``width`` x ``height`` by OpenImageIO (display windows mapped onto each other)."""
    import OpenImageIO as oiio

    source = oiio.ImageBuf(oiio.ImageSpec(pixels.shape[1], pixels.shape[0], pixels.shape[2], "float"))
    source.set_pixels(oiio.ROI(), np.ascontiguousarray(pixels, dtype=np.float32))
    out = oiio.ImageBuf(oiio.ImageSpec(width, height, pixels.shape[2], "float"))
    if not oiio.ImageBufAlgo.resize(out, source, filtername=filtername):
        raise RuntimeError(f"OpenImageIO resize ({filtername}) failed: {out.geterror()}")
    return np.asarray(out.get_pixels(oiio.FLOAT), dtype=np.float32).reshape(height, width, pixels.shape[2])


def bicubic(plate: np.ndarray, scale: int) -> np.ndarray:
    """The plate enlarged ``scale`` times bicubically (OpenImageIO's resize, Catmull-Rom)."""
    return resize(plate, plate.shape[1] * scale, plate.shape[0] * scale, BICUBIC_FILTER)


def write_upscale_shot(kind: str, directory: Path, size: tuple[int, int] = (480, 270), frames: int = 12,
                       seed: int = 0) -> dict:
    """Write upscale shot ``kind`` into ``directory`` like ``photos.write_photo_shot``: ``size`` is the
    truth's (W, H), rounded down to a multiple of the scale; the plate is that divided by the scale.
    shot.json adds "scale"; the shot config sets ``model.scale``."""
    from duplidog import imageio
    from duplidog.atomic import atomic_path, atomic_write_text
    from duplidog.quality import photos

    scale = UPSCALE_SHOTS[kind]
    recipe = photos.Recipe("upscale", "astronaut", (0.5, 0.45), 500)
    plate_w, plate_h = int(size[0]) // scale, int(size[1]) // scale
    if plate_w < 8 or plate_h < 8 or frames < 2:
        raise ValueError(f"upscale shot {kind!r}: need a plate of at least 8x8 pixels and 2 frames")
    width, height = plate_w * scale, plate_h * scale
    directory = Path(directory)
    rng = photos._unit_rng(seed, kind)
    camera = photos.Camera(photos.Move.draw(rng, width), frames, width, height)
    backdrop = photos.Backdrop(recipe, width, camera.canvas, lambda rgb: np.asarray(rgb, np.float32))
    ext = "tif"
    like_truth = photos._like(ext, width, height, directory)
    like_plate = photos._like(ext, plate_w, plate_h, directory)
    first = photos.FIRST_FRAME
    keys = photos.keyframes(first, frames)
    plates, truths = {}, {}
    for index in range(frames):
        frame = first + index
        truth = np.clip(backdrop.sample(camera.coords(index)), 0, 1)
        plate = np.clip(resize(truth, plate_w, plate_h, DOWNSCALE_FILTER), 0, 1)
        plate_path = directory / f"plate/plate.{frame:04d}.{ext}"
        truth_path = directory / f"truth/truth.{frame:04d}.{ext}"
        imageio.write_pixels(plate_path, plate, like_plate)
        imageio.write_pixels(truth_path, truth, like_truth)
        if frame in keys:
            with atomic_path(directory / f"fixed/fixed.{frame:04d}.{ext}") as tmp:
                shutil.copyfile(truth_path, tmp)
        plates[frame] = imageio.read_pixels(plate_path)
        truths[frame] = imageio.read_pixels(truth_path)
    meta = {"ext": ext, "encoding": "srgb", "task": "upscale", "first": first, "last": first + frames - 1,
            "keyframes": keys, "size": [width, height], "plate_size": [plate_w, plate_h], "scale": scale,
            "kind": kind, "photo": recipe.photo}
    atomic_write_text(directory / "shot.json", json.dumps(meta, indent=2) + "\n")
    config = {"shot": kind, "source": str(directory / f"plate/plate.%04d.{ext}"),
              "target": str(directory / f"fixed/fixed.%04d.{ext}"), "output": str(directory / f"out/out.%04d.{ext}"),
              "model": {"scale": scale},
              # The target tiles are s times the source's: source tiles of 64 px give 128-192 px targets
              # (the default 128 px tiles would not fit a 160x90 plate at all).
              "pool": {"tile_size": 64, "border": 8}}
    return {"config": config, "meta": meta, "plates": plates, "truth": truths}
