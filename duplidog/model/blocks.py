"""The parts the scale-recurrent network is built from, each strictly local.

Every block here computes each output pixel from a fixed neighbourhood of input pixels and nothing
else: no normalisation over the image (Group/InstanceNorm), no global or adaptive pooling, no
attention over the image. That is what lets a tile of a frame give the same values as the whole frame
away from its edge, so inference can tile without seams and training on small crops carries over to
full frames. The one normalisation allowed is batch normalisation (``norm="batch"``): in training it
normalises over the batch of training tiles, but a network in eval mode -- validation, inference,
exports -- applies its running statistics, a fixed scale and offset per channel that no input changes.
Every block's ``forward`` takes the pyramid ``level`` it runs at, for the statistics of that level's own.

Each block states its ``radius``: how far, in pixels of the grid it runs on, an input pixel can
still change an output pixel. The network adds these up into its ``reach``.

References:
    Tao et al., "Scale-recurrent Network for Deep Image Deblurring", CVPR 2018 (ResBlock without
    normalisation, recurrent cell at the bottleneck, bilinear resizing between scales).
    Li et al., "Multi-scale Residual Network for Image Super-Resolution", ECCV 2018 (MSRB).
    Ioffe and Szegedy, "Batch Normalization", ICML 2015.
    Ballas et al., "Delving Deeper into Convolutional Networks for Learning Video Representations",
    ICLR 2016 (the convolutional GRU).
"""

from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

# How far resampling moves information, in pixels of the finer grid. The grids are nested: a pixel of
# the coarse grid covers exactly 2x2 pixels of the fine grid (2x2 average pooling), so distances are
# measured between pixel centres on aligned grids.
DOWNSAMPLE_RADIUS = 0.5  # a 2x2 average: the fine pixels are half a fine pixel from the coarse centre
UPSAMPLE_RADIUS = 1.5  # bilinear x2: the two nearest coarse centres are 0.5 and 1.5 fine pixels away

NORMS = ("none", "batch")
BATCH_NORM_MOMENTUM, BATCH_NORM_EPS = 0.1, 1e-5  # BatchNorm2d's defaults


class LevelBatchNorm(nn.Module):
    """Batch normalisation whose statistics are each pyramid level's own, with one scale and offset for all.

    The levels share their weights, but not their features' statistics: a coarser level sees an image
    averaged down, with less grain and texture. One set of running statistics for all of them made eval
    mode differ from training (docs/quality.md); each level keeps its own, and the learnt scale and offset
    stay shared like every other weight.
    """

    def __init__(self, channels: int, levels: int):
        super().__init__()
        self.statistics = nn.ModuleList([nn.BatchNorm2d(channels, BATCH_NORM_EPS, BATCH_NORM_MOMENTUM, affine=False)
                                         for _ in range(levels)])
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.momentum, self.eps = BATCH_NORM_MOMENTUM, BATCH_NORM_EPS  # attributes, which TorchScript reads

    def forward(self, x: torch.Tensor, level: int) -> torch.Tensor:
        for index, statistics in enumerate(self.statistics):  # not an index: TorchScript needs a loop
            if index == level:
                # One fused call with the shared scale and offset (a separate multiply and add are two more
                # passes over the features); as BatchNorm2d: the batch's statistics in training, the running
                # ones in eval.
                return F.batch_norm(x, statistics.running_mean, statistics.running_var, self.weight, self.bias,
                                    self.training, self.momentum, self.eps)
        raise ValueError("LevelBatchNorm: no statistics for this pyramid level")


class Unnormalised(nn.Module):
    """The identity where ``norm="none"`` (no parameters, so plain networks keep the state-dict keys of
    networks saved before normalisation existed)."""

    def forward(self, x: torch.Tensor, level: int) -> torch.Tensor:
        return x


def norm_layer(channels: int, norm: str, levels: int) -> nn.Module:
    """Batch normalisation of ``channels`` per pyramid level for ``norm="batch"``, else the identity."""
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of {list(NORMS)}")
    return LevelBatchNorm(channels, levels) if norm == "batch" else Unnormalised()


def conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Conv2d:
    """A 'same' convolution with an odd kernel (zero padding only matters within ``reach`` of an edge)."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel sizes must be odd and positive, got {kernel_size}")
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2)


def strided_conv_radius(kernel_size: int) -> float:
    """Radius of a stride-2 'same' convolution, in pixels of its (fine) input grid.

    Output pixel i reads input pixels 2i-p .. 2i+p (p = k // 2) and sits at the centre of input pixels
    2i and 2i+1, so its furthest input is p + 0.5 input pixels away (on the left).
    """
    return kernel_size // 2 + 0.5


def downsample2x(x: torch.Tensor) -> torch.Tensor:
    """Halve the resolution by 2x2 averaging: local and aligned to the 2-pixel grid (= bilinear 0.5)."""
    return F.avg_pool2d(x, 2)


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """Double the resolution bilinearly, by scale factor so traced/ONNX graphs keep H, W dynamic."""
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


class ResBlock(nn.Module):
    """Tao et al.'s residual block: conv, ReLU, conv, plus the input (with ``norm="batch"`` each
    convolution followed by batch normalisation, as in He et al.'s original residual block).

    Args:
        channels: feature channels in and out.
        kernel_size: odd kernel of both convolutions (Tao uses 5).
        norm: "none" (Tao's block) or "batch".
        levels: pyramid levels the block runs at (each with statistics of its own under ``norm="batch"``).
    """

    def __init__(self, channels: int, kernel_size: int = 5, norm: str = "none", levels: int = 1):
        super().__init__()
        self.conv1 = conv(channels, channels, kernel_size)
        self.norm1 = norm_layer(channels, norm, levels)
        self.conv2 = conv(channels, channels, kernel_size)
        self.norm2 = norm_layer(channels, norm, levels)
        self.radius = 2 * (kernel_size // 2)

    def forward(self, x: torch.Tensor, level: int = 0) -> torch.Tensor:
        return x + self.norm2(self.conv2(F.relu(self.norm1(self.conv1(x), level))), level)


class MultiScaleResidualBlock(nn.Module):
    """Li et al.'s multi-scale residual block (MSRB): parallel branches with different kernels.

    Stage one runs one convolution per kernel size (3x3 and 5x5 by default) side by side; stage two
    runs each kernel size again over all stage-one features concatenated, so small and large
    neighbourhoods mix; a 1x1 convolution fuses the result back to ``channels``, added to the input.
    With two branches this is exactly Li's block (S1/P1, S2/P2 with 2c channels, 1x1 fusion of 4c).

    Args:
        channels: feature channels in and out.
        kernel_sizes: one odd kernel per parallel branch, default (3, 5).
        norm: "none" (Li's block) or "batch": batch normalisation after the fusion.
        levels: pyramid levels the block runs at (each with statistics of its own under ``norm="batch"``).
    """

    def __init__(self, channels: int, kernel_sizes: Sequence[int] = (3, 5), norm: str = "none", levels: int = 1):
        super().__init__()
        n = len(kernel_sizes)
        if n < 1:
            raise ValueError("a multi-scale residual block needs at least one branch kernel")
        self.first = nn.ModuleList([conv(channels, channels, k) for k in kernel_sizes])
        self.second = nn.ModuleList([conv(n * channels, n * channels, k) for k in kernel_sizes])
        self.fuse = nn.Conv2d(n * n * channels, channels, 1)
        self.norm = norm_layer(channels, norm, levels)
        self.radius = 2 * max(k // 2 for k in kernel_sizes)

    def forward(self, x: torch.Tensor, level: int = 0) -> torch.Tensor:
        first: List[torch.Tensor] = []
        for branch in self.first:
            first.append(F.relu(branch(x)))
        mixed = torch.cat(first, 1)
        second: List[torch.Tensor] = []
        for branch in self.second:
            second.append(F.relu(branch(mixed)))
        return x + self.norm(self.fuse(torch.cat(second, 1)), level)


class ConvGRUCell(nn.Module):
    """A convolutional GRU: the memory carried from coarse to fine scale at the bottleneck.

    Tao et al. use a ConvLSTM here; a GRU keeps one state tensor instead of two for the same role,
    which makes the carried state one upsampling and keeps export graphs simple.

    Args:
        channels: channels of the input and of the hidden state.
        kernel_size: odd kernel of the gate and candidate convolutions.
    """

    def __init__(self, channels: int, kernel_size: int = 3):
        super().__init__()
        self.gates = conv(2 * channels, 2 * channels, kernel_size)
        self.candidate = conv(2 * channels, channels, kernel_size)
        self.channels = channels
        # The candidate sees the reset gate, itself a convolution of the state: two kernels deep.
        self.radius = 2 * (kernel_size // 2)

    def forward(self, x: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        gates = torch.sigmoid(self.gates(torch.cat([x, hidden], 1)))
        # Slices rather than chunk(): chunk exports to an opset-18 Split that breaks opset-17 ONNX files.
        update, reset = gates[:, : self.channels], gates[:, self.channels :]
        candidate = torch.tanh(self.candidate(torch.cat([x, reset * hidden], 1)))
        return (1 - update) * hidden + update * candidate


class ChannelCurves(nn.Module):
    """One learnable piecewise-linear curve per channel: a 1D LUT, as a grading tool's curves.

    ``knots`` values per channel at evenly spaced inputs from ``low`` to ``high``; a value between two
    knots is interpolated linearly, one outside the range continues the end segment's line (a curve
    must not flatten scene values past what the keyframes showed). Starts as the identity. Each knot
    is moved only by the pixels next to it, so a tone curve is learnt in a few hundred steps to a
    precision an MLP of ReLUs reaches only after thousands. Per pixel: no reach, tiles stay exact.

    Args:
        channels: channels in and out (each has its own curve).
        knots: knots per curve (at least 2).
        low, high: the input values of the first and last knot (the training data's range).
    """

    def __init__(self, channels: int, knots: int = 33, low: float = 0.0, high: float = 1.0):
        super().__init__()
        if knots < 2 or not high > low:
            raise ValueError(f"curves need at least 2 knots and high > low, got knots={knots}, {low}..{high}")
        self.channels, self.knots = int(channels), int(knots)
        self.low, self.high = float(low), float(high)
        self.step = (self.high - self.low) / (knots - 1)
        positions = torch.linspace(self.low, self.high, knots)
        self.values = nn.Parameter(positions.repeat(channels, 1))  # (channels, knots): the identity
        self.register_buffer("offsets", (torch.arange(channels) * knots).view(1, channels, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = (x - self.low) / self.step
        index = torch.clamp(torch.floor(u), 0.0, float(self.knots - 2))
        fraction = u - index  # below 0 or above 1 outside the range: the end segments extend
        # Indexing with a tensor shaped like x keeps x's memory format (channels_last in training); a
        # flattened lookup would hand the encoder-decoder NCHW bases and slow every convolution after it.
        flat = index.long() + self.offsets
        table = self.values.flatten()
        left = table[flat]
        right = table[flat + 1]
        return left + fraction * (right - left)


class Blocks(nn.ModuleList):
    """Blocks applied one after another at one pyramid level (a list, so its state-dict keys are those of
    the ``nn.Sequential`` it replaced)."""

    def forward(self, x: torch.Tensor, level: int = 0) -> torch.Tensor:
        for block in self:
            x = block(x, level)
        return x


def make_blocks(block: str, channels: int, depth: int, kernel_size: int, branch_kernels: Sequence[int],
                norm: str = "none", levels: int = 1) -> Blocks:
    """``depth`` blocks of the named kind at ``channels`` (empty, the identity, for 0)."""
    if block == "msrb":
        return Blocks([MultiScaleResidualBlock(channels, branch_kernels, norm, levels) for _ in range(depth)])
    if block == "res":
        return Blocks([ResBlock(channels, kernel_size, norm, levels) for _ in range(depth)])
    raise ValueError(f"unknown block {block!r}; choose one of ['msrb', 'res']")


def sequence_radius(blocks: nn.ModuleList) -> int:
    """Total radius of blocks applied one after another, in pixels of their grid."""
    return sum(int(b.radius) for b in blocks)
