"""What one chunk's run is: the model, its frames, where they come from and go, and the settings.

Every step of the run (the reader, the working-space conversion, the compute stage, the writer) reads
this one object, so none of them takes a dozen arguments and all of them see the same values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from duplidog import colour
from duplidog.core.card import ModelCard
from duplidog.core.plan import Plan
from duplidog.sequence import FramePattern


@dataclass(frozen=True)
class ChannelRoute:
    """Which source channels feed the network, what its outputs are called, and what is copied through."""

    input: tuple[str, ...]
    output: tuple[str, ...]
    passthrough: tuple[str, ...]

    @property
    def read(self) -> list[str]:
        """Source channels to read: the network's, then the passthrough ones not already among them."""
        return list(self.input) + [c for c in self.passthrough if c not in self.input]

    @property
    def written(self) -> list[str]:
        return list(self.output) + list(self.passthrough)

    @property
    def passthrough_index(self) -> list[int]:
        """Where each passthrough channel is among the channels read."""
        read = self.read
        return [read.index(c) for c in self.passthrough]


@dataclass(frozen=True)
class Chunk:
    """One chunk's run, as ``run_frames`` resolved it from its arguments."""

    model: torch.nn.Module
    card: ModelCard
    space: colour.WorkingSpace  # the card's (``card.space()``), resolved once
    frames: list[int]
    source: FramePattern
    output: FramePattern
    route: ChannelRoute
    settings: dict  # the whole ``infer`` section
    device: torch.device
    read_ahead: int  # frames each queue holds
    nonfinite: str
    colorspace: str | None
    plate: Plan
    ends: tuple[int, int]  # the shot's first and last frame, where a temporal window mirrors
    temporal_frames: int  # neighbour frames on each side the network reads
