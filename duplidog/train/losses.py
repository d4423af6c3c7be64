"""The training loss: named terms mixed by configuration, applied to every pyramid level.

``train.losses`` maps a term's name to its weight, e.g. ``{charbonnier: 1.0, gradient: 0.1}``. Terms:

- ``l1``: mean absolute error -- robust, keeps edges sharp (the restoration default since EDSR);
- ``charbonnier``: ``sqrt(d^2 + eps^2)``, L1 with a smooth minimum, so tiny residuals (a paint fix
  that changes a few pixels) still get a useful gradient;
- ``ms_ssim``: 1 - multi-scale SSIM (Wang et al. 2003), structure and contrast rather than values;
  the number of scales adapts to the tile, since training tiles are much smaller than 160 pixels;
- ``gradient``: L1 between horizontal and vertical finite differences: edges in the right place,
  what a roto matte or a paint cleanup is judged by;
- ``frequency``: L1 between FFT amplitudes (Jiang et al., "Focal Frequency Loss", 2021, without the
  focal weighting): keeps grain and fine texture that pixel losses average away;
- ``bce``: binary cross-entropy of a matte network's logits (``MSRN`` with a sigmoid output) against
  the matte, the classification loss of segmentation: a pixel half-way keyed costs it more than a
  distance does. Networks without logits do not use it; the other terms score their sigmoid.
- ``dice``: one minus the soft Dice overlap of each tile's matte with the target's (Milletari et al.,
  "V-Net", 2016), the overlap a roto is judged by (IoU) made differentiable; a statistic of the
  training tile, never of anything the network computes. Only mattes (channels the input lacks) use it.
- ``vgg``: L1 between VGG19 ``features[:36]`` activations (up to relu5_4; ESRGAN's perceptual loss,
  usually weighted 0.1 beside L1). It needs the ImageNet weights on disk and never downloads them.

Every term is computed in float32 outside autocast (SSIM's variances and the FFT are not safe in
16 bits), only inside each tile's context border (the border is there to give the inner pixels their
context; border pixels themselves lack it on their outer side, where at inference the frame goes on,
so scoring them would teach the network to guess what it cannot see), and on each output of the pyramid
against the target averaged down the same way the network averages its input (2x2 mean per level).
An upscaling network's target is s times the input's size: its finest output is scored at that size,
each coarser level against the target averaged down s x 2**level times, the colour path (which works at
the input's size) against it averaged down s times.
Coarser levels count ``coarse_level_weight`` times as much as the level above them.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from duplidog.errors import DuplidogError
from duplidog.train.distributed import whole_batch_sum

VGG19_FILE = "vgg19-dcbb9e9d.pth"  # torchvision's IMAGENET1K_V1 weights, as torch.hub caches them
VGG19_LAYERS = 36  # features[:36]: through relu5_4
VGG19_MIN_SIZE = 16  # features[:36] pools four times
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003
#: What counts as a change the fix makes (in any channel, working-space values), and how far around it the
#: change weight reaches, in pixels.
CHANGE_THRESHOLD, CHANGE_RADIUS = 0.01, 2


# -- individual terms: (prediction, target) float32 (N, C, H, W) -> scalar ----------------------------

def _mean(values: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """The mean of ``values``, or their weighted mean with (N, 1, H, W) ``weights`` broadcast over channels."""
    if weights is None:
        return values.mean()
    weights = weights.expand_as(values)
    # Over the whole batch's weights where several processes share it (``distributed``), else the slice's.
    return (values * weights).sum() / whole_batch_sum(weights.sum()).clamp_min(1e-12)


def l1_loss(prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    return _mean((prediction - target).abs(), weights)


def charbonnier_loss(prediction: torch.Tensor, target: torch.Tensor, eps: float = 1e-3,
                     weights: torch.Tensor | None = None) -> torch.Tensor:
    return _mean(torch.sqrt((prediction - target) ** 2 + eps * eps), weights)


def squared_loss(prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    return _mean((prediction - target) ** 2, weights)


def bce_loss(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    return _mean(F.binary_cross_entropy_with_logits(logits, target.clamp(0.0, 1.0), reduction="none"), weights)


def dice_loss(prediction: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Mean over tiles and channels of 1 - (2 sum(p t) + s) / (sum(p^2) + sum(t^2) + s)."""
    target = target.clamp(0.0, 1.0)
    overlap = (prediction * target).sum(dim=(-2, -1))
    total = (prediction * prediction).sum(dim=(-2, -1)) + (target * target).sum(dim=(-2, -1))
    return (1.0 - (2.0 * overlap + smooth) / (total + smooth)).mean()


def gradient_loss(prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    def dx(t):
        return t[..., :, 1:] - t[..., :, :-1]

    def dy(t):
        return t[..., 1:, :] - t[..., :-1, :]

    wx = None if weights is None else weights[..., :, 1:]
    wy = None if weights is None else weights[..., 1:, :]
    return 0.5 * (_mean((dx(prediction) - dx(target)).abs(), wx) + _mean((dy(prediction) - dy(target)).abs(), wy))


def changed_pixels(source: torch.Tensor, target: torch.Tensor, threshold: float) -> torch.Tensor:
    """(N, 1, H, W) 1 where the fix changes the image (|target - source| above ``threshold`` in any
    channel), or, for target channels the source lacks (a matte), where the target has an edge."""
    target = target.float()
    if source.shape[1] == target.shape[1]:
        return ((target - source.float()).abs().amax(1, keepdim=True) > threshold).float()
    across = F.pad((target[..., :, 1:] - target[..., :, :-1]).abs(), (0, 1))
    down = F.pad((target[..., 1:, :] - target[..., :-1, :]).abs(), (0, 0, 0, 1))
    return ((across + down).amax(1, keepdim=True) > threshold).float()


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """``mask`` grown by ``radius`` pixels (a max over a square)."""
    return F.max_pool2d(mask, 2 * radius + 1, stride=1, padding=radius) if radius > 0 else mask


def change_weights(source: torch.Tensor, target: torch.Tensor, extra: float, threshold: float,
                   radius: int) -> torch.Tensor | None:
    """Per pixel (N, 1, H, W): 1, plus ``extra`` where the fix changes the image (|target - source|
    above ``threshold`` in any channel) or within ``radius`` pixels of such a change.

    A paint-out changes a few percent of a tile: under a plain mean, leaving the objects in costs the
    loss almost nothing next to the texture everywhere else. Where everything changes (a grade, a
    degrain) the weights are uniform and the mean is the plain one. For target channels the source
    lacks (a matte) the weight goes to the target's edges, as the pool's change map has it: a matte's
    information, and its error, is there. None without extra weight.
    """
    if extra <= 0:
        return None
    return 1.0 + extra * dilate(changed_pixels(source, target, threshold), radius)


def frequency_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between 2-D FFT amplitudes (orthonormal, so the scale matches pixel-space L1)."""
    amplitude_p = torch.fft.rfft2(prediction, norm="ortho").abs()
    amplitude_t = torch.fft.rfft2(target, norm="ortho").abs()
    return (amplitude_p - amplitude_t).abs().mean()


def _gaussian_kernel(size: int, sigma: float, channels: int, device, dtype) -> torch.Tensor:
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma * sigma))
    g = g / g.sum()
    return g.view(1, 1, 1, size).repeat(channels, 1, 1, 1)


def _ssim_terms(x: torch.Tensor, y: torch.Tensor, kernel: torch.Tensor, data_range: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-image, per-channel mean SSIM and contrast-structure term (valid windows only)."""
    channels = x.shape[1]
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2

    def blur(t):
        t = F.conv2d(t, kernel, groups=channels)
        return F.conv2d(t, kernel.transpose(-1, -2), groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    sigma_xx = blur(x * x) - mu_x * mu_x
    sigma_yy = blur(y * y) - mu_y * mu_y
    sigma_xy = blur(x * y) - mu_x * mu_y
    cs = (2 * sigma_xy + c2) / (sigma_xx + sigma_yy + c2)
    luminance = (2 * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1)
    return (luminance * cs).mean(dim=(-2, -1)), cs.mean(dim=(-2, -1))


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM of two (N, C, H, W) images (Gaussian window, shrunk to fit small images)."""
    window = min(window, _largest_odd(min(x.shape[-2:])))
    kernel = _gaussian_kernel(window, sigma * window / 11, x.shape[1], x.device, x.dtype)
    return _ssim_terms(x, y, kernel, data_range)[0].mean()


def _largest_odd(n: int) -> int:
    return max(1, n if n % 2 else n - 1)


def ms_ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Multi-scale SSIM with as many of Wang's five scales as the image holds (at least one).

    A scale needs the window to fit; tiles of 64 pixels get 3 scales, 32 pixels 2. The weights of the
    scales used are renormalised to sum to one. Negative terms are floored at a small positive value
    so the fractional powers stay differentiable.
    """
    side = min(x.shape[-2:])
    window = min(window, _largest_odd(side))
    scales = 1
    while scales < len(MS_SSIM_WEIGHTS) and side // 2**scales >= window:
        scales += 1
    weights = torch.tensor(MS_SSIM_WEIGHTS[:scales], device=x.device, dtype=x.dtype)
    weights = weights / weights.sum()
    kernel = _gaussian_kernel(window, sigma * window / 11, x.shape[1], x.device, x.dtype)
    factors = []
    for level in range(scales):
        s, cs = _ssim_terms(x, y, kernel, data_range)
        term = s if level == scales - 1 else cs
        factors.append(term.clamp_min(1e-6) ** weights[level])
        if level < scales - 1:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    return torch.stack(factors).prod(dim=0).mean()


def ms_ssim_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return 1.0 - ms_ssim(prediction, target)


# -- VGG19 perceptual ---------------------------------------------------------------------------------

def default_vgg19_path() -> Path:
    """Where torch.hub keeps torchvision's VGG19 weights (respects $TORCH_HOME)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG19_FILE


def vgg19_weights_path(setting: str | os.PathLike | None) -> Path:
    """The VGG19 weights file to use; a missing file is a DuplidogError that says where to put it."""
    path = Path(setting).expanduser() if setting else default_vgg19_path()
    if not path.is_file():
        raise DuplidogError(
            f"{path}: VGG19 weights not found, needed by the 'vgg' loss; put torchvision's "
            f"{VGG19_FILE} (https://download.pytorch.org/models/{VGG19_FILE}) there or set "
            f"train.vgg19_weights to its path, or remove 'vgg' from train.losses"
        )
    return path


class VGGPerceptualLoss(nn.Module):
    """L1 between frozen VGG19 ``features[:36]`` activations of prediction and target.

    Weights are loaded with ``weights_only=True`` (no code unpickled). The network is built on the
    meta device first, so the 120 M-parameter classifier it does not need is never allocated.
    One-channel outputs (mattes) are repeated to grey RGB; outputs with more than three channels use
    the first three. Runs under the training precision's autocast (it is the costly term).
    """

    def __init__(self, weights_path: Path, autocast: Callable = None):
        super().__init__()
        import torchvision

        with torch.device("meta"):
            features = torchvision.models.vgg19().features[:VGG19_LAYERS]
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        prefix = "features."
        wanted = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        wanted = {k: v for k, v in wanted.items() if int(k.split(".")[0]) < VGG19_LAYERS}
        features = features.to_empty(device="cpu")
        try:
            features.load_state_dict(wanted, strict=True)
        except RuntimeError as exc:
            raise DuplidogError(f"{weights_path}: not torchvision VGG19 weights ({str(exc).splitlines()[0]})") from None
        self.features = features.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self._autocast = autocast

    def _rgb(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        elif x.shape[1] == 2:
            x = torch.cat([x, x[:, :1]], 1)
        return (x[:, :3] - self.mean) / self.std

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        side = min(prediction.shape[-2:])
        if side < VGG19_MIN_SIZE:  # four 2x poolings: smaller crops (coarse levels) are enlarged first
            size = [max(VGG19_MIN_SIZE, round(n * VGG19_MIN_SIZE / side)) for n in prediction.shape[-2:]]
            prediction = F.interpolate(prediction, size=size, mode="bilinear", align_corners=False)
            target = F.interpolate(target, size=size, mode="bilinear", align_corners=False)
        context = self._autocast() if self._autocast is not None else torch.autocast("cpu", enabled=False)
        with context:
            a = self.features(self._rgb(prediction))
            with torch.no_grad():
                b = self.features(self._rgb(target))
        return (a.float() - b.float()).abs().mean()


# -- the mix ------------------------------------------------------------------------------------------

TERMS: Dict[str, Callable] = {
    "l1": l1_loss,
    "charbonnier": charbonnier_loss,
    "squared": squared_loss,
    "ms_ssim": ms_ssim_loss,
    "gradient": gradient_loss,
    "frequency": frequency_loss,
    "vgg": None,  # built by LossMix (needs weights)
    "bce": bce_loss,  # on logits only
    "dice": dice_loss,  # mattes only
}


def colour_weights(source: torch.Tensor, target: torch.Tensor, threshold: float, radius: int,
                   local_fraction: float = 0.5) -> torch.Tensor:
    """Per pixel (N, 1, H, W): which pixels the colour path learns from (``train.colour_split``).

    A tile where the fix changes less than ``local_fraction`` of the pixels holds a local edit (a
    paint-out, a blemish): there the colour path learns only from the pixels the edit leaves alone (and
    not within ``radius`` of it), so it cannot learn to key the painted-out objects' colours -- a per-pixel
    rule that also hits highlights and shadows of those colours elsewhere. A tile the fix changes nearly
    everywhere (a grade, a degrain) teaches the colour path from every pixel. Without corresponding
    channels (a matte from RGB) every pixel counts.
    """
    ones = torch.ones_like(target[:, :1], dtype=torch.float32)
    if source.shape[1] != target.shape[1]:
        return ones
    changed = changed_pixels(source, target, threshold)
    local = changed.mean(dim=(1, 2, 3), keepdim=True) < local_fraction
    return torch.where(local, 1.0 - dilate(changed, radius), ones)


#: Terms that take per-pixel weights (the others are statistics of the whole tile).
WEIGHTED_TERMS = ("l1", "charbonnier", "squared", "gradient", "bce")


def downsample_to(target: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The target at a pyramid level's size: k x k means, as the network's 2x2 average pooling per level."""
    height, width = int(size[0]), int(size[1])
    if (height, width) == tuple(target.shape[-2:]):
        return target
    factor = target.shape[-2] // height
    if factor * height == target.shape[-2] and factor * width == target.shape[-1]:
        return F.avg_pool2d(target, factor)
    return F.interpolate(target, size=(height, width), mode="area")


def at_size_of(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``source`` enlarged bilinearly to ``target``'s size (an upscaling network's), or itself."""
    if source.shape[-2:] == target.shape[-2:]:
        return source
    return F.interpolate(source, size=tuple(target.shape[-2:]), mode="bilinear", align_corners=False)


def crop_border(x: torch.Tensor, border: int) -> torch.Tensor:
    if border <= 0:
        return x
    return x[..., border:-border, border:-border]


class LossMix(nn.Module):
    """Weighted sum of named terms over every pyramid level, inside the tiles' context border.

    Args:
        weights: term name -> weight (terms with weight 0 are skipped).
        border: context border of the pool's tiles, in input-tile pixels; excluded from the loss.
        coarse_level_weight: a level's weight relative to the next finer one (finest is 1).
        charbonnier_eps: the epsilon of the Charbonnier term.
        change_weight: extra weight of the pixels the fix changes, in the pixel and gradient terms
            (``change_weights``; 0: a plain mean).
        change_threshold, change_radius: what counts as changed, and how far around it the weight reaches.
        matte_edge_weight: ``change_weight`` for a network whose outputs are channels its input lacks (a
            matte from RGB), where the weight goes to the matte's edges: the interior of a shape needs a
            share of the loss too, so its best weight is lower than a paint-out's.
        colour_split: score the colour path's own output in a term of its own, ``colour`` (``colour_weights``),
            for a network trained with its colour path detached from the rest (``MSRN.training_outputs``).
            The term is a squared error: a per-pixel map is best fitted to the mean target of each colour
            (better than Charbonnier on the real-photograph look, docs/quality.md: rare hues' large errors count).
        vgg19_weights: path of the VGG19 weights ("" = torch hub cache), read only if 'vgg' is used.
        autocast: context factory for the VGG term's forward pass.
        logits: the network's outputs are logits (a sigmoid matte network): ``bce`` scores them, every
            other term their sigmoid. Without logits ``bce`` is not used.
    """

    def __init__(self, weights: Mapping[str, float], border: int, coarse_level_weight: float = 0.5,
                 charbonnier_eps: float = 1e-3, vgg19_weights: str = "", autocast: Callable = None,
                 change_weight: float = 0.0, change_threshold: float = CHANGE_THRESHOLD,
                 change_radius: int = CHANGE_RADIUS,
                 colour_split: bool = False, logits: bool = False, matte_edge_weight: float | None = None):
        super().__init__()
        self.matte_edge_weight = float(change_weight if matte_edge_weight is None else matte_edge_weight)
        self.logits = bool(logits)
        self.colour_split = bool(colour_split)
        self.change_weight, self.change_threshold = float(change_weight), float(change_threshold)
        self.change_radius = int(change_radius)
        unknown = sorted(set(weights) - set(TERMS))
        if unknown:
            raise DuplidogError(f"train.losses: unknown term(s) {', '.join(unknown)}; known: {', '.join(TERMS)}")
        self.weights = {name: float(w) for name, w in weights.items()
                        if float(w) != 0.0 and (name != "bce" or self.logits)}
        if not self.weights:
            raise DuplidogError("train.losses: every term has weight 0; give at least one a positive weight")
        self.border = int(border)
        self.coarse_level_weight = float(coarse_level_weight)
        self.charbonnier_eps = float(charbonnier_eps)
        self.vgg = VGGPerceptualLoss(vgg19_weights_path(vgg19_weights), autocast) if "vgg" in self.weights else None

    @property
    def names(self) -> List[str]:
        """The terms a step reports."""
        return list(self.weights) + (["colour"] if self.colour_split else [])

    def term(self, name: str, prediction: torch.Tensor, target: torch.Tensor,
             weights: torch.Tensor | None = None) -> torch.Tensor:
        if name == "vgg":
            return self.vgg(prediction, target)
        if name == "charbonnier":
            return charbonnier_loss(prediction, target, self.charbonnier_eps, weights)
        if name in WEIGHTED_TERMS:
            return TERMS[name](prediction, target, weights=weights)
        return TERMS[name](prediction, target)

    def forward(self, outputs: List[torch.Tensor] | torch.Tensor, target: torch.Tensor,
                input_size: int, source: torch.Tensor | None = None,
                colour_output: torch.Tensor | None = None) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Total loss and each term's (level-weighted) value; ``outputs`` coarse to fine.

        ``input_size``: the input tiles' side, which the border is measured in. ``source``: the input
        tiles, from which the change weights are found (without it, plain means). ``colour_output``: the
        colour path's own output, scored by the ``colour`` term when ``colour_split`` is on.
        """
        if isinstance(outputs, torch.Tensor):
            outputs = [outputs]
        target = target.float()
        matte = source is not None and source.shape[1] != target.shape[1]  # channels the input lacks
        extra = self.matte_edge_weight if matte else self.change_weight
        # Upscaling: what the fix changes is judged against the source enlarged to the target's size.
        enlarged = None if source is None else at_size_of(source.float(), target)
        weights = None if enlarged is None else change_weights(enlarged, target, extra, self.change_threshold,
                                                                self.change_radius)
        parts: Dict[str, torch.Tensor] = {name: 0.0 for name in self.weights}
        with torch.autocast(outputs[-1].device.type, enabled=False):
            for level, output in enumerate(outputs):
                level_weight = self.coarse_level_weight ** (len(outputs) - 1 - level)
                if level_weight == 0.0:
                    continue
                size = output.shape[-2:]
                # The border scales with the level; rounding up never lets a border pixel in.
                border = math.ceil(self.border * size[0] / input_size)
                raw = crop_border(output.float(), border)
                prediction = torch.sigmoid(raw) if self.logits else raw
                wanted = crop_border(downsample_to(target, size), border)
                level_weights = None if weights is None else crop_border(downsample_to(weights, size), border)
                if prediction.shape[-1] < 1 or prediction.shape[-2] < 1:
                    continue
                for name in self.weights:
                    if name == "dice" and not matte:
                        continue
                    scored = raw if name == "bce" else prediction
                    parts[name] = parts[name] + level_weight * self.term(name, scored, wanted, level_weights)
            if self.colour_split and colour_output is not None:
                border = self.border
                wanted = downsample_to(target, colour_output.shape[-2:])  # upscaling: at the input's size
                mask = None if source is None else colour_weights(source, wanted, self.change_threshold,
                                                                  2 * self.change_radius)
                difference = crop_border(colour_output.float(), border) - crop_border(wanted, border)
                parts["colour"] = _mean(difference * difference, None if mask is None else crop_border(mask, border))
        total = sum(self.weights.get(name, 1.0) * value for name, value in parts.items())
        return total, parts
