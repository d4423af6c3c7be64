"""What a network costs and how far it sees, measured rather than guessed.

``count_parameters`` and ``macs_per_megapixel`` size the presets against CopyCat's SRN template
(~6.9 M parameters, ~1.27 TMAC per megapixel); ``measure_reach`` checks a network's analytic ``reach``
(which the tiler trusts for its overlaps) by perturbing one pixel and watching how far it spreads.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Dict, Optional

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
    probe = torch.zeros(1, int(model.in_channels), side, side, device=parameter.device, dtype=parameter.dtype)
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
    image = torch.rand(1, int(model.in_channels), side, side, generator=generator, dtype=torch.float64)
    changed = image.clone()
    centre = side // 2
    changed[:, :, centre, centre] += 1.0
    with torch.no_grad():
        difference = (probe_model(changed) - probe_model(image)).abs().amax(dim=(0, 1))
    rows, cols = torch.nonzero(difference > threshold, as_tuple=True)
    if rows.numel() == 0:
        return 0
    return int(torch.maximum((rows - centre).abs(), (cols - centre).abs()).max())


def summary(model: nn.Module) -> Dict[str, Any]:
    """Parameters, GMAC per megapixel, reach and size multiple: what ``duplidog models`` lists."""
    return {
        "parameters": count_parameters(model),
        "gmac_per_megapixel": round(macs_per_megapixel(model) / 1e9, 2),
        "reach": int(getattr(model, "reach", 0)),
        "size_multiple": int(getattr(model, "size_multiple", 1)),
    }
