"""Neighbour frames: which plate frames a network with ``model.temporal_frames`` N reads for frame t.

A temporal network sees frames t-N..t+N and predicts frame t. Their pixels are stacked as channels:
the centre frame's channels first, then t-N, ..., t-1, t+1, ..., t+N, each with the plate's network
channels in the same order, so everything that reads "the plate's channels" (the colour path, the
residual, a matte's guide, the losses, the contact sheets) reads the first C channels and keeps
working on frame t itself; only the network's spatial branch reads the rest.

At the ends of the shot the frames are mirrored, the frame itself not repeated: at the first frame F,
frame F-1 is F+1, and at the last frame L, frame L+1 is L-1 (the folding of ``core.mirror``'s mirror
padding, in time). The shot's ends are the first and last of its frames and keyframes (the plan's
``ends``), so the pool, validation and every inference chunk pick the same neighbours for a frame, and a chunk
reads the frames just outside its own range from the plate.

This module is the one owner of that rule (core: it imports no stage); it knows frame numbers and
arrays only.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Sequence, Tuple, TypeVar

import numpy as np

#: The largest ``model.temporal_frames`` the schema accepts.
MAX_TEMPORAL_FRAMES = 3

T = TypeVar("T")


def frame_count(temporal_frames: int) -> int:
    """How many frames a network with ``temporal_frames`` N reads: 2N + 1."""
    return 2 * int(temporal_frames) + 1


def mirrored(frame: int, first: int, last: int) -> int:
    """``frame`` folded back into [first, last] at its ends (the end frame itself not repeated)."""
    if last <= first:
        return first
    period = 2 * (last - first)
    folded = (frame - first) % period
    return first + (folded if folded <= last - first else period - folded)


def window(frame: int, temporal_frames: int, first: int, last: int) -> List[int]:
    """The frames stacked for ``frame``, in channel order: the frame itself, then t-N..t-1, t+1..t+N,
    mirrored into the shot's [first, last]. ``temporal_frames`` 0: just the frame."""
    n = int(temporal_frames)
    offsets = list(range(-n, 0)) + list(range(1, n + 1))
    return [int(frame)] + [mirrored(int(frame) + offset, first, last) for offset in offsets]


def needed_frames(frames: Iterable[int], temporal_frames: int, first: int, last: int) -> List[int]:
    """Every frame the given frames' windows read, sorted (the frames themselves included)."""
    return sorted({f for frame in frames for f in window(frame, temporal_frames, first, last)})


def frame_labels(temporal_frames: int) -> List[str]:
    """The window's frames as people name them, in channel order: ``t``, then ``t-N``..``t-1``, ``t+1``..``t+N``."""
    n = int(temporal_frames)
    return ["t"] + [f"t{offset:+d}" for offset in list(range(-n, 0)) + list(range(1, n + 1))]


def stacked_names(names: Sequence[str], temporal_frames: int) -> List[str]:
    """Channel names of a stacked input: ``names`` once per frame of the window (what the working
    space's encode and decode read: each frame's channels are shaped like the plate's)."""
    return list(names) * frame_count(temporal_frames)


def stack(pixels: Sequence[np.ndarray]) -> np.ndarray:
    """(H, W, C) frames of a window, in window order -> (H, W, C * frames); one frame is returned as is."""
    if len(pixels) == 1:
        return pixels[0]
    return np.concatenate(list(pixels), axis=2)


def stacked_frame(frame: int, temporal_frames: int, ends: Tuple[int, int],
                  read: Callable[[int], np.ndarray]) -> np.ndarray:
    """Frame ``frame`` with its window stacked: ``read(number)`` gives each frame's (H, W, C) pixels (the
    caller decides how: from the plate, from a cache), in window order. The one way the pool, validation
    and inference build a temporal network's input."""
    pixels = [read(number) for number in window(frame, temporal_frames, *ends)]
    shapes = {p.shape for p in pixels}
    if len(shapes) > 1:
        raise ValueError(f"frame {frame}'s window {window(frame, temporal_frames, *ends)} has frames of "
                         f"different shapes {sorted(shapes)}")
    return stack(pixels)


def centre(x, channels: int):
    """The centre frame's ``channels`` of a stacked (N, C*frames, H, W) tensor or array (itself when
    it has no more)."""
    return x if x.shape[1] == channels else x[:, :channels]


class FrameCache:
    """Decoded frames keyed by frame number, each made once by ``load`` while it is needed.

    A sliding window over a chunk's frames asks for every frame up to 2N + 1 times; ``forget_before``
    drops the frames no later window reads, so the cache holds a window's worth of frames.
    """

    def __init__(self, load: Callable[[int], T]):
        self._load = load
        self._frames: Dict[int, T] = {}
        self.loads = 0

    def get(self, frame: int) -> T:
        frame = int(frame)
        if frame not in self._frames:
            self._frames[frame] = self._load(frame)
            self.loads += 1
        return self._frames[frame]

    def forget_before(self, frame: int) -> None:
        for key in [k for k in self._frames if k < frame]:
            del self._frames[key]

    def __len__(self) -> int:
        return len(self._frames)
