"""Source frames in the network's working space, as the tensors it reads.

Each frame's network channels are converted from the OCIO space they are in to the model's working
space (the colour transform stored in the model card, so training and inference agree) and encoded. A
temporal model's frame is its window's frames stacked as channels (``duplidog.temporal``); each frame
of the window is converted once while any window reads it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from duplidog import colour, imageio, temporal
from duplidog.core.plan import Plan
from duplidog.infer.chunk import Chunk


def frame_space(info: imageio.ImageInfo, plate: Plan, colorspace: Any = None) -> str | None:
    """The OCIO space a source frame is in: its ``oiio:ColorSpace`` tag when the active config knows
    it, else the plate's at ingest (``plate_colorspace``), else the shot's working space; None when
    nothing names one."""
    return (colour.file_space(info) or plate.plate_colorspace
            or colour.ocio_name(plate.colorspace or colorspace))


def as_image(pixels: np.ndarray) -> torch.Tensor:
    """(H, W, C) pixels as a (1, C, H, W) tensor."""
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))[None]


class WorkingFrames:
    """One chunk's frames in the working space, with a temporal model's converted frames cached."""

    def __init__(self, chunk: Chunk):
        self.chunk = chunk
        # A temporal model's frames in the working space, each converted once while a window reads it.
        self._pending: dict[int, tuple[imageio.ImageInfo, np.ndarray]] = {}
        self._converted = temporal.FrameCache(lambda number: self.pixels(*self._pending.pop(number)))

    def pixels(self, info: imageio.ImageInfo, network_input: np.ndarray) -> tuple[str | None, np.ndarray]:
        """The frame's OCIO space and its network channels in the working space, (H, W, C)."""
        chunk = self.chunk
        # The frame's OCIO space (its tag, else the plate's at ingest, else the shot's) against the
        # model's: the same, or converted when ingest.convert_colorspace allows it, else refused.
        in_space = frame_space(info, chunk.plate, chunk.colorspace) if chunk.space.ocio_name else None
        network_input = colour.to_working(network_input, chunk.route.input, in_space, chunk.space,
                                          bool(chunk.plate.convert_colorspace), info.path)
        return in_space, colour.encode(network_input, chunk.space, chunk.route.input)

    def stacked_image(self, frame: int, info: imageio.ImageInfo, network_input: np.ndarray,
                      window: dict) -> tuple[str | None, torch.Tensor]:
        """The frame's OCIO space and its window's network channels, stacked, as a working-space tensor."""
        n = self.chunk.temporal_frames
        if n == 0:
            in_space, pixels = self.pixels(info, network_input)
            return in_space, as_image(pixels)
        self._pending.update({frame: (info, network_input), **window})
        stacked = temporal.stacked_frame(frame, n, self.chunk.ends, lambda number: self._converted.get(number)[1])
        in_space = self._converted.get(frame)[0]
        self._converted.forget_before(frame - n)
        self._pending.clear()
        return in_space, as_image(stacked)

    def read_image(self, frame: int) -> torch.Tensor:
        """``frame``'s stacked working-space tensor, read from the plate here (not through the reader)."""
        chunk = self.chunk

        def working(number: int) -> np.ndarray:
            info = imageio.read_info(chunk.source.path(number))
            pixels = imageio.read_pixels(info.path, chunk.route.input)
            return self.pixels(info, imageio.check_finite(pixels, info.path, chunk.nonfinite))[1]

        return as_image(temporal.stacked_frame(frame, chunk.temporal_frames, chunk.ends, working))
