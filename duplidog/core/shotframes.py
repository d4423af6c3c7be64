"""A shot's frames as the workflow sees them when it builds the DAG: found from the patterns alone.

Snakemake must know every job before any runs, so the frames, keyframes and neighbour frames of a
shot, and the checks on its output pattern, are decided here from the file names (no frame is
opened); ingest then reads the headers and checks what this cannot. ``ingest_settings`` is the part
of a config ingest reads, so that a change to anything else does not rerun it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Tuple

from duplidog import temporal
from duplidog.errors import DuplidogError
from duplidog.sequence import FramePattern, format_frame_list, parse_frame_range


@dataclass(frozen=True)
class ShotFrames:
    """Which frames a shot has, found from the patterns alone (no file is opened)."""

    frames: list[int]  # source frames to process
    keyframes: list[int]  # frames that have a target ("after") file


def discover_frames(config: dict) -> ShotFrames:
    """Frames and keyframes of a shot from its patterns; used when Snakemake builds the DAG, too."""
    source = FramePattern(config["source"])
    target = FramePattern(config["target"])
    existing = source.existing_frames()
    if not existing:
        raise DuplidogError(f"{config['source']}: no source frames found")
    requested = parse_frame_range(config.get("frames"))
    if requested is None:
        # Every frame from the first to the last: a gap is an error, never skipped silently.
        frames = list(range(existing[0], existing[-1] + 1))
    else:
        outside = [f for f in requested if f < existing[0] or f > existing[-1]]
        if outside:
            raise DuplidogError(
                f"{config['source']}: frames {format_frame_list(outside)} are outside the frames that exist "
                f"({existing[0]}-{existing[-1]})"
            )
        frames = requested
    missing = sorted(set(frames) - set(existing))
    if missing:
        raise DuplidogError(
            f"{config['source']}: {len(missing)} source frame(s) missing: {format_frame_list(missing)}"
        )
    keyframes = target.existing_frames()
    if not keyframes:
        raise DuplidogError(f"{config['target']}: no keyframes found (no target file exists)")
    orphans = sorted(set(keyframes) - set(existing))
    if orphans:
        raise DuplidogError(
            f"{config['target']}: keyframe(s) {format_frame_list(orphans)} have no matching source frame "
            f"({source.path(orphans[0])} does not exist)"
        )
    return ShotFrames(frames=frames, keyframes=keyframes)


def check_output_pattern(output: str, source: str, target: str, frames: list[int], writable: bool = True) -> None:
    """Refuse an output that would overwrite the plates or keyframes, or (``writable``) that cannot be written."""
    out, src, tgt = FramePattern(output), FramePattern(source), FramePattern(target)
    for frame in frames:
        destination = os.path.realpath(out.path(frame))
        if destination in (os.path.realpath(src.path(frame)), os.path.realpath(tgt.path(frame))):
            raise DuplidogError(
                f"{output}: output would overwrite the source or target frame {frame} ({out.path(frame)}); "
                "choose another output pattern"
            )
    if not writable:
        return
    folder = Path(out.path(frames[0])).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DuplidogError(f"{folder}: output folder cannot be created ({exc.strerror})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise DuplidogError(f"{folder}: output folder is not writable")


def check_output_writable(output: str, frames: list[int]) -> None:
    """Refuse, without creating anything, an output whose missing frames would go into a folder that
    cannot be written (read-only, another user's) -- checked when the DAG is built, where Snakemake
    would otherwise stop in its own traceback removing or writing the frames. A finished delivery
    made read-only on purpose is not refused: nothing is to be written there."""
    pattern = FramePattern(output)
    missing = [frame for frame in frames if not os.path.lexists(pattern.path(frame))]
    if not missing:
        return
    folder = Path(pattern.path(missing[0])).parent
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if os.access(existing, os.W_OK | os.X_OK):
        return
    if existing == folder:
        raise DuplidogError(f"{folder}: output folder is not writable (frame {missing[0]} is to be written there)")
    raise DuplidogError(f"{folder}: output folder cannot be created ({existing} is not writable)")


# The settings ingest reads. The workflow gives ingest only these, so that a change to anything else
# (the output pattern, inference settings) does not rerun ingest and with it the pool and training.
INGEST_KEYS = ("shot", "source", "target", "frames", "colorspace", "seed", "channels", "ingest")


def ingest_settings(config: dict) -> dict:
    """What ingest reads of a resolved config: ``INGEST_KEYS``, the upscaling ``scale`` (model.scale),
    which decides the keyframes' size, and ``temporal_frames`` (model.temporal_frames), which decides
    the neighbour frames the pool reads."""
    return {**{key: config[key] for key in INGEST_KEYS}, "scale": shot_scale(config),
            "temporal_frames": shot_temporal_frames(config)}


def neighbour_frames(source: FramePattern, frames: Iterable[int], temporal_frames: int,
                     ends: Optional[Tuple[int, int]] = None) -> List[int]:
    """The plate frames outside ``frames`` (a shot's frames and keyframes) that a network with
    ``temporal_frames`` N reads as neighbours, mirrored at ``ends`` (default: the ends of ``frames``):
    where the shot leaves a gap. Each must be a plate frame like the rest; one that is not there is
    refused, naming it (also when the DAG is built, where Snakemake would only say an input is missing,
    and before a plan-less run reads its first frame)."""
    frames = set(int(f) for f in frames)
    ends = ends or (min(frames), max(frames))
    neighbours = [f for f in temporal.needed_frames(frames, temporal_frames, *ends) if f not in frames]
    absent = [f for f in neighbours if not os.path.isfile(source.path(f))]
    if absent:
        raise DuplidogError(
            f"{source.path(absent[0])}: plate frame(s) {format_frame_list(absent)} missing, which "
            f"model.temporal_frames {temporal_frames} reads as neighbours of the shot's frames"
        )
    return neighbours


def shot_temporal_frames(config: dict) -> int:
    """Neighbour frames on each side: ``temporal_frames`` (ingest's settings) or ``model.temporal_frames``
    (a full config), else 0."""
    return int(config.get("temporal_frames", (config.get("model") or {}).get("temporal_frames", 0)) or 0)


def shot_scale(config: dict) -> int:
    """Output size / plate size: ``scale`` (ingest's settings) or ``model.scale`` (a full config), else 1."""
    return int(config.get("scale", (config.get("model") or {}).get("scale", 1)))
