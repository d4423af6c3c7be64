"""Image files in and out, faithfully: every frame duplidog reads or writes goes through here.

Why a module of its own: a plate that comes back a little different from how it went in (an 8-bit
detour, a clamp on scene-linear highlights, a lost data window, dropped metadata, a 10-bit DPX that
returns as 16-bit) is a silent fault that shows up weeks later in the grade. So the rules live in one
place:

* Pixels are handed to the rest of the package as float32 arrays shaped (H, W, C) covering the data
  window. OpenImageIO converts integer files to 0..1 (value / max code value); float files come as
  they are, negatives and values in the thousands included.
* The file's own description (an ``oiio.ImageSpec``) travels with the pixels as ``ImageInfo.spec``, and
  an output is written from a *copy* of it: pixel type, bit depth (``oiio:BitsPerSample`` for 10- and
  12-bit DPX), compression, data and display windows and all metadata carry over unchanged.
* Float formats are never clamped. Integer formats are quantised once, by OpenImageIO, rounding to the
  nearest code value of the file's own depth (so a 16-bit or 10-bit frame is never squeezed through 8
  bits); reading and writing back an unchanged frame is bit-exact.
* OpenImageIO reports most failures by returning ``None``/``False``: every call is checked and turned
  into one-line ``DuplidogError`` naming the file.
* Writes go through ``duplidog.atomic.atomic_path``, so a killed job never leaves a half-written frame
  under its final name.

Only the first subimage (part) of a multi-part file is read; deep images are refused.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import OpenImageIO as oiio

from duplidog.atomic import atomic_path
from duplidog.errors import DuplidogError

log = logging.getLogger(__name__)

#: Channel names treated as alpha (for ImageSpec.alpha_channel) and depth (ImageSpec.z_channel).
ALPHA_NAMES = ("A", "a", "alpha", "Alpha")
DEPTH_NAMES = ("Z", "z", "depth", "Depth")

#: Formats that store arbitrary named metadata. Elsewhere (TIFF, DPX, JPEG) OpenImageIO keeps only the
#: names it knows, so duplidog's own attributes are also written as a JSON line in a free-text field
#: (see ``_fold_provenance`` and ``provenance``).
ARBITRARY_METADATA_FORMATS = frozenset({"openexr", "png"})
PROVENANCE_PREFIX = "duplidog:"

#: Formats that can store float pixels; for others a float source is written at 16 bits (or the
#: format's most, e.g. 8 for JPEG), never dropped to 8 bits by default.
FLOAT_CAPABLE_FORMATS = frozenset({"openexr", "tiff", "dpx", "hdr", "fits", "pnm", "psd"})

#: Pixel types that are stored as floating point (never clamped, scene-linear capable).
FLOAT_PIXEL_TYPES = frozenset({"half", "float", "double"})


@dataclass(frozen=True)
class ImageInfo:
    """What a file's header says, read without touching its pixels.

    ``width``/``height``/``x``/``y`` describe the data window (the pixels stored, which for an EXR with
    overscan may be larger than, or offset from, the picture); ``full_*`` describe the display window.
    ``spec`` is the OpenImageIO description itself, kept so a written frame can copy it whole; it is
    left out of equality and hashing (``ImageSpec`` compares by identity).
    """

    path: str
    width: int
    height: int
    x: int
    y: int
    full_width: int
    full_height: int
    full_x: int
    full_y: int
    nchannels: int
    channel_names: tuple[str, ...]
    pixel_type: str
    bits_per_sample: int
    format_name: str
    compression: str | None
    attributes: dict[str, Any] = field(default_factory=dict, hash=False)
    spec: Any = field(default=None, compare=False, hash=False, repr=False)

    @property
    def is_float(self) -> bool:
        """True for half/float/double files: values are scene values, never clamped."""
        return self.pixel_type in FLOAT_PIXEL_TYPES

    @property
    def shape(self) -> tuple[int, int, int]:
        """The (H, W, C) shape ``read_pixels`` returns for this file."""
        return (self.height, self.width, self.nchannels)

    @property
    def alpha_channel(self) -> int:
        """Index of the alpha channel, or -1."""
        return _index_of_any(self.channel_names, ALPHA_NAMES)


def _index_of_any(names: Sequence[str], candidates: Sequence[str]) -> int:
    for i, name in enumerate(names):
        if name in candidates:
            return i
    return -1


def _one_line(*messages: str) -> str:
    """OpenImageIO errors come as several lines, often repeated: join the distinct ones with '; '."""
    seen: list[str] = []
    for message in messages:
        for line in (message or "").splitlines():
            line = line.strip()
            if line and line not in seen:
                seen.append(line)
    return "; ".join(seen) or "no further detail from OpenImageIO"


def _python_value(value: Any) -> Any:
    """Metadata values as plain Python (tuples/arrays to lists) so they can go into JSON and compare."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple):
        return [_python_value(v) for v in value]
    return value


def info_from_spec(path: str | os.PathLike, spec: "oiio.ImageSpec", format_name: str) -> ImageInfo:
    """Build an ``ImageInfo`` from an OpenImageIO spec (the header of ``path``)."""
    pixel_type = str(spec.format)
    bits = spec.get_int_attribute("oiio:BitsPerSample", 0) or spec.format.size() * 8
    compression = spec.get_string_attribute("compression", "") or None
    attributes = {p.name: _python_value(p.value) for p in spec.extra_attribs}
    return ImageInfo(
        path=str(path),
        width=spec.width,
        height=spec.height,
        x=spec.x,
        y=spec.y,
        full_width=spec.full_width,
        full_height=spec.full_height,
        full_x=spec.full_x,
        full_y=spec.full_y,
        nchannels=spec.nchannels,
        channel_names=tuple(spec.channelnames),
        pixel_type=pixel_type,
        bits_per_sample=int(bits),
        format_name=format_name,
        compression=compression,
        attributes=attributes,
        spec=spec.copy(),
    )


def new_like(path: str | os.PathLike, width: int, height: int, pixel_type: str = "half",
             format_name: str = "openexr", channel_names: Sequence[str] = ("R", "G", "B"),
             attributes: dict[str, Any] | None = None) -> ImageInfo:
    """The ``like`` for frames duplidog makes up (the demo, the benches' shots): no file to copy, so a
    fresh spec of ``pixel_type`` with ``channel_names``, and zip compression where the format has it."""
    spec = oiio.ImageSpec(int(width), int(height), len(channel_names), pixel_type)
    spec.channelnames = tuple(channel_names)
    if format_name in ("openexr", "tiff"):
        spec.attribute("compression", "zip")
    for key, value in (attributes or {}).items():
        spec.attribute(key, value)
    return info_from_spec(path, spec, format_name)


def _open(path: str | os.PathLike) -> "oiio.ImageInput":
    """Open ``path`` for reading or raise a one-line error naming it."""
    path = Path(path)
    if not path.exists():
        raise DuplidogError(f"{path}: no such file")
    if path.is_dir():
        raise DuplidogError(f"{path}: is a directory, not an image")
    image_input = oiio.ImageInput.open(str(path))
    if image_input is None:
        # A header OpenImageIO cannot parse: cut short, damaged, or not an image at all; its message
        # (in brackets) says which.
        raise DuplidogError(f"{path}: truncated or corrupt ({_one_line(oiio.geterror())})")
    if image_input.spec().deep:
        image_input.close()
        raise DuplidogError(f"{path}: deep images are not supported")
    return image_input


def read_info(path: str | os.PathLike) -> ImageInfo:
    """Read the header of ``path`` (size, windows, channels, pixel type, metadata) without its pixels."""
    image_input = _open(path)
    try:
        return info_from_spec(path, image_input.spec(), image_input.format_name())
    finally:
        image_input.close()


def channel_indices(info: ImageInfo, channels: Sequence[str]) -> list[int]:
    """Positions of the named channels in ``info``; a DuplidogError lists what the file does have."""
    missing = [c for c in channels if c not in info.channel_names]
    if missing:
        raise DuplidogError(
            f"{info.path}: no channel {', '.join(missing)} "
            f"(the file has {', '.join(info.channel_names)})"
        )
    return [info.channel_names.index(c) for c in channels]


def read_pixels(path: str | os.PathLike, channels: Sequence[str] | None = None) -> np.ndarray:
    """The data window of ``path`` as float32 (H, W, C), optionally only ``channels`` in that order.

    Integer files come as value / max code (0..1); float files as stored (no clamp). A missing,
    unreadable, truncated or corrupt file raises a DuplidogError naming it, as does a missing channel.
    Only the span of channels asked for is decoded (OpenImageIO reads a contiguous channel range).
    """
    image_input = _open(path)
    try:
        info = info_from_spec(path, image_input.spec(), image_input.format_name())
        wanted = list(range(info.nchannels)) if channels is None else channel_indices(info, channels)
        if not wanted:
            raise DuplidogError(f"{path}: no channels asked for")
        first, last = min(wanted), max(wanted) + 1
        pixels = image_input.read_image(0, 0, first, last, "float")
        if pixels is None or image_input.has_error:
            raise DuplidogError(
                f"{path}: truncated or corrupt ({_one_line(image_input.geterror(), oiio.geterror())})"
            )
    finally:
        image_input.close()
    pixels = np.asarray(pixels, dtype=np.float32).reshape(info.height, info.width, last - first)
    if wanted != list(range(first, last)):
        pixels = pixels[:, :, [i - first for i in wanted]]
    return np.ascontiguousarray(pixels)


def _attribute_value(value: Any) -> Any:
    """Values OpenImageIO can store as metadata: str, int, float; anything else becomes JSON text."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (str, int, float)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    return json.dumps(value, sort_keys=True, default=str)


def output_spec(
    pixels_shape: tuple[int, ...],
    like: ImageInfo,
    channel_names: Sequence[str] | None = None,
    attributes: dict[str, Any] | None = None,
    path: str | os.PathLike | None = None,
) -> "oiio.ImageSpec":
    """The spec a frame shaped ``pixels_shape`` is written with: a copy of ``like.spec``, adjusted.

    Channels: ``channel_names`` when given (their count must match the pixels), else ``like``'s.
    Per-channel pixel types follow the channel name where ``like`` had one, else the main type; the
    alpha and depth channel indices are set from the names. Size: the same as ``like``'s data window,
    or an exact integer multiple of it (a model with scale s), in which case data and display windows
    are scaled by s together.
    """
    name = path if path is not None else like.path
    if like.spec is None:
        raise DuplidogError(f"{name}: the ImageInfo given as 'like' has no spec (read it with read_info)")
    if len(pixels_shape) != 3:
        raise DuplidogError(f"{name}: pixels must be shaped (H, W, C), got {tuple(pixels_shape)}")
    height, width, nchannels = (int(n) for n in pixels_shape)
    names = tuple(channel_names) if channel_names is not None else like.channel_names
    if len(names) != nchannels:
        raise DuplidogError(
            f"{name}: {nchannels} channels of pixels but {len(names)} channel names ({', '.join(names)})"
        )
    if len(set(names)) != len(names):
        raise DuplidogError(f"{name}: repeated channel names {', '.join(names)}")

    scale = 1
    if (height, width) != (like.height, like.width):
        scale = height // like.height if like.height else 0
        if scale < 1 or (height, width) != (like.height * scale, like.width * scale):
            raise DuplidogError(
                f"{name}: pixels are {width}x{height}, neither the {like.width}x{like.height} of "
                f"{like.path} nor a whole multiple of it"
            )

    spec = like.spec.copy()
    spec.width, spec.height = width, height
    spec.x, spec.y = like.x * scale, like.y * scale
    spec.full_width, spec.full_height = like.full_width * scale, like.full_height * scale
    spec.full_x, spec.full_y = like.full_x * scale, like.full_y * scale

    old_formats = dict(zip(like.channel_names, like.spec.channelformats or ()))
    spec.nchannels = nchannels
    spec.channelnames = names
    if old_formats and names != like.channel_names:
        spec.channelformats = tuple(old_formats.get(n, like.spec.format) for n in names)
    spec.alpha_channel = _index_of_any(names, ALPHA_NAMES)
    spec.z_channel = _index_of_any(names, DEPTH_NAMES)

    for key, value in (attributes or {}).items():
        spec.attribute(str(key), _attribute_value(value))
    return spec


def write_pixels(
    path: str | os.PathLike,
    pixels: np.ndarray,
    like: ImageInfo,
    channel_names: Sequence[str] | None = None,
    attributes: dict[str, Any] | None = None,
) -> None:
    """Write float (H, W, C) ``pixels`` to ``path`` in the format and spec of ``like``, atomically.

    The file format comes from ``path``'s extension; everything else (pixel type, bit depth,
    compression, windows, metadata) from ``like`` (see ``output_spec``). ``attributes`` are added to
    the metadata (provenance such as ``duplidog:model_id``). Float formats keep every value; integer
    formats are clipped to 0..1 and rounded to the nearest code value by OpenImageIO, at the file's
    own bit depth. On any failure nothing appears under ``path``.
    """
    pixels = np.asarray(pixels)
    if pixels.ndim == 2:
        pixels = pixels[:, :, np.newaxis]
    spec = output_spec(pixels.shape, like, channel_names, attributes, path)
    pixels = np.ascontiguousarray(pixels, dtype=np.float32)

    def adapted(format_name: str) -> tuple["oiio.ImageSpec", np.ndarray]:
        if format_name != like.format_name:
            _adapt_to_format(spec, like, format_name)
        if format_name not in ARBITRARY_METADATA_FORMATS:
            _fold_provenance(spec, format_name, Path(path))
        return spec, _round_to_packed_depth(pixels, spec)

    _write_file(path, adapted)


def write_picture(path: str | os.PathLike, pixels: np.ndarray) -> None:
    """Write an 8-bit RGB picture for people to look at (a contact sheet), atomically: (H, W, 3) uint8
    written as they are, with no spec to copy -- it is not a frame of the shot."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    spec = oiio.ImageSpec(pixels.shape[1], pixels.shape[0], pixels.shape[2], "uint8")
    _write_file(path, lambda format_name: (spec, pixels))


def _write_file(path: str | os.PathLike, prepare) -> None:
    """Write one image atomically; ``prepare(format_name) -> (spec, pixels)`` once the writer for
    ``path``'s extension is known. On any failure nothing appears under ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        image_output = oiio.ImageOutput.create(str(tmp))
        if image_output is None:
            raise DuplidogError(f"{path}: no image writer for this extension ({_one_line(oiio.geterror())})")
        spec, pixels = prepare(image_output.format_name())
        try:
            if not image_output.open(str(tmp), spec):
                raise DuplidogError(f"{path}: cannot open for writing ({_one_line(image_output.geterror())})")
            if not image_output.write_image(pixels):
                raise DuplidogError(f"{path}: write failed ({_one_line(image_output.geterror())})")
        finally:
            closed = image_output.close()
        if not closed:
            raise DuplidogError(f"{path}: write failed on close ({_one_line(image_output.geterror())})")


def _round_to_packed_depth(pixels: np.ndarray, spec: "oiio.ImageSpec") -> np.ndarray:
    """Quantise to the nearest code myself when the file packs fewer bits than its container type.

    OpenImageIO converts float to uint16 rounding to nearest, but then packs 10- and 12-bit DPX by
    dropping the low bits (truncation: up to one code low, half a code on average). Handing it values
    that are exact codes (k / (2**bits - 1)) makes the packing lossless, so rounding is to nearest.
    """
    bits = spec.get_int_attribute("oiio:BitsPerSample", 0)
    container = spec.format.size() * 8
    if spec.format.basetype not in (oiio.UINT8, oiio.UINT16) or not 0 < bits < container:
        return pixels
    top = float(2**bits - 1)
    return (np.rint(np.clip(pixels, 0.0, 1.0) * top) / top).astype(np.float32)


def _adapt_to_format(spec: "oiio.ImageSpec", like: ImageInfo, format_name: str) -> None:
    """Adjust a spec copied from a file of another format (a DPX plate written out as EXR, say).

    The source format's own settings do not apply (an EXR's 'dwaa' compression, a DPX's 10-bit
    packing, ``dpx:*`` header fields): they are dropped and the new format's defaults used. Float
    pixels going to a format without float (PNG) are written as uint16, not left to fall to 8 bits.
    """
    prefixes = ("dpx:", "tiff:", "openexr:", "png:", "jpeg:", "cineon:", f"{like.format_name}:")
    for name in [p.name for p in spec.extra_attribs]:
        if name in ("compression", "oiio:BitsPerSample", "Compression") or name.startswith(prefixes):
            spec.erase_attribute(name)
    if like.is_float and format_name not in FLOAT_CAPABLE_FORMATS:
        spec.set_format(oiio.TypeDesc("uint16"))


def _fold_provenance(spec: "oiio.ImageSpec", format_name: str, path: Path) -> None:
    """Keep ``duplidog:*`` attributes for formats that store no arbitrary metadata.

    DPX: one JSON line in the user-data block (``dpx:UserData``, any length), unless the plate's own
    user data is there, which is never overwritten. TIFF, JPEG and others: one JSON line appended to
    ImageDescription, replacing the line an earlier duplidog pass left; other text is kept.
    """
    ours = {
        p.name[len(PROVENANCE_PREFIX):]: _python_value(p.value)
        for p in spec.extra_attribs
        if p.name.startswith(PROVENANCE_PREFIX)
    }
    if not ours:
        return
    line = PROVENANCE_PREFIX + " " + json.dumps(ours, sort_keys=True)
    if format_name == "dpx":
        existing = _user_data_text(_python_value(spec.getattribute("dpx:UserData")))
        if existing is not None and not existing.startswith(PROVENANCE_PREFIX):
            log.warning("%s: the DPX user data holds the plate's own data; duplidog provenance not stored", path)
            return
        data = np.frombuffer(line.encode("utf-8"), dtype=np.uint8)
        spec.attribute("dpx:UserData", oiio.TypeDesc(f"uint8[{data.size}]"), data)
        return
    description = spec.get_string_attribute("ImageDescription", "")
    lines = [ln for ln in description.splitlines() if not ln.startswith(PROVENANCE_PREFIX)]
    spec.attribute("ImageDescription", "\n".join(lines + [line]))


def _user_data_text(value: Any) -> str | None:
    """DPX user data (a list of byte values) as text, or None when absent or not text."""
    if not value:
        return None
    try:
        return bytes(bytearray(int(v) for v in value)).decode("utf-8")
    except (TypeError, ValueError):
        return None


def provenance(info: ImageInfo) -> dict[str, Any]:
    """The ``duplidog:*`` attributes of a frame written by duplidog, keys without the prefix.

    Read from the metadata where the format keeps it (EXR, PNG), else from the JSON line that
    ``write_pixels`` put in the DPX user data or the ImageDescription (TIFF, JPEG).
    """
    lines = str(info.attributes.get("ImageDescription", "")).splitlines()
    lines += (_user_data_text(info.attributes.get("dpx:UserData")) or "").splitlines()
    found: dict[str, Any] = {}
    for line in lines:
        if line.startswith(PROVENANCE_PREFIX):
            try:
                found.update(json.loads(line[len(PROVENANCE_PREFIX):]))
            except json.JSONDecodeError:
                pass
    for name, value in info.attributes.items():
        if name.startswith(PROVENANCE_PREFIX):
            found[name[len(PROVENANCE_PREFIX):]] = value
    return found


def check_finite(pixels: np.ndarray, path: str | os.PathLike, policy: str = "error") -> np.ndarray:
    """Refuse (``policy='error'``) or zero (``policy='replace'``, with a warning) NaN and inf values.

    A NaN in a plate poisons a whole training batch and spreads through every convolution, so it is
    found up front, with the frame's path and the count. Returns the pixels (a fixed copy if replaced).
    """
    if policy not in ("error", "replace"):
        raise DuplidogError(f"{path}: unknown non-finite policy {policy!r} (use 'error' or 'replace')")
    bad = ~np.isfinite(pixels)
    count = int(np.count_nonzero(bad))
    if count == 0:
        return pixels
    nans = int(np.count_nonzero(np.isnan(pixels)))
    what = f"{count} non-finite values ({nans} NaN, {count - nans} inf)"
    if policy == "error":
        raise DuplidogError(f"{path}: {what}")
    log.warning("%s: %s replaced by 0", path, what)
    fixed = np.array(pixels, copy=True)
    fixed[bad] = 0
    return fixed
