"""MSRN: the multi-scale recurrent network duplidog learns each shot's transformation with.

A scale-recurrent network in the family of Tao et al., "Scale-recurrent Network for Deep Image
Deblurring" (CVPR 2018), the design Foundry's CopyCat ships as its open SRN template:

- the input is turned into a coarse-to-fine pyramid (2x2 average pooling, scale 0.5 per level);
- ONE encoder-decoder, the same weights at every level, runs from the coarsest level to the finest;
  each level sees its image concatenated with the upsampled prediction of the level below it, so the
  coarse levels settle the large-scale structure and the fine levels only refine;
- a convolutional GRU at the bottleneck carries a memory from level to level (upsampled bilinearly,
  as Tao resizes his ConvLSTM state);
- the encoder-decoder stages are built from multi-scale residual blocks (Li et al., "Multi-scale
  Residual Network for Image Super-Resolution", ECCV 2018: parallel 3x3 and 5x5 branches) or from
  Tao's plain residual blocks.

Sharing the weights across levels is what makes the network small for its reach: a 3-level pyramid
sees four times further than one level at the cost of 1/3 more compute and no more parameters.

Everything is local (see ``blocks``): no normalisation or pooling over the whole image, so a tile
whose origin is a multiple of ``size_multiple`` gives the same values as the whole frame at pixels
further than ``reach`` from its edge. That is the contract the tiled inference relies on.

When input and output channels match (RGB -> RGB, RGBA -> RGBA) each level predicts a correction
added to its input, so the untrained network starts near the identity and learns only the fix (a
paint cleanup changes few pixels). Otherwise (RGB -> matte) it predicts the output directly.

Beside the encoder-decoder there is a *per-pixel colour path* from the image straight to the
output: one learnable curve per input channel (a 1D LUT, ``curve_knots`` knots over the
training data's range, ``curve_range``), a 1x1 colour matrix, and in parallel a small MLP of 1x1
convolutions (``colour_width`` hidden features) for what curves and a matrix cannot do. Much of what
an artist does to a shot is a function of each pixel's own colour -- a grade, a look, much of a key --
and a spatial network only approximates such a function coarsely through its few full-resolution
features; curves and a matrix are how grading tools themselves represent it, and they learn it to
float16 precision in a few hundred steps. The encoder-decoder is left to learn what needs context
(paint, edges, mattes of objects). In the spirit of the "global plus local" split of Gharbi et al.,
"Deep Bilateral Learning for Real-Time Image Enhancement" (SIGGRAPH 2017) and the learnt curves of
Moran et al., "CURL: Neural Curve Layers for Global Image Enhancement" (ICPR 2020), but strictly per
pixel, so tiles stay exact and the reach is unchanged. Past the data's range the curves continue their
end segments and the MLP (ReLUs) is linear, so highlights brighter than any keyframe's are extended,
never flattened. In a residual network the colour path starts as the identity and replaces the skip
from the input; otherwise it starts near zero. It runs once, at full resolution, and each level adds its
correction to the colour path's output averaged down to that level.

An upscaling network (``scale`` s of 2, 3 or 4: output frames s times the input's size) runs every level
at the input's resolution as above and ends in a pixel-shuffle head (Shi et al., "Real-Time Single
Image and Video Super-Resolution Using an Efficient Sub-Pixel Convolutional Neural Network", CVPR
2016): the head's convolution gives out_channels * s * s features, ``pixel_shuffle`` lays them out as
an s x s block per input pixel. The finest level adds that to its base upsampled bicubically, so the
network still learns a correction (over bicubic upscaling of the colour path's output); the coarser
levels, which guide it, give each pixel the mean of its s x s block, their targets averaged down alike.

A temporal network (``temporal_frames`` N above 0) reads frames t-N..t+N stacked as channels,
``in_channels`` per frame, the centre frame's first (``duplidog.temporal``), and predicts frame t. Only
the encoder-decoder sees the neighbours: its stem takes every frame's channels at every level (the
pyramid averages them all down alike), while the colour path, the residual base and the first guess
read the centre frame alone, so the network still learns a correction of frame t and a pixel's colour
is still a function of that pixel. The neighbours add no reach in space: they are read at the same
places as the centre frame.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from duplidog.model.blocks import (
    UPSAMPLE_RADIUS,
    ChannelCurves,
    ConvGRUCell,
    conv,
    downsample2x,
    make_blocks,
    sequence_radius,
    strided_conv_radius,
    upsample2x,
)
from duplidog.temporal import MAX_TEMPORAL_FRAMES

# Presets, from fast-on-a-laptop-CPU to the scale of CopyCat's SRN template (their sizes and speeds:
# docs/speed.md). Their blocks are batch-normalised: in a budget of a few hundred steps normalised features
# learn a paint-out, a beauty fix or a matte far faster than plain ones (docs/quality.md).
#   small   Tao's ResBlocks, 3x3: the fewest MACs for its depth, so it trains on a CPU; width 16 because
#           8 could not learn a paint-out (docs/quality.md); training gives it depth 1 for a fix that
#           changes most pixels (``train.setup.WHOLE_FRAME_DEPTH``)
#   medium  Li's multi-scale residual blocks
#   large   multi-scale residual blocks at the scale of CopyCat's SRN template
PRESETS: Dict[str, Dict[str, Any]] = {
    "small": dict(levels=3, width=16, depth=2, stages=2, kernel_size=3, block="res", branch_kernels=[3, 5],
                  recurrent="gru", recurrent_kernel=3, colour_width=16, colour_depth=2, curve_knots=33,
                  guide_on_base=True, refine_levels=True, norm="batch"),
    "medium": dict(levels=3, width=12, depth=2, stages=2, kernel_size=3, block="msrb", branch_kernels=[3, 5],
                   recurrent="gru", recurrent_kernel=3, colour_width=32, colour_depth=2, curve_knots=33,
                   guide_on_base=True, refine_levels=True, norm="batch"),
    "large": dict(levels=3, width=20, depth=2, stages=2, kernel_size=3, block="msrb", branch_kernels=[3, 5],
                  recurrent="gru", recurrent_kernel=3, colour_width=32, colour_depth=2, curve_knots=65,
                  guide_on_base=True, refine_levels=True, norm="batch"),
}

# A network whose outputs are not its inputs' channels (a matte from RGB) has no colour path unless asked:
# a per-pixel map from colour to matte is a key, which marks every region of the object's colours rather
# than following its shape (it lowered the real-photograph roto's IoU: docs/quality.md). Its output is a
# sigmoid of logits, scored by cross-entropy: with normalised blocks the logits grow fast enough, and the
# matte comes out solid inside and out with a sharper edge (docs/quality.md).
MATTE_NETWORK = dict(colour_width=0, curve_knots=0, output_activation="sigmoid")

OUTPUT_ACTIVATIONS = ("none", "sigmoid")

# The head (the encoder-decoder's last convolution) starts with its weights scaled down by this, so each
# level's output starts as nearly what the colour path (or the input) gives and the spatial correction
# grows only where the loss asks for it, while every layer still receives gradients (the near-zero last
# layers of residual branches of Goyal et al. 2017 and Fixup). Chosen on the quality bench's colour look
# against a head at zero and one scaled by 0.1 (docs/quality.md).
HEAD_INIT_SCALE = 0.01
# Bicubic upsampling (PyTorch's, a = -0.75) reads the 4 x 4 input pixels nearest an output pixel's
# centre, which lie within 2 input pixels of it.
BICUBIC_RADIUS = 2.0
# A pixel-shuffled output pixel comes from the input pixel whose area it lies in: under half a pixel away.
SHUFFLE_RADIUS = 0.5
SCALES = (1, 2, 3, 4)

# A colour matrix that is not the identity (RGB -> matte) starts small but not zero, so the curves
# before it learn from the first step.
MATRIX_INIT_SCALE = 0.1


class EncoderStage(nn.Module):
    """Blocks at one resolution, then a stride-2 convolution to the next (twice the channels)."""

    def __init__(self, channels: int, out_channels: int, depth: int, kernel_size: int, block: str,
                 branch_kernels: Sequence[int], norm: str = "none", levels: int = 1):
        super().__init__()
        self.blocks = make_blocks(block, channels, depth, kernel_size, branch_kernels, norm, levels)
        self.down = conv(channels, out_channels, kernel_size, stride=2)

    def forward(self, x: torch.Tensor, level: int) -> Tuple[torch.Tensor, torch.Tensor]:
        skip = self.blocks(x, level)
        return skip, F.relu(self.down(skip))


class DecoderStage(nn.Module):
    """Bilinear x2 and a convolution to half the channels, plus the encoder's skip, then blocks."""

    def __init__(self, channels: int, out_channels: int, depth: int, kernel_size: int, block: str,
                 branch_kernels: Sequence[int], norm: str = "none", levels: int = 1):
        super().__init__()
        self.up = conv(channels, out_channels, kernel_size)
        self.blocks = make_blocks(block, out_channels, depth, kernel_size, branch_kernels, norm, levels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, level: int) -> torch.Tensor:
        return self.blocks(F.relu(self.up(upsample2x(x))) + skip, level)


class ColourPath(nn.Module):
    """Per pixel: curves per input channel, a colour matrix, plus an MLP of 1x1 convolutions.

    With ``identity=True`` (same channels in and out) it starts as the identity; otherwise the matrix
    starts small. The MLP's last layer starts nearly at zero like the network's head: the matrix
    already carries the colour, and the MLP adds only what it cannot.

    Args:
        in_channels, out_channels: channels of the image and of the output.
        width: hidden features of the MLP (0: no MLP).
        depth: hidden layers of the MLP.
        knots: knots of each curve (0: no curves, the matrix sees the image itself).
        curve_range: input values of the first and last knot.
        identity: start as the identity (needs in_channels == out_channels).
    """

    def __init__(self, in_channels: int, out_channels: int, width: int, depth: int = 2, knots: int = 0,
                 curve_range: Sequence[float] = (0.0, 1.0), identity: bool = False):
        super().__init__()
        self.curves = ChannelCurves(in_channels, knots, *curve_range) if knots else None
        self.matrix = nn.Conv2d(in_channels, out_channels, 1)
        with torch.no_grad():
            if identity:
                self.matrix.weight.copy_(torch.eye(out_channels, in_channels).view(out_channels, in_channels, 1, 1))
            else:
                self.matrix.weight.mul_(MATRIX_INIT_SCALE)
            self.matrix.bias.zero_()
        layers: List[nn.Module] = []
        if width:
            channels = in_channels
            for _ in range(max(1, depth)):
                layers += [nn.Conv2d(channels, width, 1), nn.ReLU()]
                channels = width
            last = nn.Conv2d(channels, out_channels, 1)
            with torch.no_grad():
                last.weight.mul_(HEAD_INIT_SCALE)
                last.bias.zero_()
            layers.append(last)
        self.mlp = nn.Sequential(*layers) if layers else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        curves = self.curves
        out = self.matrix(x if curves is None else curves(x))
        mlp = self.mlp
        if mlp is not None:
            out = out + mlp(x)
        return out


class MSRN(nn.Module):
    """Multi-scale recurrent network (Tao et al. 2018 scale recurrence, Li et al. 2018 MSRB blocks).

    ``forward(x, all_levels=False)`` takes (N, in_channels, H, W) with H and W multiples of
    ``size_multiple`` and returns the finest prediction (N, out_channels, scale * H, scale * W), or with
    ``all_levels=True`` the prediction of every level, coarse to fine, each at its level's resolution
    (H / 2**level; the finest scale * H), for multi-level supervision.

    Args:
        in_channels: channels of the input image (3 for RGB, 4 for RGBA). Default 3.
        out_channels: channels of the output (3 for RGB, 1 for a matte). Default 3.
        levels: pyramid levels, each half the resolution of the one above. Default 3.
        width: feature channels at full resolution; each encoder stage doubles it. Default 32.
        depth: blocks per stage, in the encoder and again in the decoder (0 allowed). Default 2.
        stages: stride-2 downsamplings inside each level's encoder-decoder. Default 2.
        kernel_size: odd kernel of the stem, head, resampling convolutions and ``res`` blocks. Default 3.
        block: ``"msrb"`` (Li's multi-scale residual block) or ``"res"`` (Tao's ResBlock). Default msrb.
        branch_kernels: the parallel kernels of an MSRB. Default [3, 5].
        recurrent: ``"gru"`` (a ConvGRU carried from level to level) or ``"none"``. Default gru.
        recurrent_kernel: odd kernel of the ConvGRU. Default 3.
        colour_width: hidden features of the colour path's MLP (0: none). Default 0.
        colour_depth: hidden layers of the colour path's MLP. Default 2.
        curve_knots: knots of the colour path's curves (0: none). Default 0. With colour_width also 0
            there is no colour path at all, as in models saved before it existed; every preset has one.
        curve_range: working-space values of the first and last knot; training sets it to the tile
            pool's range of source values. Default [0, 1].
        residual: predict a correction added to the input; default (None) when in == out channels.
        guide_on_base: each finer level sees the coarser levels' correction added to its own base (the
            colour path's output, or in a residual network the image, at this level's resolution) rather
            than the coarser prediction upsampled, so the finest level sees the per-pixel colour sharp. A
            look with local contrast needs the detail of the *graded* image, which the upsampled guess has
            lost and the plate alone does not give. Default False, as in models saved before it existed;
            every preset sets it.
        refine_levels: in a network with no base (a matte from RGB: neither residual nor a colour path), each
            finer level adds its output to the coarser prediction upsampled instead of drawing the whole
            matte again, so the coarse levels carry the shape and the fine ones only its edges. Default
            False, as in models saved before it existed; every preset sets it.
        output_activation: "none", or "sigmoid" for a matte: every level predicts logits (the next level
            is guided by their sigmoid), ``forward`` returns the sigmoid, and training scores the logits
            with a binary cross-entropy. Default "none"; a matte network has "sigmoid" (``build_model``).
        scale: output resolution / input resolution, 1 to 4. Above 1 the head ends in a pixel shuffle and
            the finest level's base is upsampled bicubically (see the module docstring). Default 1.
        temporal_frames: neighbour frames on each side of the predicted one, 0 to 3: the input has
            ``in_channels * (2 * temporal_frames + 1)`` channels, the centre frame's first (see the module
            docstring). Default 0: one frame.
        norm: "none", or "batch": batch normalisation inside every block (``blocks.LevelBatchNorm``), its
            scale and offset shared by the levels, its statistics each level's own. In eval mode it is a fixed
            per-channel scale and offset, so tiles stay exact. The presets have it: in a short budget it learns
            far faster (docs/quality.md). Default "none", as in models saved before it existed.
    """

    arch = "msrn"

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        levels: int = 3,
        width: int = 32,
        depth: int = 2,
        stages: int = 2,
        kernel_size: int = 3,
        block: str = "msrb",
        branch_kernels: Sequence[int] = (3, 5),
        recurrent: str = "gru",
        recurrent_kernel: int = 3,
        colour_width: int = 0,
        colour_depth: int = 2,
        curve_knots: int = 0,
        curve_range: Sequence[float] = (0.0, 1.0),
        residual: Optional[bool] = None,
        guide_on_base: bool = False,
        output_activation: str = "none",
        refine_levels: bool = False,
        scale: int = 1,
        temporal_frames: int = 0,
        norm: str = "none",
    ):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("levels", levels),
                            ("width", width)):
            if int(value) < 1:
                raise ValueError(f"MSRN {name} must be at least 1, got {value}")
        if depth < 0 or stages < 0:
            raise ValueError(f"MSRN depth and stages must not be negative, got depth={depth}, stages={stages}")
        if colour_width < 0 or colour_depth < 1 or curve_knots < 0 or curve_knots == 1:
            raise ValueError(f"MSRN colour_width must not be negative, colour_depth at least 1 and curve_knots 0 or at "
                             f"least 2, got {colour_width}, {colour_depth}, {curve_knots}")
        if len(curve_range) != 2 or not float(curve_range[1]) > float(curve_range[0]):
            raise ValueError(f"MSRN curve_range must be [low, high] with high > low, got {list(curve_range)}")
        if recurrent not in ("gru", "none"):
            raise ValueError(f"MSRN recurrent must be 'gru' or 'none', got {recurrent!r}")
        if output_activation not in OUTPUT_ACTIVATIONS:
            raise ValueError(f"MSRN output_activation must be one of {', '.join(OUTPUT_ACTIVATIONS)}, "
                             f"got {output_activation!r}")
        if isinstance(scale, bool) or int(scale) != scale or int(scale) not in SCALES:
            raise ValueError(f"MSRN scale must be one of {', '.join(map(str, SCALES))}, got {scale!r}")
        if isinstance(temporal_frames, bool) or int(temporal_frames) != temporal_frames or \
                not 0 <= int(temporal_frames) <= MAX_TEMPORAL_FRAMES:
            raise ValueError(f"MSRN temporal_frames must be 0 to {MAX_TEMPORAL_FRAMES}, got {temporal_frames!r}")
        if residual is None:
            residual = in_channels == out_channels and output_activation == "none"
        if residual and output_activation != "none":
            raise ValueError("a residual MSRN predicts a correction of its input; it cannot have a sigmoid output")
        if residual and in_channels != out_channels:
            raise ValueError(f"a residual MSRN needs in_channels == out_channels, got {in_channels} -> {out_channels}")

        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.levels = int(levels)
        self.residual = bool(residual)
        self.scale = int(scale)  # output resolution / input resolution (the card and the tiler read it)
        # Neighbour frames on each side; the input stacks 2N + 1 frames of in_channels each, centre first.
        self.temporal_frames = int(temporal_frames)
        self.stacked_channels = self.in_channels * (2 * self.temporal_frames + 1)
        self.size_multiple = 2 ** (self.levels - 1 + int(stages))
        self._settings: Dict[str, Any] = dict(
            in_channels=self.in_channels, out_channels=self.out_channels, levels=self.levels, width=int(width),
            depth=int(depth), stages=int(stages), kernel_size=int(kernel_size), block=str(block),
            branch_kernels=[int(k) for k in branch_kernels], recurrent=str(recurrent),
            recurrent_kernel=int(recurrent_kernel), colour_width=int(colour_width), colour_depth=int(colour_depth),
            curve_knots=int(curve_knots), curve_range=[float(v) for v in curve_range], residual=self.residual,
            guide_on_base=bool(guide_on_base), output_activation=str(output_activation),
            refine_levels=bool(refine_levels), scale=self.scale, temporal_frames=self.temporal_frames,
            norm=str(norm),
        )
        self.sigmoid_output = output_activation == "sigmoid"
        self.guide_on_base = bool(guide_on_base)
        self.refine_levels = bool(refine_levels)
        self.preset = "custom"

        blocks = dict(depth=depth, kernel_size=kernel_size, block=block, branch_kernels=branch_kernels, norm=norm,
                      levels=self.levels)
        channels = [width * 2**i for i in range(stages + 1)]
        self.stem = conv(self.stacked_channels + out_channels, width, kernel_size)
        self.encoder = nn.ModuleList([EncoderStage(channels[i], channels[i + 1], **blocks) for i in range(stages)])
        self.bottleneck_in = make_blocks(channels=channels[-1], **blocks)
        self.cell = ConvGRUCell(channels[-1], recurrent_kernel) if recurrent == "gru" else None
        self.bottleneck_out = make_blocks(channels=channels[-1], **blocks)
        self.decoder = nn.ModuleList(
            [DecoderStage(channels[i + 1], channels[i], **blocks) for i in reversed(range(stages))]
        )
        self.head = conv(width, out_channels * self.scale * self.scale, kernel_size)
        self.colour = ColourPath(in_channels, out_channels, colour_width, colour_depth, curve_knots, curve_range,
                                 identity=self.residual) if colour_width or curve_knots else None
        with torch.no_grad():
            self.head.weight.mul_(HEAD_INIT_SCALE)
            self.head.bias.zero_()
            if self.scale > 1:  # ICNR (Aitken et al. 2017): every sub-pixel starts alike, no checkerboard
                blocks = self.head.weight.view(out_channels, self.scale * self.scale, *self.head.weight.shape[1:])
                blocks.copy_(blocks[:, :1].expand_as(blocks))
        self.reach = int(math.ceil(self.reach_bound()))

    # -- description --------------------------------------------------------------------------------
    @torch.jit.unused
    @property
    def config(self) -> Dict[str, Any]:
        """A JSON-able dict that rebuilds this network with ``duplidog.model.build_from_config``."""
        return {"arch": self.arch, "preset": self.preset, **{k: (list(v) if isinstance(v, list) else v)
                                                            for k, v in self._settings.items()}}

    @torch.jit.unused
    def reach_bound(self, levels: Optional[int] = None) -> float:
        """Upper bound, in full-resolution input pixels, of how far an input pixel can change an output pixel
        (an upscaled output pixel's distance measured from its centre in input pixels).

        Follows ``forward`` operation by operation, adding each one's radius (in its own grid's pixels
        times that grid's spacing) along the longest path; where paths join, the larger reach wins.
        ``levels``: only the finest that many levels, what the coarser ones hand them taken as given
        (``levels=1``: the reach of ``finest_pass`` over a window of ``coarse_pass``'s tensors).
        """
        k = self._settings["kernel_size"] // 2
        down = strided_conv_radius(self._settings["kernel_size"])
        out_reach: Optional[float] = None
        hidden_reach: Optional[float] = None
        for level in reversed(range(self.levels if levels is None else min(int(levels), self.levels))):
            spacing = 2**level
            image = (spacing - 1) / 2  # a 2x2 average per level: the pooled block's half width
            previous = image if out_reach is None else out_reach + UPSAMPLE_RADIUS * spacing
            reach = max(image, previous) + k * spacing  # stem
            skips: List[float] = []
            f = spacing
            for stage in self.encoder:
                reach += sequence_radius(stage.blocks) * f
                skips.append(reach)
                reach += down * f
                f *= 2
            reach += sequence_radius(self.bottleneck_in) * f
            if self.cell is not None:
                carried = reach if hidden_reach is None else hidden_reach + UPSAMPLE_RADIUS * f
                reach = max(reach, carried) + self.cell.radius * f
                hidden_reach = reach
            reach += sequence_radius(self.bottleneck_out) * f
            for stage in self.decoder:
                f //= 2
                reach = max(reach + (UPSAMPLE_RADIUS + k) * f, skips.pop())
                reach += sequence_radius(stage.blocks) * f
            reach += k * spacing  # head
            based = self.residual or self.colour is not None
            if level == 0 and self.scale > 1:  # pixel shuffle; the base (or coarser guess) upsampled bicubically
                reach += SHUFFLE_RADIUS
                base = image if based else (previous if self.refine_levels else None)
                out_reach = reach if base is None else max(reach, base + BICUBIC_RADIUS)
                continue
            out_reach = max(reach, image) if based else reach
        assert out_reach is not None
        return out_reach

    # -- computation --------------------------------------------------------------------------------
    def _level(self, image: torch.Tensor, previous: torch.Tensor, hidden: Optional[torch.Tensor],
               level: int) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """One pass of the shared encoder-decoder at one pyramid level: its correction, and the state."""
        stacked = torch.cat([image, previous], 1)
        if image.is_contiguous(memory_format=torch.channels_last) and not image.is_contiguous():
            # cat of a channels_last image and a one-channel guide (a matte's) comes out NCHW, and the
            # whole level would run in the slow layout
            stacked = stacked.contiguous(memory_format=torch.channels_last)
        x = F.relu(self.stem(stacked))
        skips: List[torch.Tensor] = []
        for stage in self.encoder:
            skip, x = stage(x, level)
            skips.append(skip)
        x = self.bottleneck_in(x, level)
        cell = self.cell
        if cell is not None:
            state = torch.zeros_like(x) if hidden is None else hidden
            x = cell(x, state)
            hidden = x
        x = self.bottleneck_out(x, level)
        for stage in self.decoder:
            x = stage(x, skips.pop(), level)
        return self.head(x), hidden

    def forward_levels(self, x: torch.Tensor, logits: bool = False) -> List[torch.Tensor]:
        """The prediction of every level, coarse to fine, each at its level's resolution; with
        ``logits=True`` a sigmoid network's logits (what training scores) instead of its output."""
        outputs = self._predict(x, False)[0]
        if self.sigmoid_output and not logits:
            outputs = [torch.sigmoid(output) for output in outputs]
        return outputs

    @torch.jit.unused
    def training_outputs(self, x: torch.Tensor) -> Tuple[List[torch.Tensor], Optional[torch.Tensor]]:
        """Every level's prediction (logits for a sigmoid network) with the colour path's output detached
        from it, and that output.

        Training with these lets the colour path learn only from its own loss (``train.colour_split``)
        while the encoder-decoder learns what the colour path leaves; the sum is what ``forward`` gives.
        """
        colour_output: Optional[torch.Tensor] = None
        if self.colour is not None:
            # The colour path carries the picture's values themselves, not a correction: under reduced-
            # precision autocast it runs in float32, as it does at inference.
            with torch.autocast(device_type=x.device.type, enabled=False):
                colour_output = self.colour(self._centre(x).float())
        return self._predict(x, True, colour_output)

    def _predict(self, x: torch.Tensor, detach_colour: bool,
                 colour_output: Optional[torch.Tensor] = None) -> Tuple[List[torch.Tensor], Optional[torch.Tensor]]:
        if not torch.jit.is_scripting() and not torch.jit.is_tracing() and not torch.compiler.is_compiling():
            height, width = int(x.shape[-2]), int(x.shape[-1])
            if height % self.size_multiple or width % self.size_multiple:
                raise ValueError(f"MSRN input {height}x{width} is not a multiple of size_multiple={self.size_multiple}")
            if int(x.shape[1]) != self.stacked_channels:
                raise ValueError(f"MSRN input has {int(x.shape[1])} channels, the network reads "
                                 f"{self.stacked_channels} ({self.in_channels} per frame, "
                                 f"{2 * self.temporal_frames + 1} frames)")
        pyramid, bases, colour_output, prediction = self._prepare(x, colour_output, detach_colour)
        hidden: Optional[torch.Tensor] = None
        outputs: List[torch.Tensor] = []
        for level in range(self.levels - 1, -1, -1):
            prediction, hidden, guide = self._climb(level, prediction, hidden, bases)
            correction, hidden = self._level(pyramid[level], guide, hidden, level)
            prediction = self._refine(level, correction, prediction, bases)
            outputs.append(prediction)
        return outputs, colour_output

    def _prepare(self, x: torch.Tensor, colour_output: Optional[torch.Tensor], detach_colour: bool
                 ) -> Tuple[List[torch.Tensor], List[torch.Tensor], Optional[torch.Tensor], torch.Tensor]:
        """The image pyramid, each level's base, the colour path's output and the first guess."""
        pyramid: List[torch.Tensor] = [x]
        for _ in range(self.levels - 1):
            pyramid.append(downsample2x(pyramid[-1]))
        # What each level's correction is added to: the colour path's output (run once, at full resolution,
        # then averaged down like the image, so every level is asked for the average of a per-pixel
        # function rather than the function of an average), or in a residual network without one the image.
        bases: List[torch.Tensor] = []
        colour = self.colour
        if colour is not None:
            if colour_output is None:
                colour_output = colour(self._centre(x))
            bases.append(colour_output.detach() if detach_colour else colour_output)
            for _ in range(self.levels - 1):
                bases.append(downsample2x(bases[-1]))
        elif self.residual:
            bases = [self._centre(level) for level in pyramid]
        if len(bases) > 0:
            prediction = bases[-1]  # Tao's choice: the input (here its colour-mapped version) is the first guess
        else:
            prediction = torch.zeros_like(pyramid[-1][:, :1]).repeat(1, self.out_channels, 1, 1)
        return pyramid, bases, colour_output, prediction

    def _climb(self, level: int, prediction: torch.Tensor, hidden: Optional[torch.Tensor], bases: List[torch.Tensor]
               ) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
        """The coarser level's prediction and hidden state brought up to ``level``, and the guide it reads."""
        if level < self.levels - 1:
            if self.guide_on_base and len(bases) > 0:
                prediction = upsample2x(prediction - bases[level + 1]) + bases[level]
            else:
                prediction = upsample2x(prediction)
            if hidden is not None:
                hidden = upsample2x(hidden)
        guide = torch.sigmoid(prediction) if self.sigmoid_output else prediction
        return prediction, hidden, guide

    def _refine(self, level: int, correction: torch.Tensor, prediction: torch.Tensor, bases: List[torch.Tensor]
                ) -> torch.Tensor:
        """``level``'s prediction: its correction added to its base, or to the coarser prediction."""
        correction = self._lay_out(correction, level == 0)
        if len(bases) > 0:
            return correction + self._upscale(bases[level], level == 0)
        if self.refine_levels:  # without a base, the first guess is zeros
            return correction + self._upscale(prediction, level == 0)
        return correction

    def _centre(self, x: torch.Tensor) -> torch.Tensor:
        """The centre frame's channels of a stacked input (the input itself in a one-frame network)."""
        if self.temporal_frames == 0:
            return x
        return x[:, : self.in_channels]

    def _lay_out(self, head: torch.Tensor, finest: bool) -> torch.Tensor:
        """The head's output as a correction: at 1x itself; upscaling, each pixel's s x s block at the
        finest level, and the block's mean at the coarser ones (which guide it at the input's resolution)."""
        if self.scale == 1:
            return head
        blocks = F.pixel_shuffle(head, self.scale)
        return blocks if finest else F.avg_pool2d(blocks, self.scale)

    def _upscale(self, x: torch.Tensor, finest: bool) -> torch.Tensor:
        """What the finest level's correction is added to, at the output's resolution (bicubic)."""
        if self.scale == 1 or not finest:
            return x
        return F.interpolate(x, scale_factor=float(self.scale), mode="bicubic", align_corners=False)

    # -- split inference: the coarse levels over the whole frame, the finest level in tiles ----------
    @torch.jit.unused
    def coarse_pass(self, x: torch.Tensor) -> Dict[str, Optional[torch.Tensor]]:
        """What the finest level reads, worked out from the coarser levels: ``finest_pass`` of it is ``forward(x)``.

        Returns the finest level's ``image`` (``x``), its ``guide`` (the coarser prediction, at full
        resolution), the recurrent ``hidden`` state (at the bottleneck's resolution, 1 /
        ``finest_size_multiple``; None without a cell) and the ``offset`` its correction is added to (None
        when it predicts the output directly). Every tensor is aligned with ``x``: a window of ``x``
        whose origin and size are multiples of ``finest_size_multiple``, with the same window of each
        (the hidden state's scaled down), gives the finest level's output over that window, exact
        where the window's edge is further than the finest level's reach. The coarse levels cost a
        third of the finest one, so tiled inference runs them once over the frame and tiles only this
        level, whose reach is far shorter than the whole network's.
        """
        pyramid, bases, _, prediction = self._prepare(x, None, False)
        hidden: Optional[torch.Tensor] = None
        for level in range(self.levels - 1, 0, -1):  # the same steps as _predict, stopping before level 0 runs
            prediction, hidden, guide = self._climb(level, prediction, hidden, bases)
            correction, hidden = self._level(pyramid[level], guide, hidden, level)
            prediction = self._refine(level, correction, prediction, bases)
        prediction, hidden, guide = self._climb(0, prediction, hidden, bases)
        offset: Optional[torch.Tensor] = bases[0] if len(bases) > 0 else (prediction if self.refine_levels else None)
        return {"image": x, "guide": guide, "hidden": hidden, "offset": offset}

    @torch.jit.unused
    def finest_pass(self, parts: Dict[str, Optional[torch.Tensor]]) -> torch.Tensor:
        """The network's output (what ``forward`` returns) from ``coarse_pass``'s tensors, or a window of them."""
        image, guide = parts["image"], parts["guide"]
        assert image is not None and guide is not None
        correction, _ = self._level(image, guide, parts["hidden"], 0)
        correction = self._lay_out(correction, True)
        offset = parts["offset"]
        prediction = correction if offset is None else correction + self._upscale(offset, True)
        return torch.sigmoid(prediction) if self.sigmoid_output else prediction

    @torch.jit.unused
    @property
    def finest_size_multiple(self) -> int:
        """The grid the finest level's windows must sit on: its own encoder's downsamplings."""
        return 2 ** int(self._settings["stages"])

    def forward(self, x: torch.Tensor, all_levels: bool = False,
                logits: bool = False) -> Union[torch.Tensor, List[torch.Tensor]]:
        """The finest prediction (N, out_channels, H, W), or every level's with ``all_levels=True``;
        ``logits``: see ``forward_levels``."""
        outputs = self.forward_levels(x, logits)
        if all_levels:
            return outputs
        return outputs[-1]
