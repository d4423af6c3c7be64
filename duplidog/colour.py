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
        return WorkingSpace(space)
    raise DuplidogError(f"not a colour space: {space!r}")


def describe(space: SpaceLike) -> dict[str, Any]:
    """Name and parameters of ``space`` as plain JSON-able data, for the model card."""
    ws = as_space(space)
    if ws.is_identity:
        return {"name": ws.name, "shaper": "identity"}
    return {
        "name": ws.name,
        "shaper": "asinh",
        "softness": ws.softness,
        "encode": "y = asinh(x / softness) / asinh(1 / softness)",
        "decode": "x = softness * sinh(y * asinh(1 / softness))",
        "coverage": "shaped" if ws.shape_coverage else "unshaped",
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
    return WorkingSpace(name, float(description.get("softness", DEFAULT_SOFTNESS)),
                        name == "linear" and description.get("coverage", "shaped") == "shaped")


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
    ws = as_space(space)
    if _is_tensor(x):
        from duplidog.colour_module import encode_tensors

        return encode_tensors(x, ws, channels)
    if ws.is_identity:
        return np.asarray(x)
    array, out_dtype = _numpy_float(x)
    shaped = (np.arcsinh(array / ws.softness) / ws.norm).astype(out_dtype)
    return _keep_unshaped(shaped, array.astype(out_dtype), shaped_channels(ws, channels))


def decode(y: Any, space: SpaceLike, channels: Sequence[str] | None = None) -> Any:
    """Working space -> scene values; the exact inverse of ``encode`` (same ``channels``)."""
    ws = as_space(space)
    if _is_tensor(y):
        from duplidog.colour_module import decode_tensors

        return decode_tensors(y, ws, channels)
    if ws.is_identity:
        return np.asarray(y)
    array, out_dtype = _numpy_float(y)
    with np.errstate(over="ignore"):
        scene = (ws.softness * np.sinh(array * ws.norm)).astype(out_dtype)
    return _keep_unshaped(scene, array.astype(out_dtype), shaped_channels(ws, channels))


def resolve_colorspace(setting: str, info: Any) -> str:
    """The working space for a source described by ``info`` (an ``imageio.ImageInfo``).

    An explicit setting wins. ``auto``: float files (half/float EXR, float TIFF, ...) hold scene
    values -> 'linear'; DPX/Cineon whose transfer says printing density or logarithmic -> 'log';
    every other integer file is display referred -> 'display'.
    """
    if setting not in SETTINGS:
        raise DuplidogError(f"colorspace setting {setting!r} is not one of {', '.join(SETTINGS)}")
    if setting != "auto":
        return setting
    if info.pixel_type in ("half", "float", "double"):
        return "linear"
    transfer = str(info.attributes.get("dpx:Transfer", "")).lower()
    if info.format_name in ("dpx", "cineon") and transfer in _LOG_TRANSFERS:
        return "log"
    if info.format_name == "cineon":
        return "log"
    return "display"
