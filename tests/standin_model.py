"""A tiny pyramid network with duplidog's model interface, for inference tests that must run in seconds.

Two 2x average-pool levels and bilinear upsampling make the pooling grid matter (size_multiple 4), so
a tiler that puts tile origins off the grid, or blends pixels nearer than ``reach`` to a tile edge,
fails the exactness tests. ``reach`` is measured from gradients rather than worked out by hand.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TinyPyramid(nn.Module):
    size_multiple = 4

    def __init__(self, in_channels: int = 3, out_channels: int = 3, width: int = 6, seed: int = 0):
        super().__init__()
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        self.head = nn.Conv2d(in_channels, width, 3, padding=1)
        self.level1 = nn.Conv2d(width, width, 3, padding=1)
        self.level2 = nn.Conv2d(width, width, 3, padding=1)
        self.tail = nn.Conv2d(width, out_channels, 3, padding=1)
        torch.random.set_rng_state(generator_state)
        self.reach = measure_reach(self, in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f0 = F.gelu(self.head(x))
        f1 = F.gelu(self.level1(F.avg_pool2d(f0, 2)))
        f2 = F.gelu(self.level2(F.avg_pool2d(f1, 2)))
        f1 = f1 + F.interpolate(f2, scale_factor=2, mode="bilinear", align_corners=False)
        f0 = f0 + F.interpolate(f1, scale_factor=2, mode="bilinear", align_corners=False)
        return self.tail(f0) + x[:, : self.tail.out_channels] if x.shape[1] >= self.tail.out_channels else self.tail(f0)


def measure_reach(model: nn.Module, channels: int, side: int = 96) -> int:
    """The farthest input pixel (Chebyshev distance) any output pixel's gradient touches, over every
    position of the pooling grid -- the reach the tiler must respect."""
    multiple = getattr(model, "size_multiple", 1)
    reach = 0
    x = torch.randn(1, channels, side, side, dtype=torch.float64, requires_grad=True)
    model64 = model.double()
    for dy in range(multiple):
        for dx in range(multiple):
            cy, cx = side // 2 + dy, side // 2 + dx
            (grad,) = torch.autograd.grad(model64(x)[0, :, cy, cx].sum(), x)
            ys, xs = torch.nonzero(grad.abs().sum(1)[0], as_tuple=True)
            reach = max(reach, int((ys - cy).abs().max()), int((xs - cx).abs().max()))
    model.float()
    return reach
