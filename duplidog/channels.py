"""Which channels the network reads, which it writes, and which are carried through untouched.

Why: a plate is often more than RGB (an alpha, a depth pass, extra AOVs in a multi-channel EXR), and
the fix may be fewer or other channels (a one-channel matte from an RGB plate). The network should see
only the picture it learns from, predict exactly what the artist delivered, and everything else in
the source must reach the output frame unchanged rather than be lost or "learned".

* output: the target keyframes' channels, always (the artist's deliverable defines it);
* input (default): the source's colour channels -- R, G, B when present, else every channel that is
  not alpha or depth, else all of them;
* passthrough (default): source channels neither fed to the network nor produced by it (A, Z,
  extra AOVs); the output frame gets them copied from the source.
"""

from __future__ import annotations

from typing import Any, Sequence

from duplidog.errors import DuplidogError

COLOUR_NAMES = ("R", "G", "B")
_ALPHA_OR_DEPTH = {"a", "alpha", "z", "depth", "zback"}


def _is_alpha_or_depth(name: str) -> bool:
    """True for 'A', 'Z', 'alpha', and layered names such as 'diffuse.A' or 'depth.Z'."""
    last = name.rsplit(".", 1)[-1].lower()
    return last in _ALPHA_OR_DEPTH or name.lower() in _ALPHA_OR_DEPTH


def default_input_channels(names: Sequence[str]) -> list[str]:
    """R, G, B if all present, else all channels but alpha/depth, else all channels."""
    if all(c in names for c in COLOUR_NAMES):
        return list(COLOUR_NAMES)
    picture = [n for n in names if not _is_alpha_or_depth(n)]
    return picture or list(names)


def _check_named(names: Sequence[str], available: Sequence[str], what: str, info: Any) -> list[str]:
    names = list(names)
    missing = [n for n in names if n not in available]
    if missing:
        raise DuplidogError(
            f"{info.path}: {what} channel {', '.join(missing)} not found "
            f"(the file has {', '.join(available)})"
        )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DuplidogError(f"{info.path}: {what} channel {', '.join(repeated)} named more than once")
    return names


def choose_channels(
    source: Any,
    target: Any,
    input_setting: Sequence[str] | None,
    passthrough_setting: Sequence[str] | None,
) -> tuple[list[str], list[str], list[str]]:
    """``(input_names, output_names, passthrough_names)`` for a shot.

    ``source`` and ``target`` are ``imageio.ImageInfo`` of a source frame and a keyframe. Settings of
    ``None`` (or empty) mean the defaults above. A named channel that the source lacks, or a
    passthrough channel that the network also produces, is a DuplidogError naming the file.
    """
    source_names = list(source.channel_names)
    output_names = list(target.channel_names)
    if not output_names:
        raise DuplidogError(f"{target.path}: has no channels")

    if input_setting:
        input_names = _check_named(input_setting, source_names, "input", source)
    else:
        input_names = default_input_channels(source_names)

    if passthrough_setting:
        passthrough_names = _check_named(passthrough_setting, source_names, "passthrough", source)
        clash = [n for n in passthrough_names if n in output_names]
        if clash:
            raise DuplidogError(
                f"{source.path}: passthrough channel {', '.join(clash)} is also an output channel of "
                f"{target.path}; it can be learned or copied, not both"
            )
    else:
        passthrough_names = [n for n in source_names if n not in input_names and n not in output_names]
    return input_names, output_names, passthrough_names
