"""Fit the network's colour path alone, on pixels, before the network trains.

The colour path (curves, a matrix and an MLP per pixel, see ``duplidog.model.msrn``) is a function of a
pixel's few channels. In the network's training it takes one step per batch of tiles, and a short
budget holds a few hundred of those: far too few for such a function (a hue-dependent grade needs
thousands of Adam steps), while each step costs a whole encoder-decoder pass. On pixels drawn from the
pool, thousands of its steps take seconds. The network then starts from a colour path that already
carries the per-pixel part of the fix and learns what needs context, and the colour path goes on
learning, on its own loss, during the network's training (``train.colour_split``).

It learns from the same pixels as the colour path's loss in training (``losses.colour_weights``): on
tiles with a local edit only the untouched ones, so a paint-out never teaches it to key the removed
objects' colours. A fix that leaves most pixels alone (a paint-out, a beauty fix) has no per-pixel
part beyond the identity the colour path starts as, so the fit runs only where the fix changes most
pixels (``needs_fit``). Everything here is per pixel; the network's tiles and reach are unaffected.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Dict, NamedTuple, Optional

import numpy as np
import torch

from duplidog import temporal
from duplidog.train.data import evenly_spaced, read_tiles
from duplidog.train.losses import changed_pixels, colour_weights, crop_border, downsample_to

#: Tiles read from the pool for the pixel sample (evenly spaced, so a resumed or repeated run draws the same).
SAMPLE_TILES = 96
#: Pixels kept from them, and pixels per step.
SAMPLE_PIXELS = 1 << 20
PIXELS_PER_STEP = 2048
#: The fit's share of a run: at most this share of ``train.max_minutes``, and at most this many of its
#: steps per step of the network's training (a step on 2048 pixels costs a few hundredths of one on tiles).
BUDGET_SHARE = 0.1
STEPS_PER_NETWORK_STEP = 25
#: The fit runs where the fix changes at least this share of the sampled tiles' pixels.
CHANGED_SHARE = 0.5
#: A colour path that starts as the identity keeps its fit where the fit explains at least this share of
#: the change's squared error. Where it explains less, the fix is mostly not a function of each pixel's
#: colour (grain: the best such function only shrinks the noise with the picture), and the fitted path
#: would hand the encoder-decoder a flattened base to undo; it goes back to the identity and stays there.
KEEP_SHARE = 0.5
#: A fit that explains under half of KEEP_SHARE at this share of its steps will not be kept: it ends there,
#: and its seconds go to the network's training.
CHECK_AT = 0.25


class PixelSample(NamedTuple):
    source: torch.Tensor  # (P, C) pixels the colour path may learn from
    target: torch.Tensor
    changed_share: float  # of all the sampled tiles' pixels (borders aside), the share the fix changes

    @property
    def mostly_changed(self) -> bool:
        return self.changed_share >= CHANGED_SHARE

    @property
    def needs_fit(self) -> bool:
        return self.mostly_changed and self.source.shape[0] > 0


def sample_pixels(group, border: int, threshold: float, radius: int, seed: int,
                  max_tiles: int = SAMPLE_TILES, max_pixels: int = SAMPLE_PIXELS) -> PixelSample:
    """The pixels the colour path may learn from, from up to ``max_tiles`` evenly spaced pool tiles.

    The tiles' context borders are left out, as the loss leaves them out.
    """
    from duplidog.core.pool_store import pool_temporal_frames

    n_tiles = int(group["source"].shape[0])
    picks = evenly_spaced(n_tiles, max_tiles)
    source = torch.from_numpy(read_tiles(group["source"], picks).astype(np.float32))
    # A temporal pool's tiles: the colour path reads the keyframe's own channels, the first of each tile.
    source = temporal.centre(source, source.shape[1] // temporal.frame_count(pool_temporal_frames(group)))
    target = torch.from_numpy(read_tiles(group["target"], picks).astype(np.float32))
    # An upscaling pool's targets, averaged down to the source's size: the colour path works at that size.
    target = downsample_to(target, source.shape[-2:])
    keep = colour_weights(source, target, threshold, radius) > 0.5
    changed = changed_pixels(source, target, threshold)
    source, target, keep, changed = (crop_border(t, border) for t in (source, target, keep, changed))
    changed_share = float(changed.mean())
    keep = keep[:, 0].reshape(-1)
    source = source.permute(0, 2, 3, 1).reshape(-1, source.shape[1])[keep]
    target = target.permute(0, 2, 3, 1).reshape(-1, target.shape[1])[keep]
    if source.shape[0] > max_pixels:
        generator = torch.Generator().manual_seed(seed)
        chosen = torch.randperm(source.shape[0], generator=generator)[:max_pixels]
        source, target = source[chosen], target[chosen]
    return PixelSample(source, target, changed_share)


def fit_colour_path(colour_path: torch.nn.Module, source: torch.Tensor, target: torch.Tensor,
                    parameter_groups: list, steps: int, seed: int, seconds: Optional[float] = None,
                    clock: Callable[[], float] = time.monotonic,
                    give_up: Optional[Callable[[float], bool]] = None) -> Dict[str, float]:
    """Adam on the squared error of ``colour_path(source)`` against ``target`` for ``steps`` steps.

    The learning rate follows a cosine over the steps, or over ``seconds`` where those run out first
    (measured by ``clock``), so a fit cut short by its time still ends annealed. ``give_up(error)``,
    asked once at ``CHECK_AT`` of the fit, may end it there (``gave_up``: a fit that will not be kept
    need not spend the budget's seconds). Returns the steps taken, the seconds and the squared error on
    the whole sample before and after.
    """
    device = next(colour_path.parameters()).device
    source, target = source.to(device), target.to(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    optimizer = torch.optim.Adam(parameter_groups)
    base_lrs = [group["lr"] for group in optimizer.param_groups]

    def as_image(pixels: torch.Tensor) -> torch.Tensor:  # (P, C) -> (1, C, P, 1): the path's 1x1 convolutions
        return pixels.t().unsqueeze(0).unsqueeze(-1)

    def error() -> float:
        with torch.no_grad():
            return float(sum(((colour_path(as_image(s)) - as_image(t)) ** 2).sum()
                             for s, t in zip(source.split(1 << 16), target.split(1 << 16))) / target.numel())

    before = error()
    started = clock()
    step = 0
    checked = give_up is None
    while step < steps:
        elapsed = clock() - started
        progress = max(step / steps, elapsed / seconds if seconds else 0.0)
        if progress >= 1.0:
            break
        if not checked and progress >= CHECK_AT:
            checked = True
            now = error()
            if give_up(now):
                return {"steps": step, "seconds": clock() - started, "error_before": before, "error_after": now,
                        "gave_up": True}
        for group, base in zip(optimizer.param_groups, base_lrs):
            group["lr"] = base * 0.5 * (1.0 + math.cos(math.pi * progress))
        chosen = torch.randint(0, source.shape[0], (PIXELS_PER_STEP,), generator=generator, device=device)
        loss = ((colour_path(as_image(source[chosen])) - as_image(target[chosen])) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
    return {"steps": step, "seconds": clock() - started, "error_before": before, "error_after": error(),
            "gave_up": False}


def explained_share(source: torch.Tensor, target: torch.Tensor, error_after: float) -> Optional[float]:
    """The share of the change's squared error (that of leaving the pixels alone) a fit removed, where
    source and target have the same channels; None otherwise."""
    if source.shape[1] != target.shape[1] or source.shape[0] == 0:
        return None
    change = float(sum(((s - t) ** 2).sum() for s, t in zip(source.split(1 << 16), target.split(1 << 16)))
                   / target.numel())
    return 1.0 - error_after / change if change > 0 else 1.0


def hold_colour_path(colour_path: torch.nn.Module, state: Optional[dict] = None) -> None:
    """Keep the colour path as it is (or at ``state``) for the rest of the run: no gradients, no steps."""
    if state is not None:
        colour_path.load_state_dict(state)
    for parameter in colour_path.parameters():
        parameter.requires_grad_(False)


def colour_path_held(model: torch.nn.Module) -> bool:
    colour_path = getattr(model, "colour", None)
    return colour_path is not None and not any(p.requires_grad for p in colour_path.parameters())
