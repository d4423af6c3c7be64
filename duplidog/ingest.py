"""Ingest: find a shot's frames, read their headers, check they agree, and write the manifest and plan.

Only headers are read, so ingesting a 100-frame UHD shot takes a second. Every problem is found before
any GPU time is spent, and each is one line naming the file or frames and what is wrong.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from duplidog.core.layout import shot_output_pattern
from duplidog.core.plan import MANIFEST_FILE, PLAN_FILE, Plan, write_manifest, write_plan
from duplidog.core.shotframes import (ShotFrames, check_output_pattern, discover_frames, neighbour_frames,
                                      shot_scale, shot_temporal_frames)
from duplidog.errors import DuplidogError
from duplidog.sequence import FramePattern, format_frame_list

if TYPE_CHECKING:
    from duplidog.imageio import ImageInfo

log = logging.getLogger(__name__)


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


def ingest(config: dict, out_dir: str | Path) -> Plan:
    """Check a resolved shot config against the files and write ``manifest.csv`` and ``plan.json``.

    Returns the plan. ``config`` is a full config (see duplidog.settings.resolve), or only the keys
    ingest reads (``duplidog.core.shotframes.INGEST_KEYS``): without ``output`` the output pattern is
    not checked here (the workflow checks it when it builds the DAG) and the plan records none.
    """
    out_dir = Path(out_dir)
    shot = discover_frames(config)
    source, target = FramePattern(config["source"]), FramePattern(config["target"])
    output = _checked_output(config, shot.frames)
    plate = _read_headers(source, sorted(set(shot.frames) | set(shot.keyframes)))
    first = plate[shot.frames[0]]
    temporal_frames = shot_temporal_frames(config)
    neighbours = _read_headers(source, neighbour_frames(source, plate, temporal_frames))
    _check_plate({**plate, **neighbours}, first)
    keys = _read_headers(target, shot.keyframes)
    scale = shot_scale(config)
    _check_keyframes(keys, first, scale)
    plan = _make_plan(config, shot, output, plate, keys, scale, temporal_frames)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_manifest(out_dir / MANIFEST_FILE, _manifest_rows(plate, keys, plan.validation_frames))
    write_plan(out_dir / PLAN_FILE, plan)
    _log_summary(plan)
    return plan


def _checked_output(config: dict, frames: list[int]) -> str | None:
    """The shot's output pattern, refused if it would overwrite the plates or keyframes or cannot be
    written; None when the config names no output."""
    output = shot_output_pattern(config) if "output" in config else None
    if output is not None:
        check_output_pattern(output, config["source"], config["target"], frames)
    return output


def _read_headers(pattern: FramePattern, frames: Iterable[int]) -> dict[int, ImageInfo]:
    """The header of each of ``frames`` of ``pattern``, by frame, in the order given."""
    from duplidog import imageio

    return {frame: imageio.read_info(pattern.path(frame)) for frame in frames}


def _check_plate(infos: dict[int, ImageInfo], first: ImageInfo) -> None:
    """Refuse a plate frame whose size, channels or kind of file differ from the ``first`` frame's."""
    for info in infos.values():
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


def _check_keyframes(keys: dict[int, ImageInfo], first: ImageInfo, scale: int) -> None:
    """Refuse a keyframe that is not ``scale`` times the plate's size (data and, when upscaled, display
    window) or whose channels differ from the first keyframe's."""
    first_target = next(iter(keys.values()))
    for info in keys.values():
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


def _make_plan(config: dict, shot: ShotFrames, output: str | None, plate: dict[int, ImageInfo],
               keys: dict[int, ImageInfo], scale: int, temporal_frames: int) -> Plan:
    """The shot's plan from its checked headers: channels, held-out keyframes and colour spaces chosen."""
    from duplidog import channels as channel_choice
    from duplidog import colour

    first, first_target = plate[shot.frames[0]], keys[shot.keyframes[0]]
    input_channels, output_channels, passthrough = channel_choice.choose_channels(
        first, first_target, config["channels"]["input"], config["channels"]["passthrough"]
    )
    settings = config["ingest"]
    validation = choose_validation_frames(
        shot.keyframes, settings["validation_keyframes"], settings["min_keyframes_for_validation"]
    )
    space = colour.resolve_colorspace(config["colorspace"], first)
    convert = bool(settings.get("convert_colorspace", False))
    plate_space = _tagged_space(plate, space, convert, "plate")
    target_space = _tagged_space(keys, space, convert, "keyframe")
    return Plan(
        shot=config["shot"], source=config["source"], target=config["target"], output=output,
        frames=shot.frames, keyframes=shot.keyframes,
        train_frames=[f for f in shot.keyframes if f not in validation], validation_frames=validation,
        colorspace=space, plate_colorspace=plate_space, target_colorspace=target_space, convert_colorspace=convert,
        input_channels=list(input_channels), output_channels=list(output_channels),
        passthrough_channels=list(passthrough), width=first.width, height=first.height, scale=scale,
        temporal_frames=temporal_frames, pixel_type=first.pixel_type, format_name=first.format_name,
        channel_names=list(first.channel_names), nonfinite=settings["nonfinite"], seed=config["seed"],
    )


def _manifest_rows(plate: dict[int, ImageInfo], keys: dict[int, ImageInfo], validation: list[int]) -> list[dict]:
    """One manifest row per plate frame, in frame order: its role (infer, train or validation) and the
    file, size and channels of the frame and of its keyframe."""
    rows = []
    for frame in sorted(plate):
        info, key = plate[frame], keys.get(frame)
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
    return rows


def _log_summary(plan: Plan) -> None:
    """One line on what ingest found, and one more when the plate is converted to the working space."""
    from duplidog import colour

    log.info(
        "ingest %s: %d frames, keyframes %s (validation %s), %dx%d %s %s, colour space %s",
        plan.shot, len(plan.frames), format_frame_list(plan.keyframes),
        format_frame_list(plan.validation_frames) or "none",
        plan.width, plan.height, plan.pixel_type, ",".join(plan.channel_names), colour.label(plan.colorspace),
    )
    if plan.plate_colorspace and plan.plate_colorspace != colour.ocio_name(plan.colorspace):
        log.info("ingest %s: the plate is in %s and is converted to %s on read, and back on write",
                 plan.shot, plan.plate_colorspace, colour.ocio_name(plan.colorspace))


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
