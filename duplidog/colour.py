"""The working space: what pixel values the network sees, and the exact way back.

Why: scene-linear EXR values run from slightly below 0 to thousands (a specular, a light bulb), with
most of the picture between 0.01 and 1. A network trained on those numbers spends its capacity on the
highlights and its loss on a few bright pixels. So scene-linear frames are passed through an
invertible log-like *shaper* into the working space, and back out through its exact inverse before
writing. Display-referred (``display``: PNG, JPEG, 8/16-bit TIFF) and log-encoded (``log``: DPX
scans, camera log) frames are already perceptually spaced and are used as they are.

The shaper for ``linear`` is a scaled inverse hyperbolic sine::

    y = asinh(x / s) / asinh(1 / s)          x = s * sinh(y * asinh(1 / s))        s = 0.05

Why this one:

* odd and defined for every real number, so negative values (from grain, keying, resampling) go
  through and come back; nothing is clamped and there is no cut point or branch;
* linear near 0 (slope 1 / (s * asinh(1/s)) = 5.42 at x = 0), so the noise floor is not exploded
  the way a true log would;
* logarithmic above about 1: each doubling of light adds the same step, so highlights are
  compressed but kept: 0 -> 0, 0.18 (mid grey) -> 0.54, 1 -> 1, 10 -> 1.62, 1000 -> 2.87,
  10000 -> 3.50;
* exactly invertible in closed form; float32 round trips are accurate to a few units in the last
  place (relative error below 1e-6 from -10 to 10000, measured in tests). Stored as float16 (the
  tile pool), working values up to 4 keep 11 significant bits, so a scene value comes back within
  0.4 % (half-float EXR itself keeps 0.05 %), which is below what a network learns to.

Colour spaces named the studio's way (OpenColorIO names, aliases and roles of ``$OCIO`` or OCIO's
built-in config; see ``duplidog.ocio``) map to one of these kinds by their encoding, and the space
carries the OCIO name with it: ``WorkingSpace.ocio`` holds the canonical name and the config's name,
so the plan and the model card say which space the pixels are in, not only how they are shaped.

``describe(space)`` returns the name and parameters as a dict, which the model card stores;
``from_description`` rebuilds the very same transform, so inference on another machine (or in Nuke
through the exported TorchScript model) applies what training used, even if defaults change later.

``encode`` and ``decode`` take numpy arrays or torch tensors; the tensor path and the scriptable
``WorkingSpaceModule`` of exported models live in ``duplidog.colour_module``, so the stages that never
touch a network do not import torch.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, Sequence, Union

import numpy as np

from duplidog.errors import DuplidogError

SPACES = ("linear", "log", "display")
SETTINGS = ("auto",) + SPACES

#: Softness s of the asinh shaper: the scene value where it turns from linear to logarithmic.
DEFAULT_SOFTNESS = 0.05

#: Channel names (OpenEXR's, case-insensitive, after any layer prefix) that hold coverage, not light:
#: a matte passes through the shaper unchanged, or its 50 % point would land at scene 0.2 and every
#: soft edge would be judged in a space made for light.
COVERAGE_NAMES = ("a", "alpha", "matte", "mask")

#: DPX transfer characteristics that mean the code values are already log encoded.
_LOG_TRANSFERS = ("printing density", "logarithmic", "log")


@dataclass(frozen=True)
class WorkingSpace:
    """One working space: ``name`` ('linear', 'log' or 'display') and, for 'linear', the shaper's
    softness ``s``. ``log`` and ``display`` are the identity."""

    name: str
    softness: float = DEFAULT_SOFTNESS
    #: Whether coverage channels are shaped too: only for models saved before mattes were left alone.
    shape_coverage: bool = False
    #: The OpenColorIO space the pixels are in (``duplidog.ocio.describe`` as sorted key/value pairs), or
    #: None for a space named only by its kind (settings linear/log/display, untagged files, old cards).
    ocio: tuple | None = None

    def __post_init__(self) -> None:
        if self.name not in SPACES:
            raise DuplidogError(f"colour space {self.name!r} is not one of {', '.join(SPACES)}")
        if not (self.softness > 0 and math.isfinite(self.softness)):
            raise DuplidogError(f"colour space softness must be a positive number, got {self.softness!r}")

    @property
    def is_identity(self) -> bool:
        return self.name != "linear"

    @property
    def norm(self) -> float:
        """asinh(1 / s): divides the shaper so that scene 1.0 lands on working 1.0."""
        return math.asinh(1.0 / self.softness)

    @property
    def ocio_name(self) -> str | None:
        """The canonical OpenColorIO name of the space, or None."""
        return dict(self.ocio).get("colorspace") if self.ocio else None


SpaceLike = Union[str, dict, WorkingSpace]


def as_space(space: SpaceLike) -> WorkingSpace:
    """Accept a space name, a ``describe()`` dict (from a model card) or a ``WorkingSpace``."""
    if isinstance(space, WorkingSpace):
        return space
    if isinstance(space, dict):
        return from_description(space)
    if isinstance(space, str):
        if space == "auto":
            raise DuplidogError("colour space 'auto' must be resolved first (resolve_colorspace)")
        if space in SPACES:
            return WorkingSpace(space)
        return ocio_space(space)
    raise DuplidogError(f"not a colour space: {space!r}")


def describe(space: SpaceLike) -> dict[str, Any]:
    """Name and parameters of ``space`` as plain JSON-able data, for the model card."""
    ws = as_space(space)
    extra = {"ocio": dict(ws.ocio)} if ws.ocio else {}
    if ws.is_identity:
        return {"name": ws.name, "shaper": "identity", **extra}
    return {
        "name": ws.name,
        "shaper": "asinh",
        "softness": ws.softness,
        "encode": "y = asinh(x / softness) / asinh(1 / softness)",
        "decode": "x = softness * sinh(y * asinh(1 / softness))",
        "coverage": "shaped" if ws.shape_coverage else "unshaped",
        **extra,
    }


def from_description(description: dict[str, Any]) -> WorkingSpace:
    """The ``WorkingSpace`` a ``describe()`` dict names; refuses shapers this version does not know."""
    try:
        name = description["name"]
    except (KeyError, TypeError):
        raise DuplidogError(f"colour space description without a name: {description!r}") from None
    shaper = description.get("shaper", "identity" if name != "linear" else "asinh")
    expected = "identity" if name != "linear" else "asinh"
    if shaper != expected:
        raise DuplidogError(f"colour space {name!r}: unknown shaper {shaper!r} (expected {expected!r})")
    # A card without "coverage" predates unshaped mattes: its network learnt them shaped.
    ocio = description.get("ocio")
    if ocio is not None and not (isinstance(ocio, dict) and ocio.get("colorspace")):
        raise DuplidogError(f"colour space {name!r}: its OpenColorIO entry names no colour space: {ocio!r}")
    return WorkingSpace(name, float(description.get("softness", DEFAULT_SOFTNESS)),
                        name == "linear" and description.get("coverage", "shaped") == "shaped",
                        tuple(sorted((str(k), str(v)) for k, v in ocio.items())) if ocio else None)


def ocio_space(name: str) -> WorkingSpace:
    """The working space for OpenColorIO space ``name`` of the active config: its kind by encoding (see
    ``duplidog.ocio``) with the default shaper, and the OCIO name it came from."""
    from duplidog import ocio

    info = ocio.describe(name)
    return WorkingSpace(ocio.kind(name), ocio=tuple(sorted(info.items())))


def ocio_name(space: SpaceLike | None) -> str | None:
    """The OpenColorIO name a space (name, description or ``WorkingSpace``) carries, or None."""
    if space is None or space == "auto":
        return None
    return as_space(space).ocio_name


def label(space: SpaceLike) -> str:
    """A short name for logs: 'linear', or 'ACEScg (linear)' for an OCIO space."""
    ws = as_space(space)
    return f"{ws.ocio_name} ({ws.name})" if ws.ocio_name else ws.name


def is_coverage(name: str) -> bool:
    """Whether channel ``name`` holds coverage (alpha, a matte) rather than light."""
    return str(name).rsplit(".", 1)[-1].lower() in COVERAGE_NAMES


def shaped_channels(ws: WorkingSpace, channels: Sequence[str] | None) -> list[bool] | None:
    """Which of ``channels`` the shaper applies to; None: all of them."""
    if channels is None or ws.shape_coverage:
        return None
    shaped = [not is_coverage(name) for name in channels]
    return None if all(shaped) else shaped


def _keep_unshaped(result: np.ndarray, original: Any, shaped: list[bool] | None) -> np.ndarray:
    """``result`` (..., C) with the channels ``shaped`` says are not shaped put back as they were."""
    if shaped is None:
        return result
    result = np.array(result, copy=True)
    for index, flag in enumerate(shaped):
        if not flag:
            result[..., index] = np.asarray(original)[..., index]
    return result


def _is_tensor(x: Any) -> bool:
    """Whether ``x`` is a torch tensor, without importing torch where nothing has (the pool and
    assemble jobs read and write frames with numpy alone, and torch costs seconds to import)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _numpy_float(x: Any) -> tuple[np.ndarray, np.dtype]:
    array = np.asarray(x)
    out_dtype = array.dtype if array.dtype in (np.float32, np.float64) else np.dtype(np.float32)
    return array.astype(np.float64), out_dtype


def encode(x: Any, space: SpaceLike, channels: Sequence[str] | None = None) -> Any:
    """Scene values -> working space. numpy arrays (H, W, C; float32 result unless float64 given) or
    tensors (N, C, H, W). With the ``channels``' names, coverage channels (``is_coverage``) pass unchanged."""
    return _shape(x, space, channels, inverse=False)


def decode(y: Any, space: SpaceLike, channels: Sequence[str] | None = None) -> Any:
    """Working space -> scene values; the exact inverse of ``encode`` (same ``channels``)."""
    return _shape(y, space, channels, inverse=True)


def _shape(x: Any, space: SpaceLike, channels: Sequence[str] | None, inverse: bool) -> Any:
    """The shaper (``inverse``: its inverse) on the shaped channels; tensors go to ``colour_module``."""
    ws = as_space(space)
    if _is_tensor(x):
        from duplidog import colour_module

        return (colour_module.decode_tensors if inverse else colour_module.encode_tensors)(x, ws, channels)
    if ws.is_identity:
        return np.asarray(x)
    array, out_dtype = _numpy_float(x)
    with np.errstate(over="ignore"):  # a decoded value beyond the dtype's range is inf, as it should be
        if inverse:
            shaped = (ws.softness * np.sinh(array * ws.norm)).astype(out_dtype)
        else:
            shaped = (np.arcsinh(array / ws.softness) / ws.norm).astype(out_dtype)
    return _keep_unshaped(shaped, array.astype(out_dtype), shaped_channels(ws, channels))


def check_setting(setting: str, origin: str = "colorspace setting") -> None:
    """Raise DuplidogError (one line, with close names) unless ``setting`` is auto, a kind, or a name,
    alias or role of the active OpenColorIO config."""
    from duplidog import ocio

    if setting in SETTINGS or ocio.canonical(setting) is not None:
        return
    near = ocio.close_names(setting)
    hint = f"; close names: {', '.join(near)}" if near else ""
    raise DuplidogError(f"{origin} {setting!r} is not one of {', '.join(SETTINGS)} nor a colour space of the "
                        f"OpenColorIO config {ocio.config_path()}{hint}")


def file_space(info: Any) -> str | None:
    """The canonical OCIO name of the space a file's ``oiio:ColorSpace`` tag names, or None (untagged,
    or a tag the active config does not know)."""
    from duplidog import ocio

    tag = str(info.attributes.get("oiio:ColorSpace", "") or "").strip()
    return ocio.canonical(tag) if tag else None


def resolve_colorspace(setting: str, info: Any) -> Union[str, dict]:
    """The working space for a source described by ``info`` (an ``imageio.ImageInfo``): a kind name, or
    a ``describe()`` dict when the space is an OpenColorIO one (so later stages need no OCIO config).

    An explicit kind wins. An OCIO name, alias or role -> its space (kind by encoding). ``auto``: the
    file's ``oiio:ColorSpace`` tag when the active config knows it; else float files (half/float EXR,
    float TIFF, ...) hold scene values -> 'linear'; DPX/Cineon whose transfer says printing density or
    logarithmic -> 'log'; every other integer file is display referred -> 'display'.
    """
    check_setting(setting)
    if setting in SPACES:
        return setting
    if setting != "auto":
        return describe(ocio_space(setting))
    tagged = file_space(info)
    if tagged is not None:
        return describe(ocio_space(tagged))
    if info.pixel_type in ("half", "float", "double"):
        return "linear"
    transfer = str(info.attributes.get("dpx:Transfer", "")).lower()
    if info.format_name in ("dpx", "cineon") and transfer in _LOG_TRANSFERS:
        return "log"
    if info.format_name == "cineon":
        return "log"
    return "display"


def conversion_hint() -> str:
    return "set ingest.convert_colorspace: true (duplidog infer: --convert-colorspace) to convert it"


def to_working(pixels: np.ndarray, channels: Sequence[str] | None, file_space: str | None, space: SpaceLike | None,
               convert: bool, path: Any) -> np.ndarray:
    """Pixels read from a file in OCIO space ``file_space`` in the OCIO space of working ``space``.

    Nothing happens when either names no OCIO space (untagged files, plain kinds, old model cards) or
    both name the same one. Otherwise: converted with an OpenColorIO processor when ``convert``, else
    a one-line DuplidogError naming ``path``, its space and the expected one (never guessed)."""
    from duplidog import ocio

    wanted = ocio_name(space)
    if not wanted or not file_space:
        return pixels
    wanted = ocio.canonical(wanted) or wanted
    found = ocio.canonical(file_space) or file_space
    if found == wanted:
        return pixels
    if not convert:
        raise DuplidogError(f"{path}: in colour space {found!r}, but the expected space is {wanted!r} "
                            f"({conversion_hint()})")
    return ocio.convert(pixels, channels, found, wanted)


def from_working(pixels: np.ndarray, channels: Sequence[str] | None, file_space: str | None,
                 space: SpaceLike | None) -> np.ndarray:
    """The inverse of ``to_working`` (after it accepted): working OCIO space -> ``file_space``, for writing."""
    from duplidog import ocio

    wanted = ocio_name(space)
    if not wanted or not file_space:
        return pixels
    wanted = ocio.canonical(wanted) or wanted
    found = ocio.canonical(file_space) or file_space
    return pixels if found == wanted else ocio.convert(pixels, channels, wanted, found)
