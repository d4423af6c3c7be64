"""Colour spaces by name, through OpenColorIO: the studio's config, the plate's tag, conversions, views.

The config is ``$OCIO`` when it is set, else OCIO's built-in CG config (``ocio://default``), the way
Nuke, Maya and OpenImageIO find theirs. A name is looked up as OCIO does: colour-space names, aliases
and roles, case-insensitively (``ACEScg``, ``lin_ap1_scene`` and ``scene_linear`` may all name one
space). Every name stored in a plan or a model card is the space's canonical name in that config.

Which of duplidog's working kinds (``duplidog.colour``) an OCIO space gets, from its ``encoding``
(OCIO 2's standard vocabulary), else its data flag and reference space, else its family and name:

* ``scene-linear`` -> ``linear`` (the asinh shaper; training is as it was for linear EXR);
* ``log`` -> ``log``; ``sdr-video``, ``hdr-video``, ``display-linear`` -> ``display`` (bounded values);
* ``data`` (and ``isData``) -> ``display``: used as they are, never converted;
* no encoding: display-referred -> ``display``; "log" in family or name -> ``log``; "lin" -> ``linear``;
  else ``display``.

Conversions (``convert``) apply an OCIO processor to the colour channels only (R, G, B, or the first
three when there are no RGB names); alpha, mattes and other channels pass unchanged, nothing is
clamped (OCIO's scene-linear transforms are unbounded), and the array's dtype is kept.
``display_view`` is for pictures people look at, never for pixels that are written or trained on.
"""

from __future__ import annotations

import difflib
import functools
import os
from typing import Any, Sequence

import numpy as np

from duplidog.errors import DuplidogError

BUILTIN = "ocio://default"
#: Encodings (OCIO 2 ``ColorSpace.getEncoding``) and the working kind each gets.
ENCODING_KINDS = {"scene-linear": "linear", "log": "log", "sdr-video": "display", "hdr-video": "display",
                  "display-linear": "display", "data": "display"}


def _ocio():
    try:
        import PyOpenColorIO
    except ImportError as exc:  # a dependency; only a broken install lacks it
        raise DuplidogError(f"OpenColorIO is not installed (pip install opencolorio): {exc}") from None
    return PyOpenColorIO


def config_path() -> str:
    """Where the active config comes from: ``$OCIO`` if set (and not empty), else the built-in one."""
    return os.environ.get("OCIO", "").strip() or BUILTIN


@functools.lru_cache(maxsize=8)
def _load(path: str):
    ocio = _ocio()
    try:
        return ocio.Config.CreateFromFile(path)
    except Exception as exc:  # OCIO raises its own Exception type with a multi-line message
        where = "$OCIO" if path != BUILTIN else "OCIO's built-in config"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DuplidogError(f"{path}: cannot load the OpenColorIO config ({where}): {first}") from None


def config():
    """The active OCIO config (cached per path)."""
    return _load(config_path())


def config_info() -> dict[str, str]:
    """Name, description and origin of the active config, for plans and model cards."""
    cfg = config()
    lines = [line.strip() for line in (cfg.getDescription() or "").splitlines() if line.strip()]
    return {"config": cfg.getName() or "", "config_description": lines[0] if lines else "",
            "config_path": config_path()}


def all_names(cfg=None) -> list[str]:
    """Every name a space can be called by: names, aliases and roles."""
    cfg = cfg or config()
    names = []
    for space in cfg.getColorSpaces():
        names.append(space.getName())
        names.extend(space.getAliases())
    names.extend(cfg.getRoleNames())
    return names


def lookup(name: str):
    """The OCIO ``ColorSpace`` that ``name`` names in the active config, or None."""
    if not name:
        return None
    return config().getColorSpace(str(name))


def canonical(name: str) -> str | None:
    """The canonical colour-space name for a name, alias or role, or None when the config has none."""
    space = lookup(name)
    return space.getName() if space is not None else None


def close_names(name: str, count: int = 4) -> list[str]:
    """A few names of the active config that look like ``name`` (for error messages)."""
    names = all_names()
    lowered = {n.lower(): n for n in names}
    found = difflib.get_close_matches(str(name).lower(), list(lowered), n=count, cutoff=0.5)
    if not found:
        found = [n.lower() for n in names if str(name).lower() in n.lower()][:count]
    return [lowered[n] for n in found]


def unknown_message(what: str, name: str) -> str:
    """One line: ``name`` is not a space of the active config, and what it might have meant."""
    near = close_names(name)
    hint = f"; close names: {', '.join(near)}" if near else ""
    return f"{what} {name!r} is not a colour space of the OpenColorIO config {config_path()}{hint}"


def kind(name: str) -> str:
    """duplidog's working kind ('linear', 'log' or 'display') for an OCIO space (see the module doc)."""
    ocio = _ocio()
    space = lookup(name)
    if space is None:
        raise DuplidogError(unknown_message("colour space", name))
    encoding = (space.getEncoding() or "").lower()
    if encoding in ENCODING_KINDS:
        return ENCODING_KINDS[encoding]
    if space.isData() or space.getReferenceSpaceType() == ocio.REFERENCE_SPACE_DISPLAY:
        return "display"
    words = f"{space.getFamily()} {space.getName()}".lower()
    if "log" in words:
        return "log"
    return "linear" if "lin" in words else "display"


def is_data(name: str) -> bool:
    space = lookup(name)
    return bool(space is not None and space.isData())


def colour_channels(channels: Sequence[str] | None, count: int) -> list[int]:
    """Indices of the three colour channels: R, G, B by name (after any layer prefix), else the first
    three; [] when there are fewer than three (a matte, a depth channel: not colour)."""
    if channels is not None:
        short = [str(c).rsplit(".", 1)[-1].upper() for c in channels]
        if all(c in short for c in ("R", "G", "B")):
            return [short.index(c) for c in ("R", "G", "B")]
    return [0, 1, 2] if count >= 3 else []


def _apply(processor, pixels: np.ndarray, indices: list[int]) -> np.ndarray:
    """``processor`` applied to the ``indices`` channels of (H, W, C) ``pixels``; a new array, same dtype."""
    ocio = _ocio()
    out = np.array(pixels, copy=True)
    if not indices or processor.isNoOp():
        return out
    rgb = np.ascontiguousarray(out[..., indices], dtype=np.float32).reshape(-1, 3)
    cpu = processor.getDefaultCPUProcessor()
    desc = ocio.PackedImageDesc(rgb, rgb.shape[0], 1, 3)
    cpu.apply(desc)
    out[..., indices] = rgb.reshape(out.shape[:-1] + (3,)).astype(out.dtype, copy=False)
    return out


def convert(pixels: np.ndarray, channels: Sequence[str] | None, source: str, destination: str) -> np.ndarray:
    """(H, W, C) pixels from OCIO space ``source`` to ``destination`` (colour channels only; see module doc)."""
    src, dst = canonical(source), canonical(destination)
    for what, name, found in (("source colour space", source, src), ("destination colour space", destination, dst)):
        if found is None:
            raise DuplidogError(unknown_message(what, name))
    pixels = np.asarray(pixels)
    if src == dst or is_data(src) or is_data(dst):
        return pixels
    processor = config().getProcessor(src, dst)
    return _apply(processor, pixels, colour_channels(channels, pixels.shape[-1]))


#: Scene-linear values that name no space (an untagged EXR, ``colorspace: linear``) are shown as linear
#: Rec.709, the way Nuke's default config shows them, where the active config has that space.
UNTAGGED_LINEAR = "lin_rec709_scene"


def picture_space(space: Any) -> str | None:
    """The OCIO space pictures of a working space (``duplidog.colour.WorkingSpace``) are shown from: its
    own, or linear Rec.709 for untagged scene-linear values; None where there is none (shown as they are)."""
    if space.ocio_name:
        return space.ocio_name
    return canonical(UNTAGGED_LINEAR) if space.name == "linear" else None


def check_display_view(display: str | None, view: str | None) -> tuple[str, str]:
    """The (display, view) to use: None means the config's default display, or that display's default
    view. Raises DuplidogError naming the setting when the config has no such display or view."""
    cfg = config()
    displays = list(cfg.getDisplays())
    display = display or cfg.getDefaultDisplay()
    if display not in displays:
        raise DuplidogError(f"assemble.display: {display!r} is not a display of the OpenColorIO config "
                            f"{config_path()} (displays: {', '.join(displays)})")
    views = list(cfg.getViews(display))
    view = view or cfg.getDefaultView(display)
    if view not in views:
        raise DuplidogError(f"assemble.view: {view!r} is not a view of display {display!r} in the OpenColorIO "
                            f"config {config_path()} (views: {', '.join(views)})")
    return display, view


def display_view(pixels: np.ndarray, space: str, display: str | None = None, view: str | None = None,
                 channels: Sequence[str] | None = None) -> np.ndarray:
    """(H, W, C) pixels in OCIO space ``space`` as display values through ``display``/``view`` (for a
    picture: the caller clips and quantises). Channels other than colour pass unchanged."""
    ocio = _ocio()
    name = canonical(space)
    if name is None:
        raise DuplidogError(unknown_message("colour space", space))
    display, view = check_display_view(display, view)
    processor = config().getProcessor(name, display, view, ocio.TRANSFORM_DIR_FORWARD)
    return _apply(processor, np.asarray(pixels, np.float32), colour_channels(channels, np.asarray(pixels).shape[-1]))


def describe(name: str) -> dict[str, Any]:
    """What a plan or card stores about OCIO space ``name``: its canonical name, encoding, family and
    the config it was resolved in."""
    space = lookup(name)
    if space is None:
        raise DuplidogError(unknown_message("colour space", name))
    return {"colorspace": space.getName(), "encoding": space.getEncoding() or "", "family": space.getFamily() or "",
            **config_info()}
