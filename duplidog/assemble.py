"""The last stage: prove the delivery is whole, fingerprint it, and draw a picture to check it by eye.

A shot's output is only as good as its worst frame: one missing, truncated, wrongly sized or NaN frame
discovered in the grade costs more than the whole run. So every expected frame is opened and decoded
in full (a header alone does not catch a file cut short), its size, channels and pixel type are
compared with what the plan promises, and *all* the faults are reported together in one error -- a
rerun then fixes them in one go. Then:

* ``checksums.tsv``: frame, path and SHA-256 of each file, so a copy to the client can be verified;
* ``contact_sheet.png``: the frames an artist checks as rows (the held-out keyframe, the frames
  farthest from any keyframe, the frames named in ``assemble.frames``), each titled with what it is;
  columns plate | result and, on keyframes, target | difference, then two zoomed crops (whole
  pixels, no resampling) where the keyframe's error is worst or where the fix changes the plate most.
  An upscaling model's plate is shown with each pixel repeated ``scale`` times, under its result.
  Pictures of a shot whose working space is an OpenColorIO one, or scene-linear with no tag (shown as
  linear Rec.709), go through an OCIO display/view (``assemble.display``/``assemble.view``; default
  the config's default display and its default view, sRGB - Display and the ACES SDR view in OCIO's
  built-in config), after every file is brought into the working space; log and display-referred
  values without a tag are shown as they are. Either way they are quantised to 8 bits *only here, for
  the picture*;
* ``summary.json``: frames, inference seconds and frames per second (summed over the chunks' own
  summaries), how far each keyframe's result is from its target (whole frame and worst 32x32
  block), a warning for each keyframe whose worst block is poor however good the whole frame is, and
  a flicker figure (``temporal``: the PSNR of the result's frame-to-frame change against the plate's;
  an upscaled result averaged down to the plate's size first).

All three files are written atomically.
"""

from __future__ import annotations

import json
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from duplidog import colour, imageio
from duplidog.atomic import atomic_write_json, atomic_write_text
from duplidog.core.layout import ShotLayout
from duplidog.core.plan import Plan, read_manifest, read_plan
from duplidog.core.previews import (DIFFERENCE_GAIN, block_psnrs, file_sha256, psnr, psnr_of_mse, thumbnail,
                                     view_transform, write_contact_sheet)
from duplidog.core.card import read_card
from duplidog.errors import DuplidogError
from duplidog.sequence import FramePattern, format_frame_list

log = logging.getLogger(__name__)

#: The block a keyframe's local error is measured on, and the PSNR below which it is reported: a
#: paint-out left half done can leave the whole frame above 35 dB.
BLOCK, WORST_BLOCK_WARNING = 32, 25.0


def _keyframe_error(result: np.ndarray, target: np.ndarray, held_out: bool) -> dict[str, Any]:
    """How far a keyframe's result is from its target, in the working space (peak 1)."""
    difference = result - target
    worst, top, left = worst_block(result, target, BLOCK)
    return {"held_out": held_out, "mean_abs": float(np.abs(difference).mean()),
            "rms": float(np.sqrt(np.mean(difference ** 2))), "psnr": float(psnr(result, target)),
            "worst_block_psnr": worst, "worst_block_at": [top, left]}


def _check_frame(frame: int, path: str, width: int, height: int, channels: Sequence[str],
                 pixel_type: str | None) -> tuple[int, str | None, str | None]:
    """(frame, fault or None, sha256 or None) for one output frame, decoding all of its pixels."""
    if not Path(path).is_file():
        return frame, "missing", None
    try:
        info = imageio.read_info(path)
        pixels = imageio.read_pixels(path)
    except DuplidogError as exc:
        return frame, str(exc).removeprefix(f"{path}: "), None
    faults = []
    if (info.width, info.height) != (width, height):
        faults.append(f"size {info.width}x{info.height}, expected {width}x{height}")
    if list(info.channel_names) != list(channels):
        faults.append(f"channels {','.join(info.channel_names)}, expected {','.join(channels)}")
    if pixel_type is not None and info.pixel_type != pixel_type:
        faults.append(f"pixel type {info.pixel_type}, expected {pixel_type}")
    bad = int(np.count_nonzero(~np.isfinite(pixels)))
    if bad:
        faults.append(f"{bad} NaN/inf values")
    return frame, "; ".join(faults) or None, file_sha256(path) if not faults else None


def _model_scale(model_dir: Path) -> int:
    """The model's scale, from the card in ``model_dir`` (a missing or unreadable card is an error: the
    output frames' size depends on it)."""
    return read_card(model_dir).scale


def load_infer_summaries(infer_summaries: Iterable[dict | str | Path]) -> list[dict]:
    """The chunks' summaries, given as dicts or JSON paths."""
    summaries = []
    for item in infer_summaries:
        if isinstance(item, dict):
            summaries.append(item)
            continue
        try:
            summaries.append(json.loads(Path(item).read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise DuplidogError(f"{item}: cannot read the inference summary ({exc})") from None
    return summaries


def contact_frames(frames: Sequence[int], keyframes: Sequence[int], count: int, held_out: Sequence[int] = (),
                   named: Sequence[int] = ()) -> list[tuple[int, str]]:
    """The contact sheet's rows as (frame, what it is), in shot order.

    What an artist checks: the held-out keyframes (a target the network never trained on), the frames
    the user names (``assemble.frames``), and, up to ``count`` rows in all with the held-out ones, the
    frames farthest from any keyframe -- where a fix learnt from the keyframes is least sure. Only when
    every frame is a keyframe are keyframes shown to fill the rows.
    """
    present = set(frames)
    keys = sorted(f for f in keyframes if f in present)
    rows = {f: "held-out keyframe" for f in held_out if f in present}
    for frame in named:
        if frame in present:
            rows.setdefault(frame, "named keyframe" if frame in keys else "named")
    anchors = (list(keys) or [frames[0]]) if frames else []
    unseen = [f for f in frames if f not in keys and f not in rows]
    wanted = count - sum(role == "held-out keyframe" for role in rows.values())
    while wanted > 0 and unseen:
        # The next row: the frame farthest from every keyframe and every frame already chosen.
        taken = anchors + [f for f in rows if f not in keys]
        farthest = max(unseen, key=lambda f: (min(abs(f - a) for a in taken), -f))
        distance = min(abs(farthest - k) for k in keys) if keys else None
        rows[farthest] = f"unseen, {distance} frame{'s' * (distance != 1)} from a keyframe" if keys else "unseen"
        unseen.remove(farthest)
        wanted -= 1
    for frame in keys:  # a shot whose every frame is a keyframe
        if wanted <= 0:
            break
        if frame not in rows:
            rows[frame], wanted = "keyframe", wanted - 1
    return sorted(rows.items())


def temporal_figure(frames: Sequence[int], read_result, read_plate) -> dict[str, Any] | None:
    """How steadily the result moves: the PSNR of its frame-to-frame change against the plate's own
    (no truth exists), pooled over every pair of consecutive frames f, f + 1, and the worst pair.

    A paint-out that holds moves as the plate does; one that flickers or chatters changes where the
    plate does not. ``read_result(f)``/``read_plate(f)`` give frame f in the working space, the same
    channels. None where the shot has no such pair.
    """
    present = set(frames)
    pairs = [(f, f + 1) for f in frames if f + 1 in present]
    if not pairs:
        return None
    total, count, worst = 0.0, 0, (math.inf, None)
    previous: tuple[int, np.ndarray, np.ndarray] | None = None
    with ThreadPoolExecutor(max_workers=2) as pool:
        for a, b in pairs:
            if previous is None or previous[0] != a:
                previous = (a, *pool.map(lambda read: read(a).astype(np.float64), (read_result, read_plate)))
            now = (b, *pool.map(lambda read: read(b).astype(np.float64), (read_result, read_plate)))
            squared = float(np.sum(((now[1] - previous[1]) - (now[2] - previous[2])) ** 2))
            total, count = total + squared, count + now[1].size
            pair_psnr = psnr_of_mse(squared / now[1].size)
            if pair_psnr < worst[0]:
                worst = (pair_psnr, [a, b])
            previous = now
    pooled = psnr_of_mse(total / count)
    as_number = lambda x: round(x, 3) if math.isfinite(x) else None  # noqa: E731  (JSON has no inf)
    return {"psnr": as_number(pooled), "worst_pair": worst[1], "worst_pair_psnr": as_number(worst[0]),
            "pairs": len(pairs), "against": "the plate's own frame-to-frame change"}


def worst_block(result: np.ndarray, reference: np.ndarray, block: int) -> tuple[float, int, int]:
    """(PSNR, top, left) of the ``block`` x ``block`` block where ``result`` is farthest from ``reference``."""
    psnrs = block_psnrs(result, reference, block)
    row, col = np.unravel_index(int(np.argmin(psnrs)), psnrs.shape)
    return float(psnrs[row, col]), int(row) * block, int(col) * block


def enlarge(pixels: np.ndarray, factor: int) -> np.ndarray:
    """(H, W, C) shown at ``factor`` times its size by repeating pixels (an upscaled result's plate)."""
    return pixels if factor == 1 else pixels.repeat(factor, axis=0).repeat(factor, axis=1)


def shrink(pixels: np.ndarray, factor: int) -> np.ndarray:
    """(sH, sW, C) averaged over ``factor`` x ``factor`` blocks: an upscaled result at the plate's size."""
    if factor == 1:
        return pixels
    height, width = pixels.shape[0] // factor, pixels.shape[1] // factor
    return pixels.reshape(height, factor, width, factor, -1).mean(axis=(1, 3), dtype=np.float32)


def _zoom(pixels: np.ndarray, top: int, left: int, size: int, width: int) -> np.ndarray:
    """The ``size`` x ``size`` crop holding the block at (top, left), enlarged by whole pixels to about
    ``width`` (no resampling). The window is kept inside the frame: a block at the frame's edge is narrower
    (``block_psnrs`` scores the edge too), and cut at the edge the zoom would be a thin strip."""
    top = min(top, max(0, pixels.shape[0] - size))
    left = min(left, max(0, pixels.shape[1] - size))
    crop = pixels[top: top + size, left: left + size]
    factor = max(1, width // max(1, crop.shape[1]))
    return np.repeat(np.repeat(crop, factor, axis=0), factor, axis=1)


def _display_channels(names: Sequence[str]) -> list[str]:
    """R,G,B when present, else the first three channels, else the first channel (shown grey)."""
    if all(c in names for c in ("R", "G", "B")):
        return ["R", "G", "B"]
    return list(names[:3]) if len(names) >= 3 else list(names[:1])


@dataclass(frozen=True)
class _Shot:
    """The shot as assemble sees it: its plan, where its frames are, and what every output frame must be."""

    plan: Plan
    manifest: pd.DataFrame
    output: FramePattern
    source: FramePattern
    frames: list[int]
    scale: int  # the model's: the output's size over the plate's
    width: int
    height: int
    channels: list[str]  # the output's channels, then those passed through from the plate
    pixel_type: str | None  # None: another kind of file than the plate, whose pixel type is its own
    space: str | dict  # the working space ("display" where the plan names none)


@dataclass(frozen=True)
class _Sheet:
    """How the contact sheet shows a frame: which rows, which channels, from which space through which view."""

    rows: dict[int, str]  # frame -> what it is
    shown: list[str]  # the output channels drawn
    index: list[int]  # their places among the output channels
    plate_channels: list[str]  # the plate's channels drawn
    shown_space: str | dict
    display: str | None
    view: str | None
    width: int  # of each picture

    def view_of(self, pixels: np.ndarray) -> np.ndarray:
        return view_transform(pixels, self.shown_space, self.display, self.view)

    def picture(self, pixels: np.ndarray) -> np.ndarray:
        return thumbnail(self.view_of(pixels), self.width)


@dataclass
class _Review:
    """What looking at the keyframes and the contact sheet's frames found."""

    keyframe_error: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    rows: list[tuple[str, list]] = field(default_factory=list)


def assemble(
    layout: ShotLayout,
    output_pattern: str | None,
    infer_summaries: Iterable[dict | str | Path] | None = None,
    settings: dict | None = None,
) -> dict:
    """Check every output frame of the shot in ``layout``, then write its checksums, contact sheet and summary.

    Reads the shot's plan, manifest and model card (for its scale) from ``layout``.

    Args:
        output_pattern: the output frames (default: the plan's ``output``).
        infer_summaries: the chunks' summaries (dicts or JSON files); default every chunk summary in
            the layout's infer folder.
        settings: the ``assemble`` section of the shot config (contact_frames, contact_width).
    Raises one DuplidogError naming every missing or faulty frame. Returns the summary.
    """
    start = time.perf_counter()
    from duplidog.settings import defaults

    settings = {**defaults()["assemble"], **(settings or {})}
    shot = _read_shot(layout, output_pattern)
    digests = _check_frames(shot)
    lines = ["frame\tpath\tsha256"] + [f"{frame}\t{shot.output.path(frame)}\t{digest}" for frame, digest in digests]
    atomic_write_text(layout.checksums, "\n".join(lines) + "\n")

    sheet = _plan_sheet(shot, settings)
    review = _review_frames(shot, sheet)
    for warning in review.warnings:
        log.warning("assemble %s: %s", shot.plan.shot, warning)
    write_contact_sheet(layout.contact_sheet, review.rows)
    temporal = _flicker(shot, sheet)

    chunks = load_infer_summaries(layout.chunk_summaries() if infer_summaries is None else infer_summaries)
    summary = _summary(layout, shot, chunks, review, temporal)
    summary["assemble_seconds"] = round(time.perf_counter() - start, 3)
    atomic_write_json(layout.summary, summary)
    log.info("assemble %s: %d frames checked, contact sheet of %d frames", shot.plan.shot, len(shot.frames),
             len(review.rows))
    return summary


def _read_shot(layout: ShotLayout, output_pattern: str | None) -> _Shot:
    """The shot's plan, manifest and model scale, and what they promise of each output frame."""
    plan = read_plan(layout.plan)
    manifest = read_manifest(layout.manifest)
    if not (output_pattern or plan.output):
        raise DuplidogError(f"{layout.plan}: the plan records no output pattern; give one")
    output = FramePattern(output_pattern or plan.output)
    source = FramePattern(plan.source)
    frames = [int(f) for f in plan.frames]
    scale = _model_scale(layout.model_dir)
    return _Shot(
        plan=plan, manifest=manifest, output=output, source=source, frames=frames, scale=scale,
        width=int(plan.width) * scale, height=int(plan.height) * scale,
        channels=list(plan.output_channels) + list(plan.passthrough_channels),
        # The source's pixel type carries over when the output is the same kind of file.
        pixel_type=plan.pixel_type if output.extension == source.extension else None,
        space=plan.colorspace if plan.colorspace is not None else "display",
    )


def _check_frames(shot: _Shot) -> list[tuple[int, str | None]]:
    """(frame, sha256) of every output frame, after decoding each in full; one error naming every fault."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(
            lambda f: _check_frame(f, shot.output.path(f), shot.width, shot.height, shot.channels, shot.pixel_type),
            shot.frames))
    faults = [(frame, fault) for frame, fault, _ in results if fault]
    if faults:
        shown = "; ".join(f"{frame} {fault}" for frame, fault in faults[:8])
        more = f"; and {len(faults) - 8} more" if len(faults) > 8 else ""
        raise DuplidogError(
            f"{shot.output.pattern}: {len(faults)} of {len(shot.frames)} output frames are bad "
            f"(frames {format_frame_list([f for f, _ in faults])}): {shown}{more}"
        )
    return [(frame, digest) for frame, _, digest in results]


def _picture_view(shot: _Shot, settings: dict) -> tuple[str | dict, str | None, str | None]:
    """(space shown from, display, view) of the contact sheet's pictures.

    An OCIO working space, or untagged scene-linear values as linear Rec.709, go through the
    display/view; display-referred values (an sRGB PNG plate) are shown as they are unless a display or
    view is asked for.
    """
    display, view = settings.get("display"), settings.get("view")
    from duplidog import ocio

    working = colour.as_space(shot.space)
    if working.name == "display" and not (working.ocio_name and (display or view)):
        return "display", display, view
    if ocio.picture_space(working):
        display, view = ocio.check_display_view(display, view)
        log.info("assemble %s: contact sheet from %s through OpenColorIO display %r, view %r",
                 shot.plan.shot, ocio.picture_space(working), display, view)
    return shot.space, display, view


def _plan_sheet(shot: _Shot, settings: dict) -> _Sheet:
    """The contact sheet's rows, channels and view, from the plan and the ``assemble`` settings."""
    plan = shot.plan
    shown_space, display, view = _picture_view(shot, settings)
    rows = dict(contact_frames(shot.frames, [int(f) for f in plan.keyframes], int(settings["contact_frames"]),
                               [int(f) for f in plan.validation_frames],
                               [int(f) for f in settings.get("frames") or []]))
    shown = _display_channels(plan.output_channels)
    return _Sheet(rows=rows, shown=shown, index=[plan.output_channels.index(c) for c in shown],
                  plate_channels=_display_channels(plan.input_channels), shown_space=shown_space,
                  display=display, view=view, width=int(settings["contact_width"]))


def _read_in_working(shot: _Shot, pattern: FramePattern, channels: Sequence[str], frame: int) -> np.ndarray:
    """Frame ``frame`` of ``pattern`` (the output or the plate, both in the plate's space), in the working space."""
    return shot.plan.to_working(imageio.read_pixels(pattern.path(frame), channels), channels, "plate",
                                pattern.path(frame))


def _review_frames(shot: _Shot, sheet: _Sheet) -> _Review:
    """Each keyframe's error against its target and the contact sheet's rows, reading each frame once."""
    plan = shot.plan
    keyframes = [int(f) for f in plan.keyframes]
    targets = {int(r.frame): r.target for r in shot.manifest.itertuples() if getattr(r, "target", "")}
    held_out = [int(f) for f in plan.validation_frames]
    review = _Review()
    for frame in shot.frames:
        target_path = targets.get(frame) if frame in keyframes else None
        if frame not in sheet.rows and not target_path:
            continue
        result = _read_in_working(shot, shot.output, plan.output_channels, frame)
        target = imageio.read_pixels(target_path, plan.output_channels) if target_path else None
        if target is not None:
            target = plan.to_working(target, plan.output_channels, "target", target_path)
        if target is not None and target.shape != result.shape:
            target = None  # the result of another size than its keyframe: nothing to compare
        if target is not None:
            error = _keyframe_error(colour.encode(result, shot.space), colour.encode(target, shot.space),
                                    frame in held_out)
            review.keyframe_error[str(frame)] = error
            if error["worst_block_psnr"] < WORST_BLOCK_WARNING:
                review.warnings.append(_worst_block_warning(frame, error))
        if frame in sheet.rows:
            review.rows.append(_contact_row(shot, sheet, frame, result, target))
    return review


def _worst_block_warning(frame: int, error: dict[str, Any]) -> str:
    """The warning for a keyframe whose worst block is poor however good the whole frame is."""
    top, left = error["worst_block_at"]
    return (f"frame {frame}{' (held out)' if error['held_out'] else ''}: its worst "
            f"{BLOCK}x{BLOCK} block is {error['worst_block_psnr']:.1f} dB at x {left}, "
            f"y {top} although the whole frame is {error['psnr']:.1f} dB: "
            "a local failure a whole-frame figure hides")


def _contact_row(shot: _Shot, sheet: _Sheet, frame: int, result: np.ndarray,
                 target: np.ndarray | None) -> tuple[str, list]:
    """One row: plate | result [| target | difference], then two zooms, titled with what the frame is.

    ``result`` and ``target`` (None where there is none to compare) are in the working space.
    """
    plate = _read_in_working(shot, shot.source, sheet.plate_channels, frame)
    plate = enlarge(plate, shot.scale)  # an upscaled result's plate, pixel for pixel under it
    shown = result[:, :, sheet.index]
    size = max(16, min(result.shape[0], result.shape[1]) // 8)  # the zoomed square: an eighth of the frame
    pictures = [("plate", sheet.picture(plate)), ("result", sheet.picture(shown))]
    if target is not None:
        target = target[:, :, sheet.index]
        gap = np.abs(colour.encode(shown, shot.space) - colour.encode(target, shot.space))
        pictures += [("target", sheet.picture(target)),
                     (f"difference x{DIFFERENCE_GAIN:g}",
                      thumbnail(view_transform(gap * DIFFERENCE_GAIN, "display"), sheet.width))]
        # Zoom where the result is farthest from the target.
        _, top, left = worst_block(colour.encode(shown, shot.space), colour.encode(target, shot.space), size)
        zooms, where = [("result", shown), ("target", target)], "worst error"
    else:
        top, left = _most_change(shot, sheet, shown, plate, size)
        zooms, where = [("plate", plate), ("result", shown)], "most change"
        pictures += [("", None), ("", None)]  # no target: the zooms stay in their columns
    for label, image in zooms:
        pictures.append((f"zoom: {label}", _zoom(sheet.view_of(image), top, left, size, sheet.width)))
    return f"{frame}: {sheet.rows[frame]}; zoom on {where} at x {left}, y {top}", pictures


def _most_change(shot: _Shot, sheet: _Sheet, shown: np.ndarray, plate: np.ndarray, size: int) -> tuple[int, int]:
    """(top, left) of the ``size`` block where the result changes the plate most: where the fix is, and
    where it fails if it does."""
    source_index = [sheet.plate_channels.index(c) for c in sheet.shown if c in sheet.plate_channels]
    if len(source_index) == len(sheet.index):
        _, top, left = worst_block(colour.encode(shown, shot.space),
                                   colour.encode(plate[:, :, source_index], shot.space), size)
    else:  # a matte from RGB: where the matte has most edge
        _, top, left = worst_block(shown, np.roll(np.roll(shown, 1, axis=0), 1, axis=1), size)
    return top, left


def _encoded_frame(shot: _Shot, pattern: FramePattern, channels: Sequence[str], factor: int,
                   frame: int) -> np.ndarray:
    """Frame ``frame`` of ``pattern`` in the working space, averaged down by ``factor``, encoded."""
    return colour.encode(shrink(_read_in_working(shot, pattern, channels, frame), factor), shot.space, channels)


def _flicker(shot: _Shot, sheet: _Sheet) -> dict[str, Any] | None:
    """The temporal figure, where the output has the plate's colour channels (not a matte from RGB)."""
    if not all(c in sheet.plate_channels for c in sheet.shown):
        return None
    return temporal_figure(shot.frames, partial(_encoded_frame, shot, shot.output, sheet.shown, shot.scale),
                           partial(_encoded_frame, shot, shot.source, sheet.shown, 1))


def _summary(layout: ShotLayout, shot: _Shot, chunks: list[dict], review: _Review,
             temporal: dict[str, Any] | None) -> dict[str, Any]:
    """``summary.json``'s fields, but for how long assembling took."""
    infer_seconds = sum(float(c.get("seconds", 0.0)) for c in chunks) if chunks else None
    return {
        "shot": shot.plan.shot,
        "frames": len(shot.frames),
        "seconds": round(infer_seconds, 3) if infer_seconds else None,
        "frames_per_second": round(len(shot.frames) / infer_seconds, 3) if infer_seconds else None,
        "seconds_note": "inference seconds summed over chunks (chunks on several GPUs overlap in wall time)",
        "chunks": len(chunks),
        "load_seconds": round(sum(float(c.get("load_seconds", 0.0)) for c in chunks), 3),
        "output": shot.output.pattern,
        "width": shot.width,
        "height": shot.height,
        "channels": shot.channels,
        "keyframe_error": review.keyframe_error,
        "temporal": temporal,
        "warnings": review.warnings,
        "checksums": str(layout.checksums),
        "contact_sheet": str(layout.contact_sheet),
    }
