"""Self-ensemble: run the network on flipped and turned copies of its input and average the answers.

Training draws its tiles under all eight flips and quarter turns (``train.augment_dihedral``), so each
copy is an equally good view of the frame; the part of the error that depends on orientation differs
between them and averages out. For a matte that part is most of what is left: the one-pixel doubt
along the edge; for an upscale, the detail between the input's pixels that each copy guesses
differently (docs/quality.md has both). Every copy is a whole tile or frame under the same transform, so tiles stay exact.
"""

from __future__ import annotations

from typing import Callable

import torch

from duplidog.errors import DuplidogError

#: How many copies a setting runs: the identity first, then flips, then the turns between them.
TRANSFORMS = {1: (0,), 2: (0, 4), 4: (0, 2, 4, 6), 8: (0, 1, 2, 3, 4, 5, 6, 7)}
#: ``infer.ensemble: auto`` for a network whose outputs are channels its input lacks (a matte) or that
#: upscales, and for others.
AUTO_MATTE_OR_UPSCALE, AUTO_OTHER = 8, 1


def transform(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th of the eight: ``k // 4`` mirrors left-right, then ``k % 4`` quarter turns."""
    if k >= 4:
        x = x.flip(-1)
    return torch.rot90(x, k % 4, (-2, -1)) if k % 4 else x


def untransform(x: torch.Tensor, k: int) -> torch.Tensor:
    if k % 4:
        x = torch.rot90(x, -(k % 4), (-2, -1))
    return x.flip(-1) if k >= 4 else x


def resolve_ensemble(setting: str | int, in_channels: int, out_channels: int, scale: int = 1) -> int:
    """The number of copies for ``infer.ensemble``; ``auto`` averages eight for a matte or an upscale
    (``scale`` above 1), else runs one."""
    if setting == "auto":
        return AUTO_MATTE_OR_UPSCALE if out_channels != in_channels or int(scale) > 1 else AUTO_OTHER
    if isinstance(setting, bool) or setting not in TRANSFORMS:
        raise DuplidogError(f"infer.ensemble: must be 'auto' or one of {sorted(TRANSFORMS)}, got {setting!r}")
    return int(setting)


def model_copies(setting: str | int, model, in_channels: int) -> int:
    """``resolve_ensemble`` for ``model`` on an input of ``in_channels`` (a network that does not say
    its outputs is taken as colour to colour; a temporal network's input stacks 2N + 1 frames, and what
    counts is one frame's channels)."""
    in_channels //= 2 * int(getattr(model, "temporal_frames", 0)) + 1
    return resolve_ensemble(setting, in_channels, int(getattr(model, "out_channels", in_channels)),
                            int(getattr(model, "scale", 1)))


def run_ensemble(network: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, count: int) -> torch.Tensor:
    """The mean of ``network`` over ``count`` transformed copies of ``x`` (N, C, H, W), mapped back."""
    total = None
    for k in TRANSFORMS[count]:
        out = untransform(network(transform(x, k)), k).float()
        total = out if total is None else total + out
    return total if count == 1 else total / count
