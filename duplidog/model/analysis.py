"""What a network costs and how far it sees, measured rather than guessed.

``count_parameters`` and ``macs_per_megapixel`` size the presets against CopyCat's SRN template
(~6.9 M parameters, ~1.27 TMAC per megapixel); ``measure_reach`` checks a network's analytic ``reach``
(which the tiler trusts for its overlaps) by perturbing one pixel and watching how far it spreads.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, Dict, Optional, Sequence

import torch
from torch import nn


def count_parameters(model: nn.Module) -> int:
    """Number of scalar weights (shared weights counted once, as ``parameters()`` yields them once)."""
    return sum(p.numel() for p in model.parameters())


def _probe_side(model: nn.Module, at_least: int) -> int:
    multiple = int(getattr(model, "size_multiple", 1))
    return multiple * max(1, math.ceil(at_least / multiple))


def macs_per_megapixel(model: nn.Module, side: Optional[int] = None) -> float:
    """Multiply-accumulates of all convolution and linear layers for a 1-megapixel input.

    Counted with forward hooks on a small ``side`` x ``side`` input (default about 64 pixels, a
    multiple of ``size_multiple``) and scaled by pixel count, which is exact for a fully convolutional
    network whose every layer runs at a fixed fraction of the input resolution. Element-wise work
    (activations, resampling, additions) is not counted, as is usual for MAC figures.
    """
    side = side or _probe_side(model, 64)
    total = 0

    def count(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            kernel = module.kernel_size[0] * module.kernel_size[1]
            if isinstance(module, nn.Conv2d):
                total += output.numel() * (module.in_channels // module.groups) * kernel
            else:  # each input element is spread over out_channels/groups x kernel outputs
                total += inputs[0].numel() * (module.out_channels // module.groups) * kernel
        elif isinstance(module, nn.Linear):
            total += output.numel() * module.in_features

    parameter = next(model.parameters())
    channels = int(getattr(model, "stacked_channels", model.in_channels))  # a temporal network's frames stacked
    probe = torch.zeros(1, channels, side, side, device=parameter.device, dtype=parameter.dtype)
    handles = [m.register_forward_hook(count) for m in model.modules()]
    try:
        with torch.no_grad():
            model(probe)
    finally:
        for handle in handles:
            handle.remove()
    return total * 1e6 / (side * side)


def measure_reach(model: nn.Module, side: Optional[int] = None, seed: int = 0, threshold: float = 0.0) -> int:
    """The furthest distance (in pixels, per axis) at which changing one central input pixel changes the output.

    With ``threshold`` > 0 only output changes larger than it count: an *effective* reach (for a
    change of 1.0 in one pixel), typically far shorter than the strict bound, since influence decays
    with distance. The strict value (threshold 0) is what the tests hold ``model.reach`` against.

    Runs a float64 copy of the network twice on a random image, once with its centre pixel changed,
    and returns the largest ``max(|dy|, |dx|)`` of any output pixel that differs at all. The image is
    made large enough (default: beyond twice the analytic ``reach``) that the spread is not cut short
    by the border. A measured value can fall short of the analytic bound (ReLUs that stay closed,
    asymmetric kernels), never exceed it for a correct bound.
    """
    probe_model = copy.deepcopy(model).to(device="cpu", dtype=torch.float64).eval()
    side = side or _probe_side(probe_model, 2 * int(getattr(model, "reach", 64)) + 4 * int(model.size_multiple))
    generator = torch.Generator().manual_seed(seed)
    channels = int(getattr(model, "stacked_channels", model.in_channels))  # a temporal network's frames stacked
    image = torch.rand(1, channels, side, side, generator=generator, dtype=torch.float64)
    changed = image.clone()
    centre = side // 2
    changed[:, :, centre, centre] += 1.0
    with torch.no_grad():
        difference = (probe_model(changed) - probe_model(image)).abs().amax(dim=(0, 1))
    rows, cols = torch.nonzero(difference > threshold, as_tuple=True)
    if rows.numel() == 0:
        return 0
    return int(torch.maximum((rows - centre).abs(), (cols - centre).abs()).max())


def window_error_by_distance(run: Callable[[Dict[str, Optional[torch.Tensor]]], torch.Tensor],
                             parts: Dict[str, Optional[torch.Tensor]], whole: torch.Tensor, top: int, left: int,
                             side: int) -> torch.Tensor:
    """How far a window's output strays from the whole's, by distance from the window's edge.

    ``parts``: full-frame tensors aligned with the output (each at its own resolution, the output's
    divided by a whole number); ``run`` maps a window of them to that window's output; ``whole`` is
    ``run(parts)``. The window is ``side`` pixels square at (``top``, ``left``) in output pixels, on
    every tensor's grid. Returns e[d] = the largest |window - whole| over the window's pixels ``d``
    pixels in from its nearest edge (d = 0 .. side // 2 - 1).
    """
    height = whole.shape[-2]
    cropped: Dict[str, Optional[torch.Tensor]] = {}
    for name, tensor in parts.items():
        if tensor is None:
            cropped[name] = None
            continue
        factor = height // tensor.shape[-2]
        cropped[name] = tensor[..., top // factor: (top + side) // factor, left // factor: (left + side) // factor]
    difference = (run(cropped) - whole[..., top: top + side, left: left + side]).abs().amax(dim=(0, 1))
    steps = torch.arange(side)
    inward = torch.minimum(steps, side - 1 - steps)
    distance = torch.minimum(inward[:, None], inward[None, :])
    errors = torch.zeros(side // 2, dtype=difference.dtype)
    return errors.scatter_reduce(0, distance.flatten(), difference.flatten(), reduce="amax")


def measure_tile_reach(model: nn.Module, images: Sequence[torch.Tensor], threshold: float,
                       window: int = 192) -> Optional[int]:
    """The finest level's *effective* reach on real pictures: how far in from a window's edge its output
    can still differ from the whole picture's by more than ``threshold``. None if not settled within
    ``window // 2`` pixels (the caller falls back to the analytic bound).

    ``images``: (1, C, H, W) working-space pictures (crops of a shot's frames) with H and W multiples
    of ``model.size_multiple`` and at least ``window`` plus twice ``window // 2`` pixels: each gets
    one ``window``-pixel window in its middle, every edge of it inside the picture, run through
    ``model.finest_pass`` on crops of ``model.coarse_pass``'s tensors and compared with the whole.
    The analytic bound (``model.reach_bound(1)``) counts every path however weak; a trained network's
    influence dies away far sooner, and what matters for exact tiles is only where it falls below the
    output's rounding.
    """
    grid = int(model.finest_size_multiple)
    scale = int(getattr(model, "scale", 1))  # an upscaler's output pixels are 1/scale of an input pixel
    side = window // grid * grid
    worst = torch.zeros(scale * side // 2, dtype=torch.float64)
    with torch.no_grad():
        for image in images:
            height, width = int(image.shape[-2]), int(image.shape[-1])
            top, left = (height - side) // 2 // grid * grid, (width - side) // 2 // grid * grid
            parts = model.coarse_pass(image)
            whole = model.finest_pass(parts)
            errors = window_error_by_distance(model.finest_pass, parts, whole, scale * top, scale * left,
                                              scale * side)
            worst = torch.maximum(worst, errors.double())
    above = torch.nonzero(worst > threshold).flatten()
    if above.numel() == 0:
        return 0
    reach = -(-(int(above.max()) + 1) // scale)  # in input pixels: every pixel further in is within threshold
    return reach if reach < side // 2 else None
