"""Run a trained model over a chunk of a shot, from source files to output files.

One chunk is one process and one model load; then frames stream through three stages that overlap:

    reader thread  --(queue of read_ahead frames)-->  compute (this thread)  --(queue)-->  writer thread

so the network never waits on the disk except for the very first frame, and a slow write (EXR
compression, a network file system) never holds up the next frame. The queues are bounded, so memory
stays at a few frames however long the chunk. An error in any stage stops the others and is raised
here, in the caller's thread, with its own message. The threads and queues are ``stages``; the
conversion into the working space is ``working``; both read the run as one ``chunk.Chunk``.

Per frame: the source's network channels (``plan['input_channels']``) are encoded into the model's
working space (the colour transform stored in the model card, so training and inference agree), run
through ``apply_model``, decoded back, and written with the target's channel names
(``plan['output_channels']``) followed by the passthrough channels copied bit for bit from the
source. The file is written from the source frame's header (``write_pixels(like=...)``), so pixel
type, windows, compression and metadata carry over, plus provenance attributes
(``duplidog:model_id``, ``duplidog:version``, ``duplidog:source``). Every frame is written atomically.

A temporal model (``temporal_frames`` N in its card) reads frames t-N..t+N for frame t, stacked as
channels (``duplidog.temporal``: the frame's own first, mirrored at the shot's ends). The reader slides
that window along the chunk with a small cache of decoded frames keyed by frame number, so each plate
frame is read and decoded once, and the compute stage converts each frame into the working space once
(a cache of its own); a chunk reads the frames just outside its range that its first and last frames'
windows name, from the plate, so every frame's result is the same whichever chunk it runs in. The
shot's ends are the plan's (its frames and keyframes), or for a run without a plan those of the frames
on disk.

cuDNN autotuning (``torch.backends.cudnn.benchmark``) is left off on purpose: it may pick different
convolution algorithms in different jobs, and then a frame's bits would depend on which chunk it ran in.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from duplidog import colour, imageio
from duplidog.atomic import atomic_write_json, remove_stale_temporaries
from duplidog.core.card import CARD_NAME, ModelCard
from duplidog.core.modelstore import load_model
from duplidog.core.runtime import choose_device
from duplidog.core.plan import Plan, read_plan
from duplidog.core.shotframes import check_output_pattern, neighbour_frames
from duplidog.errors import DuplidogError
from duplidog.core.ensemble import model_copies
from duplidog.core.apply import apply_model, measure_tile_reach, plan_run
from duplidog.infer.chunk import ChannelRoute, Chunk
from duplidog.infer.stages import DONE, Pipeline, Stop
from duplidog.infer.working import WorkingFrames
from duplidog.sequence import FramePattern, format_frame_list

log = logging.getLogger(__name__)


def infer_settings(given: dict | None) -> dict[str, Any]:
    """The ``infer`` section with every key: the schema's defaults under what was given."""
    from duplidog.settings import defaults

    return {**defaults()["infer"], **(given or {})}


def check_route_against_card(route: ChannelRoute, card: ModelCard, model_dir: str | Path) -> None:
    """The plan's channels must be the ones the model was trained with."""
    for what, planned, trained in (("input", route.input, card.input_channels),
                                   ("output", route.output, card.output_channels)):
        if trained != planned:
            raise DuplidogError(
                f"{Path(model_dir) / CARD_NAME}: the model was trained with {what} channels {list(trained)}, "
                f"but this shot has {', '.join(planned)}"
            )


@dataclass
class _Progress:
    """What the compute stage learns as the chunk runs: how frames tile, and where the time went."""

    tile_reach: int | None = None  # the finest level's, measured when frames tile by levels
    tiling: dict | None = None  # the summary's ``tiling``
    first_read: float = 0.0  # waiting for the first frame
    wait_read: float = 0.0  # waiting for the reader after it
    wait_write: float = 0.0  # waiting for room in the writer's queue
    compute: float = 0.0


def _plan_run(chunk: Chunk, image: torch.Tensor, tile_reach: int | None):
    """How frames of this size run with the chunk's settings (whole or tiled)."""
    settings = chunk.settings
    return plan_run(chunk.model, tuple(image.shape), settings["tile"], settings["overlap"], settings["batch_size"],
                    chunk.device, settings["precision"], settings["cpu_pixel_budget"], settings["memory_fraction"],
                    settings["edge_context"], tile_reach)


def _describe_run(chunk: Chunk, image: torch.Tensor, tile_reach: int | None = None) -> str:
    """One line on how frames of this size will run (whole or tiled), for the log."""
    plan = _plan_run(chunk, image, tile_reach)
    height, width = image.shape[-2:]
    precision = str(plan.dtype).replace("torch.", "")
    copies = model_copies(chunk.settings["ensemble"], chunk.model, image.shape[1])
    averaged = f", the mean of {copies} flipped and turned copies" if copies > 1 else ""
    if plan.grid is None:
        return f"{width}x{height} frames whole on {chunk.device} in {precision}{averaged}"
    what = "the finest level's" if plan.split else "the network's"
    return (f"{width}x{height} frames in {len(plan.grid)} tiles of {plan.grid.tile_width}x{plan.grid.tile_height} "
            f"(batches of {plan.batch_size}, overlap {plan.grid.overlap} for {what} reach of {plan.grid.reach}) "
            f"on {chunk.device} in {precision}{averaged}")


def _tiling_summary(chunk: Chunk, image: torch.Tensor, tile_reach: int | None) -> dict | None:
    """How frames of this size are tiled (None: whole), for the run's summary."""
    plan = _plan_run(chunk, image, tile_reach)
    grid = plan.grid
    if grid is None:
        return None
    height, width = image.shape[-2:]
    return {"tiles": len(grid), "tile_width": grid.tile_width, "tile_height": grid.tile_height,
            "batch_size": plan.batch_size, "overlap": grid.overlap, "reach": grid.reach, "split": plan.split,
            "reach_source": ("measured" if tile_reach is not None else "analytic bound"),
            "pixel_overhead": round(len(grid) * grid.tile_width * grid.tile_height / (width * height), 3)}


def _shot_tile_reach(chunk: Chunk, working: WorkingFrames, image: torch.Tensor) -> int | None:
    """The finest level's reach measured on the shot's first frame (the plan's; this chunk's first
    without a plan), so that every chunk of a shot tiles alike."""
    reference = chunk.plate.frames or chunk.frames
    if reference[0] != chunk.frames[0] and Path(chunk.source.path(reference[0])).is_file():
        image = working.read_image(reference[0])
    t0 = time.perf_counter()
    reach = measure_tile_reach(chunk.model, image, chunk.settings["edge_context"], chunk.device)
    log.info("tiles: the finest level's reach measured on frame %s: %s (%.2fs)", reference[0],
             "not settled, the analytic bound is used" if reach is None else f"{reach} pixels",
             time.perf_counter() - t0)
    return reach


def _plan_tiles(chunk: Chunk, working: WorkingFrames, progress: _Progress, image: torch.Tensor) -> None:
    """Decide on the first frame how every frame tiles, and log it."""
    if _plan_run(chunk, image, 0).split:  # it tiles at least with the shortest reach: measure the true one
        progress.tile_reach = _shot_tile_reach(chunk, working, image)
    progress.tiling = _tiling_summary(chunk, image, progress.tile_reach)
    log.info("%s", _describe_run(chunk, image, progress.tile_reach))


def _with_passthrough(chunk: Chunk, info: imageio.ImageInfo, result: np.ndarray,
                      passthrough: np.ndarray) -> np.ndarray:
    """The network's result followed by the source's passthrough channels, which need its size."""
    if not passthrough.shape[2]:
        return result
    if result.shape[:2] != passthrough.shape[:2]:
        raise DuplidogError(
            f"{info.path}: cannot copy channels {', '.join(chunk.route.passthrough)} through a model "
            f"that changes the resolution ({passthrough.shape[1]}x{passthrough.shape[0]} -> "
            f"{result.shape[1]}x{result.shape[0]})"
        )
    return np.concatenate([result, passthrough], axis=2)


def _run_frame(chunk: Chunk, working: WorkingFrames, progress: _Progress, item: tuple, first: bool) -> np.ndarray:
    """One frame the reader read, through the network, as the pixels to write."""
    frame, info, network_input, passthrough, window = item
    in_space, image = working.stacked_image(frame, info, network_input, window)
    if first:
        _plan_tiles(chunk, working, progress, image)
    settings = chunk.settings
    result = apply_model(
        chunk.model, image, tile=settings["tile"], overlap=settings["overlap"],
        batch_size=settings["batch_size"], device=chunk.device, precision=settings["precision"],
        cpu_pixel_budget=settings["cpu_pixel_budget"], memory_fraction=settings["memory_fraction"],
        edge_context=settings["edge_context"], ensemble=settings["ensemble"], tile_reach=progress.tile_reach,
    )
    result = colour.decode(result[0].permute(1, 2, 0).numpy(), chunk.space, chunk.route.output)
    result = colour.from_working(result, chunk.route.output, in_space, chunk.space)
    return _with_passthrough(chunk, info, result, passthrough)


def _compute_frames(chunk: Chunk, pipeline: Pipeline, progress: _Progress) -> None:
    """The compute stage: run each frame the reader hands over and hand its result to the writer."""
    working = WorkingFrames(chunk)
    for index in range(len(chunk.frames) + 1):
        t0 = time.perf_counter()
        item = pipeline.next_read()
        waited = time.perf_counter() - t0
        if item is DONE:
            return
        if index == 0:
            progress.first_read = waited
        else:
            progress.wait_read += waited
        frame, info = item[:2]
        t0 = time.perf_counter()
        result = _run_frame(chunk, working, progress, item, first=index == 0)
        spent = time.perf_counter() - t0
        progress.compute += spent
        log.info("frame %d: %.2fs", frame, spent)
        t0 = time.perf_counter()
        pipeline.write((frame, info, result))
        progress.wait_write += time.perf_counter() - t0


def _remove_stale_outputs(chunk: Chunk) -> None:
    """This job's frames are its own: what a killed run left of them goes."""
    for frame in chunk.frames:
        for stale in remove_stale_temporaries(chunk.output.path(frame)):
            log.info("removed %s, left by an earlier run that was killed", stale)


def _summary(chunk: Chunk, written: list[int], seconds: float, progress: _Progress) -> dict:
    return {
        "frames": len(written),
        "frame_list": format_frame_list(written),
        "seconds": round(seconds, 4),
        "fps": round(len(written) / seconds, 4) if seconds > 0 and written else 0.0,
        "compute_seconds": round(progress.compute, 4),
        "first_read_seconds": round(progress.first_read, 4),
        "wait_read_seconds": round(progress.wait_read, 4),
        "wait_write_seconds": round(progress.wait_write, 4),
        "device": str(chunk.device),
        "model_id": chunk.card.id,
        "tiling": progress.tiling,
    }


def run_frames(
    model: torch.nn.Module,
    card: ModelCard,
    frames: Sequence[int],
    source_pattern: str,
    output_pattern: str,
    route: ChannelRoute,
    settings: dict | None = None,
    device: torch.device | None = None,
    nonfinite: str = "error",
    colorspace: str | None = None,
    plate: Plan = Plan(),
    ends: tuple[int, int] | None = None,
) -> dict:
    """Run ``model`` (already loaded) over ``frames`` from ``source_pattern`` to ``output_pattern``.

    ``settings``: the ``infer`` section (see config.schema.yaml); missing keys take the defaults.
    ``nonfinite``: "error" (a NaN/inf in a source frame stops the chunk, naming the frame) or
    "replace" (zeroed with a warning), as ``ingest.nonfinite``. ``colorspace``: the shot's working
    space, the OCIO space of source frames nothing else names (the network works in the card's).
    ``plate``: what ingest found of the plate (the plan's width, height, channel_names, format_name,
    pixel_type; those it knows are checked): a frame replaced since by another kind is an error naming
    it. ``ends``: the shot's first
    and last frame, where a temporal model's neighbours mirror (default: the plan's in ``plate``, else
    the first and last of ``frames``). Returns the timing summary.
    """
    settings = infer_settings(settings)
    device = device if device is not None else choose_device(settings["device"], key="infer.device")
    space = card.space()
    source, output = FramePattern(source_pattern), FramePattern(output_pattern)
    frames = list(frames)
    read_ahead = max(1, int(settings["read_ahead"]))
    if ends is None:
        ends = (plate.ends if plate.frames
                else (min(frames), max(frames)) if frames else (0, 0))
    chunk = Chunk(model=model, card=card, space=space, frames=frames, source=source, output=output, route=route,
                  settings=settings, device=device, read_ahead=read_ahead, nonfinite=nonfinite,
                  colorspace=colorspace, plate=plate, ends=ends,
                  temporal_frames=int(getattr(model, "temporal_frames", 0)))
    _remove_stale_outputs(chunk)
    pipeline = Pipeline(chunk)
    progress = _Progress()
    start = time.perf_counter()
    pipeline.start()
    try:
        _compute_frames(chunk, pipeline, progress)
        pipeline.finish_writing()
    except Stop:
        pass  # a stage failed: its error is raised below
    finally:
        pipeline.join(chunk.frames)
    pipeline.raise_errors()
    return _summary(chunk, pipeline.written, time.perf_counter() - start, progress)



def _write_summary(summary: dict, summary_path: str | Path | None) -> None:
    if summary_path is not None:
        atomic_write_json(summary_path, summary)


def infer_frames(
    model_dir: str | Path,
    plan_path: str | Path,
    frames: Iterable[int] | None,
    output_pattern: str | None,
    settings: dict | None = None,
    summary_path: str | Path | None = None,
) -> dict:
    """Apply the model in ``model_dir`` to ``frames`` of the shot described by ``plan.json``.

    Args:
        frames: the chunk's frames (default: every frame of the plan).
        output_pattern: where frames go (default: the plan's ``output``).
        settings: the ``infer`` section of the shot config (missing keys: defaults).
        summary_path: if given, the summary is also written there as JSON (atomically).
    Returns the summary: frames, seconds, fps and where the time went.
    """
    plan = read_plan(plan_path)
    settings = infer_settings(settings)
    frames = list(plan.frames if frames is None else frames)
    route = ChannelRoute(tuple(plan.input_channels), tuple(plan.output_channels), tuple(plan.passthrough_channels))
    device = choose_device(settings["device"], key="infer.device")
    t0 = time.perf_counter()
    model, card = load_model(model_dir, device)
    check_route_against_card(route, card, model_dir)
    load_seconds = time.perf_counter() - t0
    log.info("model %s loaded on %s in %.2fs; frames %s", card.id, device, load_seconds,
             format_frame_list(frames))
    output_pattern = output_pattern or plan.output
    if not output_pattern:
        raise DuplidogError(f"{plan_path}: the plan records no output pattern; give one")
    summary = run_frames(model, card, frames, plan.source, output_pattern, route,
                         settings, device, plan.nonfinite, plan.colorspace, plan)
    summary["load_seconds"] = round(load_seconds, 4)
    _write_summary(summary, summary_path)
    log.info("%d frames in %.1fs (%.2f frames/s)", summary["frames"], summary["seconds"], summary["fps"])
    return summary


def infer_sequence(
    model_dir: str | Path,
    source_pattern: str,
    output_pattern: str,
    frames: Iterable[int] | None = None,
    tile: str | int | None = None,
    device: str | None = None,
    settings: dict | None = None,
    convert_colorspace: bool = False,
) -> dict:
    """``infer_frames`` without a shot plan (the command line's ``duplidog infer``).

    Channels come from the model card: the network reads its trained input channels from the source
    and writes its output channels; every other source channel is copied through. ``frames`` default
    to every source frame found on disk. A frame whose ``oiio:ColorSpace`` names another OpenColorIO
    space than the card's is refused, or converted (and written back in its own) with ``convert_colorspace``.
    """
    settings = infer_settings(settings)  # tile and device, where given, override the settings' own
    if tile is not None:
        settings["tile"] = tile
    if device is not None:
        settings["device"] = device
    source = FramePattern(source_pattern)
    existing = source.existing_frames()
    frames = list(existing if frames is None else frames)
    if not frames:
        raise DuplidogError(f"{source_pattern}: no source frames found")
    missing = [f for f in frames if not Path(source.path(f)).is_file()]
    if missing:
        raise DuplidogError(f"{source_pattern}: frames {format_frame_list(missing)} missing")
    check_output_pattern(output_pattern, source_pattern, source_pattern, frames)  # never over the plates
    torch_device = choose_device(settings["device"], key="infer.device")
    model, card = load_model(model_dir, torch_device)
    info = imageio.read_info(source.path(frames[0]))
    route = route_from_card(card, info)
    # A temporal model's neighbours mirror at the ends of the sequence on disk, whichever frames run.
    ends = (min(existing[0], min(frames)), max(existing[-1], max(frames))) if existing else None
    if ends is not None:
        neighbour_frames(source, frames, card.temporal_frames, ends)
    return run_frames(model, card, frames, source_pattern, output_pattern, route, settings, torch_device,
                      plate=Plan(convert_colorspace=bool(convert_colorspace)), ends=ends)


def route_from_card(card: ModelCard, info: imageio.ImageInfo) -> ChannelRoute:
    """Channels for a plan-less run: the card's input and output names, the rest of the source copied."""
    names = list(info.channel_names)
    inputs, outputs = card.input_channels, card.output_channels
    missing = [c for c in inputs if c not in names]
    if missing:
        raise DuplidogError(
            f"{info.path}: no channel {', '.join(missing)}, which the model reads (the file has {', '.join(names)})"
        )
    passthrough = tuple(c for c in names if c not in inputs and c not in outputs)
    return ChannelRoute(tuple(inputs), tuple(outputs), passthrough)
