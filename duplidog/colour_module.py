"""The working space in torch: the shaper on tensors, and as a scriptable module for exported models.

``duplidog.colour`` owns the working space and its numpy path; this is the same transform for tensors
(N, C, H, W), kept apart so that the stages which never run a network do not import torch. Plain tensor
ops only (``torch.asinh``, ``torch.sinh``), so TorchScript and ONNX export take them as they are. Half
and bfloat16 tensors are shaped in float32 (x / s overflows half above 3276) and cast back.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from duplidog.colour import SpaceLike, WorkingSpace, as_space, shaped_channels


def encode_tensor(x: torch.Tensor, softness: float) -> torch.Tensor:
    """asinh shaper on a tensor, scene -> working (plain torch ops, TorchScript friendly)."""
    dtype = x.dtype
    xf = x.float() if dtype in (torch.float16, torch.bfloat16) else x
    y = torch.asinh(xf / softness) / math.asinh(1.0 / softness)
    return y.to(dtype)


def decode_tensor(y: torch.Tensor, softness: float) -> torch.Tensor:
    """Inverse of ``encode_tensor``, working -> scene."""
    dtype = y.dtype
    yf = y.float() if dtype in (torch.float16, torch.bfloat16) else y
    x = softness * torch.sinh(yf * math.asinh(1.0 / softness))
    return x.to(dtype)


def _keep_unshaped(result: torch.Tensor, original: torch.Tensor, shaped: list[bool] | None) -> torch.Tensor:
    """``result`` (N, C, H, W) with the channels ``shaped`` says are not shaped put back as they were."""
    if shaped is None:
        return result
    mask = torch.tensor(shaped, device=result.device).view(-1, 1, 1)
    return torch.where(mask, result, original.to(result.dtype))


def encode_tensors(x: torch.Tensor, space: WorkingSpace, channels: Sequence[str] | None = None) -> torch.Tensor:
    """``colour.encode`` for tensors (N, C, H, W)."""
    if space.is_identity:
        return x
    return _keep_unshaped(encode_tensor(x, space.softness), x, shaped_channels(space, channels))


def decode_tensors(y: torch.Tensor, space: WorkingSpace, channels: Sequence[str] | None = None) -> torch.Tensor:
    """``colour.decode`` for tensors (N, C, H, W)."""
    if space.is_identity:
        return y
    return _keep_unshaped(decode_tensor(y, space.softness), y, shaped_channels(space, channels))


class WorkingSpaceModule(torch.nn.Module):
    """``encode`` (``direction='encode'``) or ``decode`` as a scriptable module, for exported models
    that take and return scene values (Nuke's CatFileCreator, Flame)."""

    def __init__(self, space: SpaceLike, direction: str, channels: Sequence[str] | None = None) -> None:
        super().__init__()
        if direction not in ("encode", "decode"):
            raise ValueError(f"direction must be 'encode' or 'decode', not {direction!r}")
        ws = as_space(space)
        self.identity: bool = ws.is_identity
        self.softness: float = float(ws.softness)
        self.encoding: bool = direction == "encode"
        shaped = shaped_channels(ws, channels)
        self.every_channel: bool = shaped is None
        self.register_buffer("shaped", torch.tensor(shaped or [True], dtype=torch.bool).view(1, -1, 1, 1),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.identity:
            return x
        if self.encoding:
            y = encode_tensor(x, self.softness)
        else:
            y = decode_tensor(x, self.softness)
        if self.every_channel:
            return y
        return torch.where(self.shaped, y, x.to(y.dtype))
