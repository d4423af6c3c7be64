"""Ingest: find a shot's frames, read their headers, check they agree, and write the manifest and plan.

Only headers are read, so ingesting a 100-frame UHD shot takes a second. Every problem is found before
any GPU time is spent, and each is one line naming the file or frames and what is wrong.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Tuple

import pandas as pd

from duplidog import temporal
from duplidog.atomic import atomic_path, atomic_write_json
from duplidog.errors import DuplidogError
from duplidog.sequence import FramePattern, format_frame_list, parse_frame_range
from duplidog.settings import shot_output_pattern

log = logging.getLogger(__name__)


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


def choose_validation_frames(keyframes: list[int], count: int, minimum: int) -> list[int]:
    """Hold out keyframes from the middle of the shot: the model must then interpolate to reach them,
    which is what the non-key frames ask of it. None are held out below ``minimum`` keyframes."""
    if len(keyframes) < minimum or count <= 0:
        return []
    count = min(count, len(keyframes) - 1)
    inner = keyframes[1:-1] if len(keyframes) > 2 else keyframes
    middle = (len(inner) - 1) / 2
    by_centrality = sorted(inner, key=lambda f: (abs(inner.index(f) - middle), f))
    return sorted(by_centrality[:count])


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


def ingest(config: dict, out_dir: str | Path) -> dict:
    """Check a resolved shot config against the files and write ``manifest.csv`` and ``plan.json``.

    Returns the plan. ``config`` is a full config (see duplidog.settings.resolve), or only the keys
    ingest reads (INGEST_KEYS): without ``output`` the output pattern is not checked here (the
    workflow checks it when it builds the DAG) and the plan records none.
    """
    from duplidog import channels as channel_choice
    from duplidog import colour, imageio

    out_dir = Path(out_dir)
    shot = discover_frames(config)
    source, target = FramePattern(config["source"]), FramePattern(config["target"])
    output = shot_output_pattern(config) if "output" in config else None
    if output is not None:
        check_output_pattern(output, config["source"], config["target"], shot.frames)

    infos = {frame: imageio.read_info(source.path(frame)) for frame in sorted(set(shot.frames) | set(shot.keyframes))}
    first = infos[shot.frames[0]]
    temporal_frames = shot_temporal_frames(config)
    neighbours = neighbour_frames(source, infos, temporal_frames)
    checked = {**infos, **{frame: imageio.read_info(source.path(frame)) for frame in neighbours}}
    for frame, info in checked.items():
        if (info.width, info.height) != (first.width, first.height):
            raise DuplidogError(
                f"{info.path}: size {info.width}x{info.height} differs from the plate's "
                f"{first.width}x{first.height} ({first.path})"
            )
        if info.channel_names != first.channel_names:
            raise DuplidogError(
                f"{info.path}: channels {','.join(info.channel_names)} differ from the plate's "
                f"{','.join(first.channel_names)} ({first.path})"
            )
        # A renamed 8-bit PNG or a float frame among half ones would be read, trained on and written
        # in another kind of file than its neighbours.
        if (info.format_name, info.pixel_type) != (first.format_name, first.pixel_type):
            raise DuplidogError(
                f"{info.path}: a {info.format_name} file of {info.pixel_type} pixels, but the plate's frames are "
                f"{first.format_name} files of {first.pixel_type} ({first.path})"
            )

    target_infos = {frame: imageio.read_info(target.path(frame)) for frame in shot.keyframes}
    first_target = target_infos[shot.keyframes[0]]
    scale = shot_scale(config)
    for frame, info in target_infos.items():
        if (info.width, info.height) != (scale * first.width, scale * first.height):
            upscaled = (f" times {scale} (model.scale: {scale}), {scale * first.width}x{scale * first.height}"
                        if scale > 1 else "")
            raise DuplidogError(
                f"{info.path}: keyframe size {info.width}x{info.height} differs from the plate's "
                f"{first.width}x{first.height}{upscaled}"
            )
        if scale > 1 and (info.full_width, info.full_height) != (scale * first.full_width, scale * first.full_height):
            raise DuplidogError(
                f"{info.path}: keyframe display window {info.full_width}x{info.full_height} is not {scale} times the "
                f"plate's {first.full_width}x{first.full_height} (model.scale: {scale})"
            )
        if info.channel_names != first_target.channel_names:
            raise DuplidogError(
                f"{info.path}: keyframe has {info.nchannels} channel(s) ({','.join(info.channel_names)}) "
                f"but {first_target.path} has {first_target.nchannels} ({','.join(first_target.channel_names)})"
            )

    input_channels, output_channels, passthrough = channel_choice.choose_channels(
        first, first_target, config["channels"]["input"], config["channels"]["passthrough"]
    )
    settings = config["ingest"]
    validation = choose_validation_frames(
        shot.keyframes, settings["validation_keyframes"], settings["min_keyframes_for_validation"]
    )
    rows = []
    for frame in sorted(infos):
        info, key = infos[frame], target_infos.get(frame)
        role = "infer" if key is None else ("validation" if frame in validation else "train")
        rows.append(
            {
                "frame": frame,
                "role": role,
                "source": info.path,
                "target": key.path if key else "",
                "width": info.width,
                "height": info.height,
                "nchannels": info.nchannels,
                "channel_names": ",".join(info.channel_names),
                "pixel_type": info.pixel_type,
                "target_nchannels": key.nchannels if key else 0,
                "target_channel_names": ",".join(key.channel_names) if key else "",
            }
        )
    space = colour.resolve_colorspace(config["colorspace"], first)
    convert = bool(settings.get("convert_colorspace", False))
    plate_space = _tagged_space(infos, space, convert, "plate")
    target_space = _tagged_space(target_infos, space, convert, "keyframe")
    plan = {
        "shot": config["shot"],
        "source": config["source"],
        "target": config["target"],
        "output": output,
        "frames": shot.frames,
        "keyframes": shot.keyframes,
        "train_frames": [f for f in shot.keyframes if f not in validation],
        "validation_frames": validation,
        "colorspace": space,
        # The OCIO spaces the plate's and keyframes' files are tagged with (None: untagged, or no OCIO
        # working space), and whether frames in another space than "colorspace" are converted on read.
        "plate_colorspace": plate_space,
        "target_colorspace": target_space,
        "convert_colorspace": convert,
        "input_channels": list(input_channels),
        "output_channels": list(output_channels),
        "passthrough_channels": list(passthrough),
        "width": first.width,
        "height": first.height,
        "scale": scale,  # the keyframes' and the output's size over the plate's
        "temporal_frames": temporal_frames,  # neighbour frames on each side the network reads (duplidog.temporal)
        "pixel_type": first.pixel_type,
        "format_name": first.format_name,
        "channel_names": list(first.channel_names),
        "nonfinite": settings["nonfinite"],
        "seed": config["seed"],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "manifest.csv") as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    atomic_write_json(out_dir / "plan.json", plan)
    log.info(
        "ingest %s: %d frames, keyframes %s (validation %s), %dx%d %s %s, colour space %s",
        config["shot"], len(shot.frames), format_frame_list(shot.keyframes), format_frame_list(validation) or "none",
        first.width, first.height, first.pixel_type, ",".join(first.channel_names), colour.label(space),
    )
    if plate_space and plate_space != colour.ocio_name(space):
        log.info("ingest %s: the plate is in %s and is converted to %s on read, and back on write",
                 config["shot"], plate_space, colour.ocio_name(space))
    return plan


def _tagged_space(infos: dict, space: str | dict, convert: bool, what: str) -> str | None:
    """The OCIO space the files' ``oiio:ColorSpace`` tags name (canonical), checked against the working
    ``space``: None when the working space is no OCIO one or no file is tagged with a known space.

    Frames of one sequence in different spaces are an error; a space other than the working one is
    an error naming the file unless ``convert`` (``ingest.convert_colorspace``). A tag the config does
    not know is reported once and the file taken to be in the working space (an untagged file is)."""
    from duplidog import colour

    wanted = colour.ocio_name(space)
    if not wanted:
        return None
    found, first_path = None, None
    for info in infos.values():
        tag = str(info.attributes.get("oiio:ColorSpace", "") or "").strip()
        named = colour.file_space(info)
        if tag and named is None:
            log.warning("%s: oiio:ColorSpace %r is not a colour space of the OpenColorIO config; "
                        "taken to be in %s", info.path, tag, wanted)
            continue
        if named is None:
            continue
        if found is None:
            found, first_path = named, info.path
        elif named != found:
            raise DuplidogError(f"{info.path}: {what} frame in colour space {named!r}, but {first_path} is in "
                                f"{found!r} (every frame of a sequence has one space)")
        if named != wanted and not convert:
            raise DuplidogError(f"{info.path}: {what} in colour space {named!r}, but colorspace is {wanted!r} "
                                f"({colour.conversion_hint()})")
    return found


def read_plan(path: str | Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DuplidogError(f"{path}: plan not found (run ingest first)") from None
    except json.JSONDecodeError as exc:
        raise DuplidogError(f"{path}: plan is not valid JSON ({exc})") from None


def read_manifest(path: str | Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, keep_default_na=False)
    except FileNotFoundError:
        raise DuplidogError(f"{path}: manifest not found (run ingest first)") from None
