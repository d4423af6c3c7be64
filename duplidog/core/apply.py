"""Run a trained network over one frame: whole-frame when it fits the device, exact tiles when not.

The frame stays on the CPU; only what the network needs right now goes to the device (the whole
padded frame when it fits, otherwise one batch of tiles at a time), and only the weighted part of each
tile's output comes back. Tiles are laid out by ``duplidog.core.tiling`` so that tiled and
whole-frame results agree to rounding: see that module for why.

Deliberate choices, each the fix for a known fault of other tilers:
* no clamping: scene-linear values above 1 and below 0 pass through;
* out-of-memory is never caught and retried smaller -- ``tile="auto"`` sizes from a memory estimate
  up front, and a wrong estimate is a bug to see, not a silent slowdown;
* the network's train/eval mode is restored afterwards, so training can validate through here.
"""

from __future__ import annotations

import logging
import math
import weakref
from dataclasses import dataclass

import numpy as np
import torch

from duplidog.core.mirror import mirror_pad
from duplidog.core.runtime import autocast, choose_precision, free_bytes
from duplidog.errors import DuplidogError
from duplidog.core.ensemble import TRANSFORMS, model_copies, run_ensemble, transform, untransform
from duplidog.core.tiling import (
    TileGrid, default_overlap, frame_padding, plan_tiles, round_down, round_up, smallest_tile,
)

log = logging.getLogger(__name__)

# Whole-frame on the CPU up to this many (padded) pixels when the free memory cannot be read.
FALLBACK_CPU_PIXEL_BUDGET = 4_194_304
# The share of free device memory a batch of tiles (or a whole frame) may plan to use.
DEFAULT_MEMORY_FRACTION = 0.7
# How much a tile's missing context may still change the pixels it delivers: an eighth of half float's
# rounding step at 1.0 (2**-11), so tiled and whole-frame outputs round to the same half values, or to
# neighbours where a value sits on a rounding boundary.
REACH_THRESHOLD = 2.0**-14
# The side of the pieces of a frame the finest level's reach is measured on (each with a window of half
# that in its middle, so reaches up to a quarter of it can be seen), and how many.
REACH_PROBE_SIDE = 256
REACH_PROBES = 4


@dataclass(frozen=True)
class RunPlan:
    """How one frame will run: ``grid`` is None for whole-frame; ``split``: the coarse levels over the
    whole frame and only the finest level in the grid's tiles (see ``splits_levels``)."""

    grid: TileGrid | None
    batch_size: int
    dtype: torch.dtype
    split: bool = False


def resolve_edge_context(model: torch.nn.Module, setting: str | int) -> int:
    """The mirrored context around each frame: ``"auto"`` is the context the model was trained with
    (``model.edge_context``, which ``duplidog.core.card.configure_inference`` sets; 0 when unset)."""
    if setting == "auto":
        return int(getattr(model, "edge_context", 0) or 0)
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 0:
        raise DuplidogError(f"infer.edge_context: must be 'auto' or a whole number of pixels >= 0, got {setting!r}")
    return setting


def model_geometry(model: torch.nn.Module) -> tuple[int, int, int]:
    """(size_multiple, reach, scale) of a duplidog network; scale is 1 unless the model says otherwise."""
    try:
        multiple = int(model.size_multiple)
        reach = int(math.ceil(model.reach))
    except AttributeError:
        raise TypeError("apply_model needs a network with size_multiple and reach attributes") from None
    return max(1, multiple), max(0, reach), int(getattr(model, "scale", 1))


def splits_levels(model: torch.nn.Module) -> bool:
    """Whether the network can run its coarse levels over the whole frame and its finest level in tiles
    (``coarse_pass``/``finest_pass``, as duplidog's MSRN has).

    That is how duplidog tiles such a network. The finest level's reach, given the coarse levels'
    results, is a small part of the whole network's (MSRN small: 78 pixels against 552 analytically,
    about 24 against 96 where the influence drops below half-float rounding), so the tiles' overlap --
    the work done twice -- shrinks by as much; the coarse levels cost a third of the finest one and
    run once, over the frame at a quarter and a sixteenth of its pixels.
    """
    return callable(getattr(model, "coarse_pass", None)) and callable(getattr(model, "finest_pass", None))


def tile_geometry(model: torch.nn.Module, split: bool, tile_reach: int | None = None) -> tuple[int, int]:
    """(grid, reach) tiles are laid out with: the finest level's when ``split`` (``tile_reach``, measured,
    or else its analytic bound), otherwise the whole network's ``size_multiple`` and ``reach``."""
    if split:
        reach = tile_reach if tile_reach is not None else int(math.ceil(model.reach_bound(1)))
        return int(model.finest_size_multiple), int(reach)
    multiple, reach, _ = model_geometry(model)
    return multiple, reach


def measure_tile_reach(model: torch.nn.Module, image: torch.Tensor, edge_context: str | int = "auto",
                       device: torch.device | None = None) -> int | None:
    """The finest level's effective reach on this frame (a (1, C, H, W) working-space CPU tensor), with
    a grid step of margin: what split tiling can use for ``tile_reach``. None when the network does not
    split, or the influence did not die away within the probes (tiling then keeps the analytic bound).

    Measured by ``duplidog.model.analysis.measure_tile_reach`` on up to ``REACH_PROBES`` pieces of the
    mirror-padded frame, in float32 whatever the inference precision (reduced-precision noise would
    hide the decay). Cheap next to a frame: a quarter of a megapixel through the network.
    """
    from duplidog.model.analysis import measure_tile_reach as measure

    if not splits_levels(model):
        return None
    _check_image(image)
    device = torch.device(device) if device is not None else model_device(model)
    multiple, _, _ = model_geometry(model)
    grid = int(model.finest_size_multiple)
    _, _, height, width = image.shape
    padding = frame_padding(height, width, multiple, resolve_edge_context(model, edge_context))
    padded = mirror_pad(image.detach().to("cpu", torch.float32), padding.top, padding.bottom, padding.left,
                        padding.right)
    padded_h, padded_w = padding.padded_size(height, width)
    side = round_down(min(REACH_PROBE_SIDE, padded_h, padded_w), multiple)
    if side < 4 * grid:
        return None
    # Probes spread over the frame: the middles of its quarters (or of the frame, where it is small).
    places = sorted({(round_down(max(0, min(padded_h - side, cy - side // 2)), multiple),
                      round_down(max(0, min(padded_w - side, cx - side // 2)), multiple))
                     for cy in (padded_h // 4, 3 * padded_h // 4) for cx in (padded_w // 4, 3 * padded_w // 4)})
    probes = [padded[..., top: top + side, left: left + side].to(device) for top, left in places[:REACH_PROBES]]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            reach = measure(model, probes, REACH_THRESHOLD, window=side // 2)
    finally:
        model.train(was_training)
    return None if reach is None else round_up(reach, grid) + grid


def model_device(model: torch.nn.Module) -> torch.device:
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


# ---------------------------------------------------------------------------------------------------
# Memory: how many bytes of activations a pixel costs, measured once per model, device and dtype.

_bytes_per_pixel_cache: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


def activation_bytes_per_pixel(model: torch.nn.Module, channels: int, device: torch.device,
                               dtype: torch.dtype) -> float:
    """Peak activation memory per input pixel, from a probe run on the device.

    On CUDA the probe's peak allocation is measured directly. Elsewhere (CPU, MPS) there is no peak
    counter, so the widest activation seen by forward hooks stands in, times twelve for the tensors
    alive at once around it (measured on the CPU: MSRN small peaks at ~300 bytes per pixel, 9.4 times
    its widest activation of 32).
    """
    key = (str(device), str(dtype), channels)
    cache = _bytes_per_pixel_cache.setdefault(model, {})
    if key in cache:
        return cache[key]
    multiple, _, _ = model_geometry(model)
    side = round_up(max(256, 4 * multiple), multiple)  # per-pixel cost; fixed overheads make it err high
    probe = torch.zeros(1, channels, side, side, device=device)
    pixels = side * side
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        with torch.inference_mode(), autocast(device.type, dtype):
            model(probe)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        value = max(peak / pixels, 64.0)
    else:
        widest = [0]

        def watch(_module, _inputs, output):
            if isinstance(output, torch.Tensor):
                widest[0] = max(widest[0], output.numel() * output.element_size())

        handles = [m.register_forward_hook(watch) for m in model.modules()]
        try:
            with torch.inference_mode(), autocast(device.type, dtype):
                model(probe)
        finally:
            for handle in handles:
                handle.remove()
        value = max(12.0 * widest[0] / pixels, 64.0)
    cache[key] = value
    return value


def plan_run(
    model: torch.nn.Module,
    image_shape: tuple[int, ...],
    tile: str | int = "auto",
    overlap: int | None = None,
    batch_size: int = 4,
    device: torch.device | None = None,
    precision: str = "auto",
    cpu_pixel_budget: int | None = None,
    memory_fraction: float = DEFAULT_MEMORY_FRACTION,
    edge_context: str | int = "auto",
    tile_reach: int | None = None,
) -> RunPlan:
    """Decide whole-frame or tiles (and the tile size and batch) for a frame of ``image_shape``.

    ``tile="none"``: whole frame. An integer: tiles of that size (rounded down to the grid, and
    enlarged to the smallest the overlap allows). ``"auto"``: whole frame if the padded frame's
    estimated activations fit ``memory_fraction`` of the device's free memory (on the CPU:
    ``cpu_pixel_budget`` padded pixels, or when that is None, ``memory_fraction`` of the available
    RAM), else the largest tiles whose batch fits, with the batch shrunk before the tile gets smaller
    than twice the overlap.

    A network that ``splits_levels`` is tiled split (its coarse levels over the whole frame, the finest
    level in tiles, with ``tile_reach`` -- see ``measure_tile_reach`` -- or else the finest level's
    analytic reach), unless under "auto" even its coarse levels would not fit: then the whole network
    runs in tiles with its analytic reach.
    """
    device = torch.device(device) if device is not None else model_device(model)
    # Inference's policy: the CPU computes in float32 whatever the setting.
    dtype = choose_precision(device, precision, key="infer.precision", reduced_on_cpu=False).dtype
    multiple, _, scale = model_geometry(model)
    _, channels, height, width = image_shape
    edge_context = resolve_edge_context(model, edge_context)
    padding = frame_padding(height, width, multiple, edge_context)
    padded_h, padded_w = padding.padded_size(height, width)
    if batch_size < 1:
        raise DuplidogError(f"infer.batch_size: must be at least 1, got {batch_size}")
    split = splits_levels(model)

    def tiles(side: int, split: bool, batch: int) -> RunPlan:
        grid_multiple, reach = tile_geometry(model, split, tile_reach)
        grid = plan_tiles(height, width, side, reach, grid_multiple, overlap, scale, edge_context, multiple)
        return RunPlan(grid if len(grid) > 1 else None, batch, dtype, split and len(grid) > 1)

    if tile == "none":
        return RunPlan(None, 1, dtype)
    if isinstance(tile, str) and tile != "auto":
        try:
            tile = int(tile)
        except ValueError:
            raise DuplidogError(f"infer.tile: {tile!r} is not 'auto', 'none' or a tile size in pixels") from None
    if isinstance(tile, int):
        return tiles(tile, split, batch_size)

    # "auto": compare the padded frame's cost with what the device has.
    if device.type == "cpu" and cpu_pixel_budget is not None:
        budget_pixels = int(cpu_pixel_budget)
    else:
        free = free_bytes(device)
        if free is None:
            budget_pixels = FALLBACK_CPU_PIXEL_BUDGET
        else:
            per_pixel = activation_bytes_per_pixel(model, channels, device, dtype) * scale * scale
            budget_pixels = int(free * memory_fraction / per_pixel)
    if padded_h * padded_w <= budget_pixels:
        return RunPlan(None, 1, dtype)
    # The coarse levels run at a quarter of the pixels and below; the finest level's inputs stay beside them.
    split = split and padded_h * padded_w // 2 <= budget_pixels
    grid_multiple, reach = tile_geometry(model, split, tile_reach)
    smallest = smallest_tile(overlap if overlap is not None else default_overlap(reach, grid_multiple), grid_multiple)
    preferred = 2 * smallest  # below this, overlap dominates the work; shrink the batch first
    batch = batch_size
    side = round_down(int(math.sqrt(budget_pixels / batch)), grid_multiple)
    while side < preferred and batch > 1:
        batch = max(1, batch // 2)
        side = round_down(int(math.sqrt(budget_pixels / batch)), grid_multiple)
    plan = tiles(max(side, smallest), split, batch)
    if plan.grid is not None:
        log.debug("auto tiling: %d tiles of %dx%d, batch %d", len(plan.grid), plan.grid.tile_height,
                  plan.grid.tile_width, batch)
    return plan


# ---------------------------------------------------------------------------------------------------


def _check_image(image: torch.Tensor) -> None:
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[0] != 1:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"apply_model expects a (1, C, H, W) tensor, got {shape}")


def _run_whole(model, padded: torch.Tensor, padding, height, width, scale, device, dtype, copies) -> torch.Tensor:
    with autocast(device.type, dtype):
        out = run_ensemble(model, padded.to(device), copies)
    top, left = scale * padding.top, scale * padding.left
    out = out[..., top: top + scale * height, left: left + scale * width]
    return out.to("cpu", torch.float32)


def _run_tiles(model, padded: torch.Tensor, grid: TileGrid, height, width, scale, batch_size, device,
               dtype, copies) -> torch.Tensor:
    """Run the grid's tiles in batches and blend each one's weighted kept part into the output."""
    output: torch.Tensor | None = None
    pin = device.type == "cuda"
    tiles = list(grid.tiles())
    for start in range(0, len(tiles), batch_size):
        batch = tiles[start: start + batch_size]
        inputs = torch.stack(
            [padded[0, :, row.origin: row.origin + row.size, col.origin: col.origin + col.size] for row, col in batch]
        )
        if pin:
            inputs = inputs.pin_memory()
        with autocast(device.type, dtype):
            outputs = run_ensemble(model, inputs.to(device, non_blocking=pin), copies)
        output = _blend(output, outputs, batch, grid, height, width, scale)
    return output


def _blend(output: torch.Tensor | None, outputs: torch.Tensor, batch, grid: TileGrid, height, width,
           scale) -> torch.Tensor:
    """Add a batch of tile results, weighted by their blend ramps, into ``output`` (made on the first
    batch, ``scale`` times the frame's size)."""
    for k, (row, col) in enumerate(batch):
        # The tile's output starts at scale*origin in padded output pixels; keep_* are visible pixels.
        y0 = row.keep_start + scale * (grid.padding.top - row.origin)
        x0 = col.keep_start + scale * (grid.padding.left - col.origin)
        part = outputs[k, :, y0: y0 + row.keep_stop - row.keep_start, x0: x0 + col.keep_stop - col.keep_start]
        part = part.to("cpu", torch.float32)
        if output is None:
            output = torch.zeros(1, part.shape[0], scale * height, scale * width, dtype=torch.float32)
        weight = torch.from_numpy(np.outer(row.weight, col.weight))
        output[0, :, row.keep_start: row.keep_stop, col.keep_start: col.keep_stop] += part * weight
    return output


def _run_split_tiles(model, padded: torch.Tensor, grid: TileGrid, height, width, scale, batch_size, device,
                     dtype, copies) -> torch.Tensor:
    """The coarse levels over the whole padded frame, then the finest level tile by tile on windows of
    their results (``coarse_pass``/``finest_pass``), blended like whole-network tiles.

    With an ensemble each copy's coarse pass runs on the transformed frame and is mapped back, so the
    same windows serve every copy: a window is transformed, run and mapped back (the padded frame's
    sides are multiples of the grid, so transformed windows stay on it).
    """
    frame = padded.to(device)
    copy_parts = []
    with autocast(device.type, dtype):
        for k in TRANSFORMS[copies]:
            parts = model.coarse_pass(transform(frame, k))
            copy_parts.append((k, {name: None if t is None else untransform(t, k) for name, t in parts.items()}))
    del frame
    padded_h = padded.shape[-2]

    def window(parts, row, col):
        out = {}
        for name, tensor in parts.items():
            if tensor is None:
                out[name] = None
                continue
            f = padded_h // tensor.shape[-2]  # the hidden state runs at 1/grid of the frame's resolution
            out[name] = tensor[..., row.origin // f: (row.origin + row.size) // f,
                               col.origin // f: (col.origin + col.size) // f]
        return out

    def finest(batch):
        total = None
        for k, parts in copy_parts:
            windows = [window(parts, row, col) for row, col in batch]
            stacked = {name: None if windows[0][name] is None else
                       transform(torch.cat([w[name] for w in windows]), k) for name in windows[0]}
            out = untransform(model.finest_pass(stacked), k).float()
            total = out if total is None else total + out
        return total if copies == 1 else total / copies

    output: torch.Tensor | None = None
    tiles = list(grid.tiles())
    for start in range(0, len(tiles), batch_size):
        batch = tiles[start: start + batch_size]
        with autocast(device.type, dtype):
            outputs = finest(batch)
        output = _blend(output, outputs, batch, grid, height, width, scale)
    return output


def apply_model(
    model: torch.nn.Module,
    image: torch.Tensor,
    tile: str | int = "auto",
    overlap: int | None = None,
    batch_size: int = 4,
    device: str | torch.device | None = None,
    precision: str = "auto",
    cpu_pixel_budget: int | None = None,
    memory_fraction: float = DEFAULT_MEMORY_FRACTION,
    edge_context: str | int = "auto",
    ensemble: str | int = "auto",
    tile_reach: int | None = None,
) -> torch.Tensor:
    """Run ``model`` over a (1, C, H, W) float32 working-space CPU tensor; returns (1, C', sH, sW) CPU float32.

    Args:
        tile: "auto" (whole frame when it fits the device, else tiles), "none" (whole frame), or a
            tile size in pixels (rounded down to the grid; enlarged to the overlap plus one grid step
            where smaller).
        overlap: pixels neighbouring tiles share; default twice the reach plus a ramp, and never less
            than twice the reach plus one.
        batch_size: tiles per forward pass (auto tiling may use fewer to keep tiles large).
        device: where the network runs; default the device of the model's parameters. The model is
            moved there if it is elsewhere.
        precision: "auto" (bf16 autocast on GPUs that support it, else fp16), "fp32", "bf16" or
            "fp16". The CPU always computes in fp32 (reduced precision there is slower, not faster).
        cpu_pixel_budget: on the CPU, "auto" runs whole-frame up to this many padded pixels; None:
            as far as ``memory_fraction`` of the available RAM allows.
        memory_fraction: the share of free device memory (or RAM) "auto" plans to use.
        edge_context: mirrored pixels added around the frame before the network sees it (then
            cropped off). "auto": the model's training context (the tile pool's border: the loss
            never scored pixels with less context than that, so a frame edge without it is where a
            network errs most); 0 lets the network meet the frame edge unpadded.
        ensemble: copies of the input, flipped and turned, whose results are averaged (1, 2, 4, 8;
            ``duplidog.core.ensemble``); "auto": 8 for a network whose outputs its input lacks (a
            matte), 1 otherwise.
        tile_reach: for a network that ``splits_levels``, the finest level's reach its tiles overlap
            by (``measure_tile_reach``); None: measured on this frame when it is tiled. A caller
            running many frames measures once and passes it, so every frame tiles alike.
    """
    _check_image(image)
    edge_context = resolve_edge_context(model, edge_context)
    copies = model_copies(ensemble, model, image.shape[1])
    device = torch.device(device) if device is not None else model_device(model)
    if model_device(model) != device:
        model.to(device)
    image = image.detach().to("cpu", torch.float32)
    _, _, height, width = image.shape
    multiple, _, scale = model_geometry(model)
    # Planned with the shortest reach first: a frame that would run whole even so needs no measurement.
    plan = plan_run(model, tuple(image.shape), tile, overlap, batch_size, device, precision,
                    cpu_pixel_budget, memory_fraction, edge_context, 0 if tile_reach is None else tile_reach)
    if plan.split and tile_reach is None:
        tile_reach = measure_tile_reach(model, image, edge_context, device)
    plan = plan_run(model, tuple(image.shape), tile, overlap, batch_size, device, precision,
                    cpu_pixel_budget, memory_fraction, edge_context, tile_reach)
    padding = plan.grid.padding if plan.grid is not None else frame_padding(height, width, multiple, edge_context)
    padded = mirror_pad(image, padding.top, padding.bottom, padding.left, padding.right)

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            if plan.grid is None:
                return _run_whole(model, padded, padding, height, width, scale, device, plan.dtype, copies)
            if plan.split:
                return _run_split_tiles(model, padded, plan.grid, height, width, scale, plan.batch_size, device,
                                        plan.dtype, copies)
            return _run_tiles(model, padded, plan.grid, height, width, scale, plan.batch_size, device, plan.dtype,
                              copies)
    finally:
        model.train(was_training)
