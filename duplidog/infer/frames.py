"""Run a trained model over a chunk of a shot, from source files to output files.

One chunk is one process and one model load; then frames stream through three stages that overlap:

    reader thread  --(queue of read_ahead frames)-->  compute (this thread)  --(queue)-->  writer thread

so the network never waits on the disk except for the very first frame, and a slow write (EXR
compression, a network file system) never holds up the next frame. The queues are bounded, so memory
stays at a few frames however long the chunk. An error in any stage stops the others and is raised
here, in the caller's thread, with its own message.

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
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

import duplidog
from duplidog import colour, imageio, temporal
from duplidog.atomic import atomic_write_json, remove_stale_temporaries
from duplidog.core.card import CARD_NAME, ModelCard
from duplidog.core.modelstore import load_model
from duplidog.core.runtime import choose_device
from duplidog.core.plan import Plan, read_plan
from duplidog.core.shotframes import check_output_pattern, neighbour_frames
from duplidog.errors import DuplidogError
from duplidog.core.ensemble import model_copies
from duplidog.core.apply import apply_model, measure_tile_reach, plan_run
from duplidog.sequence import FramePattern, format_frame_list

log = logging.getLogger(__name__)



def infer_settings(given: dict | None) -> dict[str, Any]:
    """The ``infer`` section with every key: the schema's defaults under what was given."""
    from duplidog.settings import defaults

    return {**defaults()["infer"], **(given or {})}


@dataclass(frozen=True)
class ChannelRoute:
    """Which source channels feed the network, what its outputs are called, and what is copied through."""

    input: tuple[str, ...]
    output: tuple[str, ...]
    passthrough: tuple[str, ...]

    @property
    def read(self) -> list[str]:
        """Source channels to read: the network's, then the passthrough ones not already among them."""
        return list(self.input) + [c for c in self.passthrough if c not in self.input]

    @property
    def written(self) -> list[str]:
        return list(self.output) + list(self.passthrough)


def check_route_against_card(route: ChannelRoute, card: ModelCard, model_dir: str | Path) -> None:
    """The plan's channels must be the ones the model was trained with."""
    for what, planned, trained in (("input", route.input, card.input_channels),
                                   ("output", route.output, card.output_channels)):
        if trained != planned:
            raise DuplidogError(
                f"{Path(model_dir) / CARD_NAME}: the model was trained with {what} channels {list(trained)}, "
                f"but this shot has {', '.join(planned)}"
            )


def frame_space(info: imageio.ImageInfo, plate: Plan, colorspace: Any = None) -> str | None:
    """The OCIO space a source frame is in: its ``oiio:ColorSpace`` tag when the active config knows
    it, else the plate's at ingest (``plate_colorspace``), else the shot's working space; None when
    nothing names one."""
    return (colour.file_space(info) or plate.plate_colorspace
            or colour.ocio_name(plate.colorspace or colorspace))


class _Stop(Exception):
    """Raised inside a worker when another stage failed and the chunk is being abandoned."""


class _Stage(threading.Thread):
    """A background stage that keeps its exception for the main thread to raise, and stops the others."""

    def __init__(self, name: str, work, stop: threading.Event, stops_others: bool = True):
        super().__init__(name=name, daemon=True)
        self._work = work
        self._stop_all = stop
        self._stops_others = stops_others
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._work()
        except _Stop:
            pass
        except BaseException as exc:  # raised again by the main thread
            self.error = exc
            if self._stops_others:
                self._stop_all.set()


_POLL_SECONDS = 0.05
_DONE = object()


def _put(q: queue.Queue, item, stop: threading.Event, consumer: _Stage | None = None) -> None:
    """Put, but give up when the chunk is being abandoned (raising the consumer's error if it failed)."""
    while True:
        if consumer is not None and consumer.error is not None:
            raise consumer.error
        if stop.is_set():
            raise _Stop
        try:
            q.put(item, timeout=_POLL_SECONDS)
            return
        except queue.Full:
            continue


def _get(q: queue.Queue, stop: threading.Event, producer: _Stage | None = None):
    """Get, but give up when the chunk is being abandoned (raising the producer's error if it failed)."""
    while True:
        try:
            return q.get(timeout=_POLL_SECONDS)
        except queue.Empty:
            pass
        # Raised outside the except clause: inside it, the producer's error would print chained to a
        # queue.Empty ("During handling of the above exception...") that has nothing to do with it.
        if producer is not None and producer.error is not None:
            raise producer.error
        if stop.is_set():
            raise _Stop


def _describe_run(model, image: torch.Tensor, settings: dict, device: torch.device,
                  tile_reach: int | None = None) -> str:
    """One line on how frames of this size will run (whole or tiled), for the log."""
    plan = plan_run(model, tuple(image.shape), settings["tile"], settings["overlap"], settings["batch_size"],
                    device, settings["precision"], settings["cpu_pixel_budget"], settings["memory_fraction"],
                    settings["edge_context"], tile_reach)
    height, width = image.shape[-2:]
    precision = str(plan.dtype).replace("torch.", "")
    copies = model_copies(settings["ensemble"], model, image.shape[1])
    averaged = f", the mean of {copies} flipped and turned copies" if copies > 1 else ""
    if plan.grid is None:
        return f"{width}x{height} frames whole on {device} in {precision}{averaged}"
    what = "the finest level's" if plan.split else "the network's"
    return (f"{width}x{height} frames in {len(plan.grid)} tiles of {plan.grid.tile_width}x{plan.grid.tile_height} "
            f"(batches of {plan.batch_size}, overlap {plan.grid.overlap} for {what} reach of {plan.grid.reach}) "
            f"on {device} in {precision}{averaged}")


def _tiling_summary(model, image: torch.Tensor, settings: dict, device: torch.device,
                    tile_reach: int | None) -> dict | None:
    """How frames of this size are tiled (None: whole), for the run's summary."""
    plan = plan_run(model, tuple(image.shape), settings["tile"], settings["overlap"], settings["batch_size"],
                    device, settings["precision"], settings["cpu_pixel_budget"], settings["memory_fraction"],
                    settings["edge_context"], tile_reach)
    grid = plan.grid
    if grid is None:
        return None
    height, width = image.shape[-2:]
    return {"tiles": len(grid), "tile_width": grid.tile_width, "tile_height": grid.tile_height,
            "batch_size": plan.batch_size, "overlap": grid.overlap, "reach": grid.reach, "split": plan.split,
            "reach_source": ("measured" if tile_reach is not None else "analytic bound"),
            "pixel_overhead": round(len(grid) * grid.tile_width * grid.tile_height / (width * height), 3)}


def check_like_plate(info: imageio.ImageInfo, plate: Plan) -> None:
    """Refuse a frame that is no longer what ingest found (replaced since): another size, other channels
    (an alpha would silently be dropped), another file format or pixel type. Checks what ``plate`` knows."""
    if plate.width is not None and (info.width, info.height) != (plate.width, plate.height):
        raise DuplidogError(f"{info.path}: {info.width}x{info.height}, but the plate is "
                            f"{plate.width}x{plate.height} (every frame of a shot has one size)")
    if plate.channel_names is not None and list(info.channel_names) != list(plate.channel_names):
        raise DuplidogError(f"{info.path}: channels {','.join(info.channel_names)}, but the plate's were "
                            f"{','.join(plate.channel_names)} at ingest (rerun ingest if the plate changed)")
    for key, what in (("format_name", "file format"), ("pixel_type", "pixel type")):
        if getattr(plate, key) is not None and getattr(info, key) != getattr(plate, key):
            raise DuplidogError(f"{info.path}: {what} {getattr(info, key)}, but the plate's was {getattr(plate, key)} "
                                "at ingest (rerun ingest if the plate changed)")


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
    depth = max(1, int(settings["read_ahead"]))
    attributes = {"duplidog:model_id": card.id, "duplidog:version": duplidog.__version__}
    read_channels = route.read
    n_input = len(route.input)
    passthrough_index = [read_channels.index(c) for c in route.passthrough]
    n = int(getattr(model, "temporal_frames", 0))  # neighbour frames on each side the network reads
    if ends is None:
        ends = (plate.ends if plate.frames
                else (min(frames), max(frames)) if frames else (0, 0))

    stop = threading.Event()
    read_queue: queue.Queue = queue.Queue(maxsize=depth)
    write_queue: queue.Queue = queue.Queue(maxsize=depth)
    written: list[int] = []

    def read_frame(frame: int) -> tuple[imageio.ImageInfo, np.ndarray, np.ndarray]:
        """One source frame: its header, network channels (checked) and passthrough channels."""
        path = source.path(frame)
        info = imageio.read_info(path)
        check_like_plate(info, plate)
        pixels = imageio.read_pixels(path, read_channels)
        network_input = imageio.check_finite(pixels[:, :, :n_input], path, nonfinite)
        return info, network_input, pixels[:, :, passthrough_index]

    def read_frames() -> None:
        decoded = temporal.FrameCache(read_frame)  # a temporal model's sliding window: each frame read once
        for frame in frames:
            info, network_input, passthrough = decoded.get(frame)
            # The window's frames (this one first), with their headers and network channels.
            window = {number: decoded.get(number)[:2] for number in temporal.window(frame, n, *ends)[1:]}
            decoded.forget_before(frame - n)  # no later frame's window reads these
            _put(read_queue, (frame, info, network_input, passthrough, window), stop)
        _put(read_queue, _DONE, stop)

    for frame in frames:  # this job's frames are its own: what a killed run left of them goes
        for stale in remove_stale_temporaries(output.path(frame)):
            log.info("removed %s, left by an earlier run that was killed", stale)

    def write_frames() -> None:
        while True:
            item = _get(write_queue, stop)
            if item is _DONE:
                return
            frame, info, pixels = item
            imageio.write_pixels(output.path(frame), pixels, like=info, channel_names=route.written,
                                 attributes={**attributes, "duplidog:source": Path(info.path).name})
            written.append(frame)

    def working_pixels(info: imageio.ImageInfo, network_input: np.ndarray) -> tuple[str | None, np.ndarray]:
        """The frame's OCIO space and its network channels in the working space, (H, W, C)."""
        # The frame's OCIO space (its tag, else the plate's at ingest, else the shot's) against the
        # model's: the same, or converted when ingest.convert_colorspace allows it, else refused.
        in_space = frame_space(info, plate, colorspace) if space.ocio_name else None
        network_input = colour.to_working(network_input, route.input, in_space, space,
                                          bool(plate.convert_colorspace), info.path)
        return in_space, colour.encode(network_input, space, route.input)

    def as_image(pixels: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))[None]

    def working_image(info: imageio.ImageInfo, network_input: np.ndarray) -> tuple[str | None, torch.Tensor]:
        """The frame's OCIO space and its network channels as a (1, C, H, W) working-space tensor."""
        in_space, pixels = working_pixels(info, network_input)
        return in_space, as_image(pixels)

    # A temporal model's frames in the working space, each converted once while a window reads it.
    pending: dict[int, tuple[imageio.ImageInfo, np.ndarray]] = {}
    converted = temporal.FrameCache(lambda number: working_pixels(*pending.pop(number)))

    def stacked_image(frame: int, info: imageio.ImageInfo, network_input: np.ndarray,
                      window: dict) -> tuple[str | None, torch.Tensor]:
        """The frame's OCIO space and its window's network channels, stacked, as a working-space tensor."""
        if n == 0:
            return working_image(info, network_input)
        pending.update({frame: (info, network_input), **window})
        stacked = temporal.stacked_frame(frame, n, ends, lambda number: converted.get(number)[1])
        in_space = converted.get(frame)[0]
        converted.forget_before(frame - n)
        pending.clear()
        return in_space, as_image(stacked)

    def shot_tile_reach(image: torch.Tensor) -> int | None:
        """The finest level's reach measured on the shot's first frame (the plan's; this chunk's first
        without a plan), so that every chunk of a shot tiles alike."""
        reference = plate.frames or frames
        if reference[0] != frames[0] and Path(source.path(reference[0])).is_file():
            def working(number: int) -> np.ndarray:
                info = imageio.read_info(source.path(number))
                pixels = imageio.read_pixels(info.path, route.input)
                return working_pixels(info, imageio.check_finite(pixels, info.path, nonfinite))[1]

            image = as_image(temporal.stacked_frame(reference[0], n, ends, working))
        t0 = time.perf_counter()
        reach = measure_tile_reach(model, image, settings["edge_context"], device)
        log.info("tiles: the finest level's reach measured on frame %s: %s (%.2fs)", reference[0],
                 "not settled, the analytic bound is used" if reach is None else f"{reach} pixels",
                 time.perf_counter() - t0)
        return reach

    tile_reach: int | None = None
    tiling: dict | None = None
    # A frame that cannot be read (truncated, replaced) does not abandon the frames read before it:
    # they are run and written, then its error is raised: the delivery keeps every good frame.
    reader = _Stage("duplidog-read", read_frames, stop, stops_others=False)
    writer = _Stage("duplidog-write", write_frames, stop)
    first_wait = wait_read = wait_write = compute = 0.0
    start = time.perf_counter()
    reader.start()
    writer.start()
    try:
        for index in range(len(frames) + 1):
            t0 = time.perf_counter()
            try:
                item = _get(read_queue, stop, reader)
            except BaseException as exc:
                if exc is not reader.error:
                    raise
                item = _DONE  # every frame before the unreadable one is done: finish writing them
            waited = time.perf_counter() - t0
            if item is _DONE:
                break
            if index == 0:
                first_wait = waited
            else:
                wait_read += waited
            frame, info, network_input, passthrough, window = item
            t0 = time.perf_counter()
            in_space, image = stacked_image(frame, info, network_input, window)
            if index == 0:
                run_plan = plan_run(model, tuple(image.shape), settings["tile"], settings["overlap"],
                                    settings["batch_size"], device, settings["precision"], settings["cpu_pixel_budget"],
                                    settings["memory_fraction"], settings["edge_context"], 0)
                if run_plan.split:  # it tiles at least with the shortest reach: measure the true one
                    tile_reach = shot_tile_reach(image)
                tiling = _tiling_summary(model, image, settings, device, tile_reach)
                log.info("%s", _describe_run(model, image, settings, device, tile_reach))
            result = apply_model(
                model, image, tile=settings["tile"], overlap=settings["overlap"],
                batch_size=settings["batch_size"], device=device, precision=settings["precision"],
                cpu_pixel_budget=settings["cpu_pixel_budget"], memory_fraction=settings["memory_fraction"],
                edge_context=settings["edge_context"], ensemble=settings["ensemble"], tile_reach=tile_reach,
            )
            result = colour.decode(result[0].permute(1, 2, 0).numpy(), space, route.output)
            result = colour.from_working(result, route.output, in_space, space)
            if passthrough.shape[2]:
                if result.shape[:2] != passthrough.shape[:2]:
                    raise DuplidogError(
                        f"{info.path}: cannot copy channels {', '.join(route.passthrough)} through a model "
                        f"that changes the resolution ({passthrough.shape[1]}x{passthrough.shape[0]} -> "
                        f"{result.shape[1]}x{result.shape[0]})"
                    )
                result = np.concatenate([result, passthrough], axis=2)
            spent = time.perf_counter() - t0
            compute += spent
            log.info("frame %d: %.2fs", frame, spent)
            t0 = time.perf_counter()
            _put(write_queue, (frame, info, result), stop, writer)
            wait_write += time.perf_counter() - t0
        _put(write_queue, _DONE, stop, writer)
        while writer.is_alive():
            writer.join(timeout=_POLL_SECONDS)
    except _Stop:
        pass  # a stage failed: its error is raised below
    finally:
        if reader.error or writer.error or written != frames:
            stop.set()  # abandon the chunk: let the other stages finish their current item and leave
        reader.join()
        writer.join()
    for stage in (reader, writer):
        if stage.error is not None:
            raise stage.error
    seconds = time.perf_counter() - start
    return {
        "frames": len(written),
        "frame_list": format_frame_list(written),
        "seconds": round(seconds, 4),
        "fps": round(len(written) / seconds, 4) if seconds > 0 and written else 0.0,
        "compute_seconds": round(compute, 4),
        "first_read_seconds": round(first_wait, 4),
        "wait_read_seconds": round(wait_read, 4),
        "wait_write_seconds": round(wait_write, 4),
        "device": str(device),
        "model_id": card.id,
        "tiling": tiling,
    }


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
