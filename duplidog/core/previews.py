"""Pictures and figures the stages share: the contact sheet, PSNR, a file's SHA-256.

Training draws a contact sheet of its validation keyframes and assemble draws one of the delivery;
both are rows of labelled pictures, so one writer lays them out. It places pictures with OpenImageIO,
pixel for pixel, rather than through matplotlib (which assemble's sheet used): a plotting library
resamples each picture into its axes, which undoes the whole-pixel zooms, and a figure is a heavy way
to draw the sheet training writes at every validation. The PSNR a training run reports and the one
assemble and the quality bench report are the same formula, written once here.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any, Optional, Sequence, Tuple

import numpy as np

from duplidog import colour, imageio
from duplidog.errors import DuplidogError

#: Differences are shown this many times brighter on the contact sheets, so small errors are visible.
DIFFERENCE_GAIN = 4.0
#: The contact sheet's ground (mid grey), text colour, gap between pictures, text size and line height.
GROUND, INK = (0.18, 0.18, 0.18), (0.9, 0.9, 0.9)
GAP, TEXT_SIZE, LINE = 4, 11, 14

#: One row of a contact sheet: a heading, then (label, picture) cells; a picture is (H, W, 3) float in
#: 0..1, or None for a cell left empty (so later pictures stay in their columns).
SheetRow = Tuple[str, Sequence[Tuple[str, Optional[np.ndarray]]]]


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes as hex, read a megabyte at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def psnr_of_mse(mse: float, peak: float = 1.0) -> float:
    """10 log10(peak² / MSE); inf where the two are equal."""
    return math.inf if mse == 0 else 10 * math.log10(peak * peak / mse)


def psnr(result: Any, truth: Any, peak: float = 1.0) -> float:
    """PSNR over every pixel and channel: of numpy arrays in float64, of torch tensors in float32 on
    their own device (training's validation, which must not copy frames back to the host to score them)."""
    if hasattr(result, "detach"):
        mse = float((result.float() - truth.float()).pow(2).mean().item())
    else:
        mse = float(np.mean((result.astype(np.float64) - truth.astype(np.float64)) ** 2))
    return psnr_of_mse(mse, peak)


def block_psnrs(result: np.ndarray, truth: np.ndarray, block: int, peak: float = 1.0) -> np.ndarray:
    """PSNR of each non-overlapping ``block`` x ``block`` block (row-major; the last row and column of
    blocks are narrower where the frame does not divide, so the frame's edge is scored too)."""
    sq = (result.astype(np.float64) - truth.astype(np.float64)) ** 2
    if sq.ndim == 3:
        sq = sq.mean(-1)
    h, w = sq.shape
    rows, cols = np.arange(0, h, block), np.arange(0, w, block)
    sums = np.add.reduceat(np.add.reduceat(sq, rows, axis=0), cols, axis=1)
    counts = np.outer(np.diff(np.append(rows, h)), np.diff(np.append(cols, w)))
    mse = sums / counts
    with np.errstate(divide="ignore"):
        return np.where(mse == 0, np.inf, 10 * np.log10(peak * peak / np.where(mse == 0, 1, mse)))


def view_transform(pixels: np.ndarray, space: Any, display: str | None = None, view: str | None = None) -> np.ndarray:
    """Scene or working values -> 0..1 RGB for a picture (display only: clipped here, nowhere else).

    ``space`` naming an OpenColorIO space, or scene-linear (``ocio.picture_space``): through OCIO
    ``display``/``view`` (None: the config's defaults); else the shaper (a config without linear
    Rec.709), log and display as they are."""
    from duplidog import ocio

    ws = colour.as_space(space)
    shown_from = ocio.picture_space(ws) if np.asarray(pixels).shape[2] >= 3 else None
    if shown_from:
        shown = ocio.display_view(pixels, shown_from, display, view)
    else:
        shown = colour.encode(pixels, ws) if ws.name == "linear" else np.asarray(pixels, np.float32)
    if shown.shape[2] == 1:
        shown = np.repeat(shown, 3, axis=2)
    elif shown.shape[2] == 2:
        shown = np.concatenate([shown, np.zeros_like(shown[:, :, :1])], axis=2)
    return np.clip(np.nan_to_num(shown), 0.0, 1.0)


def thumbnail(pixels: np.ndarray, width: int) -> np.ndarray:
    """Shrink (H, W, C) to ``width`` pixels wide by box filtering (no new values, no ringing)."""
    height_in, width_in = pixels.shape[:2]
    width = min(width, width_in)
    height = max(1, round(height_in * width / width_in))
    rows = np.linspace(0, height_in, height + 1).astype(int)
    cols = np.linspace(0, width_in, width + 1).astype(int)
    summed = np.add.reduceat(np.add.reduceat(pixels, rows[:-1], axis=0), cols[:-1], axis=1)
    counts = np.outer(np.diff(rows), np.diff(cols))[:, :, None]
    return summed / counts


def write_contact_sheet(path: str | Path, rows: Sequence[SheetRow]) -> np.ndarray:
    """Rows of labelled pictures as one 8-bit PNG; returns it as (H, W, 3) uint8 (for TensorBoard).

    Each row sits under a strip with its heading on one line and its cells' labels on the next, so
    narrow pictures do not run the names together. Pictures are placed pixel for pixel (a zoomed crop
    stays whole pixels), each column as wide as its widest picture.
    """
    import OpenImageIO as oiio

    columns = max(len(cells) for _, cells in rows)
    widths = [max((p.shape[1] for _, cells in rows if c < len(cells) for p in [cells[c][1]] if p is not None),
                  default=0) for c in range(columns)]
    strip = 2 * LINE
    pictures = []
    for heading, cells in rows:
        used = [w for w, _ in zip(widths, cells)]
        height = max(p.shape[0] for _, p in cells if p is not None) + strip
        row = oiio.ImageBuf(oiio.ImageSpec(sum(used) + GAP * (len(used) - 1), height, 3, oiio.FLOAT))
        oiio.ImageBufAlgo.fill(row, list(GROUND))
        oiio.ImageBufAlgo.render_text(row, 2, LINE - 3, heading, TEXT_SIZE, "", list(INK))
        x = 0
        for (label, picture), width in zip(cells, used):
            if picture is not None:
                picture = np.ascontiguousarray(picture, dtype=np.float32)
                if not row.set_pixels(oiio.ROI(x, x + picture.shape[1], strip, strip + picture.shape[0]), picture):
                    raise DuplidogError(f"{path}: cannot place a picture on the contact sheet ({row.geterror()})")
                oiio.ImageBufAlgo.render_text(row, x + 2, strip - 4, label, TEXT_SIZE, "", list(INK))
            x += width + GAP
        pictures.append(row.get_pixels(oiio.FLOAT)[:, :, :3])
    width = max(r.shape[1] for r in pictures)
    sheet = np.full((sum(r.shape[0] for r in pictures) + GAP * (len(pictures) - 1), width, 3), GROUND[0], np.float32)
    y = 0
    for row in pictures:
        sheet[y: y + row.shape[0], : row.shape[1]] = row
        y += row.shape[0] + GAP
    pixels = np.round(sheet * 255.0).astype(np.uint8)
    imageio.write_picture(path, pixels)
    return pixels
