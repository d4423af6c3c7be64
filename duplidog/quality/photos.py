"""Bench shots made from real photographs, with the truth known on every frame.

The procedural scene of ``duplidog.demo`` is smooth and easy; real plates have texture, fine detail and
grain, and that is where a learned fix wins or fails. Each shot here takes one of scikit-image's
bundled photographs (no network), films it with a slow camera move (pan, push-in and a slight roll,
resampled bicubically at about one photo pixel per frame pixel) and adds per-frame film grain. The
"before" is the plate; the "after" is what the artist's fix would make of every frame:

* ``paintout`` - tracking markers and a wire on the set and a burnt-in logo, painted out (EXR, linear)
* ``beauty``   - soft dark or red-ish spots on the subject, removed (EXR, linear)
* ``degrain``  - the film grain itself, removed (10-bit DPX, display-referred)
* ``look``     - a hue-dependent grade plus local contrast, which no per-pixel curve can do (16-bit TIFF)
* ``roto``     - the matte of a textured animal walking over a textured ground (EXR plate, matte ``A``)

The ``*_aside`` shots are the same five tasks on other photographs, textures and moves, kept aside so
settings tuned on the bench can be checked on shots they were not tuned on. Everything is drawn from
``seed`` and the shot's name, so a shot is the same file for file on every run.
"""

from __future__ import annotations

import json
import math
import shutil
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage

PHOTO_SHOTS = ("paintout", "beauty", "degrain", "look", "roto")
ASIDE_SHOTS = ("paintout_aside", "beauty_aside", "degrain_aside", "look_aside", "roto_aside")

FIRST_FRAME = 1001
#: Frame height the object sizes below are given for; they scale with the frame so a shot looks the
#: same at 96x64, 480x270 or 1920x1080 (and paint-out stays within its 3% of the pixels).
REFERENCE_HEIGHT = 270.0

#: Per task: file extension, encoding of the values, and the task duplidog is told it is.
FORMATS = {
    "paintout": ("exr", "linear", "cleanup"),
    "beauty": ("exr", "linear", "cleanup"),
    "degrain": ("dpx", "srgb", "cleanup"),
    "look": ("tif", "srgb", "grade"),
    "roto": ("exr", "linear", "roto"),
}


@dataclass(frozen=True)
class Recipe:
    """What one shot is filmed from.

    ``centre`` is where the view sits in the photo (fractions of its width and height); ``view`` how
    many photo pixels span the frame's width, chosen so a 480-wide frame samples the photo near 1:1
    (the framing is then the same at any frame size). Grey textures are coloured with ``tint`` (the
    display colours of black and white).
    """

    fix: str
    photo: str
    centre: tuple[float, float]
    view: float
    exposure: float = 1.0
    tint: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None
    texture: str | None = None
    texture_tint: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None
    grain: float = 0.025


RECIPES = {
    "paintout": Recipe("paintout", "retina", (0.36, 0.62), 700, exposure=1.3),
    "beauty": Recipe("beauty", "retina", (0.52, 0.5), 640, exposure=1.2),
    "degrain": Recipe("degrain", "hubble_deep_field", (0.5, 0.5), 560, grain=0.04),
    "look": Recipe("look", "ihc", (0.5, 0.45), 400),
    "roto": Recipe("roto", "gravel", (0.5, 0.5), 420, tint=((0.10, 0.09, 0.08), (0.78, 0.70, 0.58)),
                   texture="grass", texture_tint=((0.12, 0.10, 0.07), (0.70, 0.62, 0.46))),
    "paintout_aside": Recipe("paintout", "rocket", (0.5, 0.55), 520, exposure=1.5),
    "beauty_aside": Recipe("beauty", "astronaut", (0.36, 0.28), 300, exposure=1.2),
    "degrain_aside": Recipe("degrain", "chelsea", (0.5, 0.45), 380, grain=0.04),
    "look_aside": Recipe("look", "coffee", (0.5, 0.5), 480),
    "roto_aside": Recipe("roto", "brick", (0.5, 0.5), 420, tint=((0.12, 0.08, 0.07), (0.80, 0.62, 0.52)),
                         texture="gravel", texture_tint=((0.10, 0.08, 0.06), (0.74, 0.58, 0.48))),
}


# -- photographs and colour --------------------------------------------------------------------------
@lru_cache(maxsize=None)
def load_photo(name: str) -> np.ndarray:
    """A bundled scikit-image photograph as display-referred float32 RGB 0..1 (read-only, cached)."""
    from skimage import data

    if name == "motorcycle":
        image = data.stereo_motorcycle()[0]
    elif name == "ihc":
        image = data.immunohistochemistry()
    else:
        image = getattr(data, name)()
    image = image.astype(np.float32) / 255.0
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    image = np.ascontiguousarray(image[..., :3])
    image.setflags(write=False)
    return image


def srgb_to_linear(v: np.ndarray) -> np.ndarray:
    """The sRGB curve decoded, extended past 1 (power) and below 0 (its linear toe)."""
    v = np.asarray(v, np.float32)
    return np.where(v <= 0.04045, v / 12.92, ((np.maximum(v, 0.04045) + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    """The sRGB curve, extended as ``srgb_to_linear`` is, so a round trip keeps highlights above 1."""
    x = np.asarray(x, np.float32)
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * np.maximum(x, 0.0031308) ** (1 / 2.4) - 0.055).astype(np.float32)


def luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.asarray([0.2126, 0.7152, 0.0722], np.float32)


def _tinted(grey: np.ndarray, tint) -> np.ndarray:
    """A grey texture coloured by mapping black and white to two colours (a gradient map)."""
    low, high = (np.asarray(c, np.float32) for c in tint)
    return low + grey[..., :1] * (high - low)


def _unit_rng(seed: int, kind: str, *more: int) -> np.random.Generator:
    """A generator fixed by the seed, the shot's name (stable across runs, unlike hash()) and more."""
    return np.random.default_rng([int(seed), zlib.crc32(kind.encode()), *map(int, more)])


# -- the camera ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Move:
    """A camera move over the photo: pan (frame pixels), push-in (scale gain) and roll (radians) over
    the whole shot, eased in and out a little as an operator would."""

    pan: tuple[float, float]
    zoom: float
    roll: float

    @staticmethod
    def draw(rng: np.random.Generator, width: int) -> "Move":
        angle = rng.uniform(0, 2 * math.pi)
        reach = rng.uniform(0.04, 0.07) * width
        roll = math.radians(rng.uniform(1.0, 2.0)) * rng.choice([-1.0, 1.0])
        return Move((reach * math.cos(angle), reach * math.sin(angle) * 0.6), rng.uniform(0.05, 0.10), roll)

    def at(self, u: float) -> tuple[float, float, float, float]:
        """(pan x, pan y, scale, roll) at shot fraction ``u`` in 0..1."""
        e = 0.7 * u + 0.3 * (3 * u * u - 2 * u * u * u)
        return self.pan[0] * e, self.pan[1] * e, 1.0 + self.zoom * e, self.roll * e

    def canvas_size(self, width: int, height: int) -> tuple[int, int]:
        """(W, H) of the canvas that every frame's view stays inside (the first frame is the widest)."""
        c, s = math.cos(self.roll), abs(math.sin(self.roll))
        half_w = 0.5 * (width * c + height * s) + abs(self.pan[0]) + 6
        half_h = 0.5 * (width * s + height * c) + abs(self.pan[1]) + 6
        return int(math.ceil(2 * half_w)), int(math.ceil(2 * half_h))

    def coords(self, u: float, width: int, height: int, canvas: tuple[int, int]) -> np.ndarray:
        """Canvas sample positions (2, H, W) (row, column; pixel centres at integers) of a frame."""
        px, py, scale, roll = self.at(u)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        xx -= (width - 1) / 2.0
        yy -= (height - 1) / 2.0
        c, s = math.cos(roll) / scale, math.sin(roll) / scale
        col = (canvas[0] - 1) / 2.0 + px + c * xx - s * yy
        row = (canvas[1] - 1) / 2.0 + py + s * xx + c * yy
        return np.stack([row, col])


class Camera:
    """Renders frames of a canvas (and of layers attached to it) through the move."""

    def __init__(self, move: Move, frames: int, width: int, height: int):
        self.move, self.frames, self.width, self.height = move, frames, width, height
        self.canvas = move.canvas_size(width, height)

    def u(self, index: int) -> float:
        return index / max(1, self.frames - 1)

    def coords(self, index: int) -> np.ndarray:
        return self.move.coords(self.u(index), self.width, self.height, self.canvas)

    @staticmethod
    def prefilter(image: np.ndarray) -> np.ndarray:
        """Bicubic spline coefficients per channel, computed once per shot rather than per frame."""
        return np.stack([ndimage.spline_filter(image[..., c], order=3, mode="mirror")
                         for c in range(image.shape[-1])], -1)

    @staticmethod
    def sample(image: np.ndarray, coords: np.ndarray, order: int) -> np.ndarray:
        """``image`` (H, W, C) at ``coords``: order 3 expects ``prefilter``'s coefficients; order 1 is
        for coverage layers, where zero must stay exactly zero and no ringing may go below it."""
        return np.stack([ndimage.map_coordinates(image[..., c], coords, order=order, prefilter=False,
                                                 mode="mirror", output=np.float32)
                         for c in range(image.shape[-1])], -1)


class Backdrop:
    """The photo as the camera films it: the crop the move covers, sampled at canvas positions.

    One canvas pixel is one frame pixel at the first frame; ``view`` sets how many photo pixels that
    is, so the framing is the same at any frame size. The photo is resampled once per frame, straight
    from the crop (bicubic, after an anti-aliasing blur when it is shrunk), never resized to the
    canvas first: that keeps a 1920x1080 shot fast and enlarges the photo only as far as the frame
    needs. ``to_values`` turns display colours into the shot's values (scene-linear, say).
    """

    def __init__(self, recipe: Recipe, width: int, canvas: tuple[int, int], to_values):
        photo = load_photo(recipe.photo)
        ph, pw = photo.shape[:2]
        factor = max(width / recipe.view, canvas[0] / pw, canvas[1] / ph)  # frame pixels per photo pixel
        cw, ch = min(pw, round(canvas[0] / factor)), min(ph, round(canvas[1] / factor))
        x0 = int(np.clip(round(recipe.centre[0] * pw - cw / 2), 0, pw - cw))
        y0 = int(np.clip(round(recipe.centre[1] * ph - ch / 2), 0, ph - ch))
        crop = photo[y0:y0 + ch, x0:x0 + cw]
        crop = to_values(_tinted(crop, recipe.tint) if recipe.tint else crop)
        self.step = (ch / canvas[1], cw / canvas[0])  # photo pixels per canvas pixel (rows, columns)
        blur = [max(0.0, (step - 1) / 2) for step in self.step]
        if max(blur) > 0:
            crop = ndimage.gaussian_filter(crop, (*blur, 0))
        self.coefficients = Camera.prefilter(np.ascontiguousarray(crop, dtype=np.float32))

    def sample(self, coords: np.ndarray) -> np.ndarray:
        """The photo at canvas positions ``coords`` (2, H, W) as (H, W, 3)."""
        where = np.stack([(coords[0] + 0.5) * self.step[0] - 0.5, (coords[1] + 0.5) * self.step[1] - 0.5])
        return Camera.sample(self.coefficients, where, order=3)


# -- film grain ------------------------------------------------------------------------------------
def grain_field(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Unit film grain (H, W, 3): mostly shared by the channels, a little colour, clumped by a
    0.7-pixel blur as silver grains are, normalised to a standard deviation near 1."""
    white = rng.standard_normal((height, width, 4), dtype=np.float32)
    blurred = ndimage.gaussian_filter(white, (0.7, 0.7, 0))
    blurred /= blurred.reshape(-1, 4).std(0) + 1e-6
    return 0.88 * blurred[..., :1] + 0.45 * blurred[..., 1:]


def add_grain(display: np.ndarray, field: np.ndarray, strength: float) -> np.ndarray:
    """Grain on display-referred values, strongest in the mid-tones as on a film scan."""
    y = np.clip(luminance(display), 0.0, 1.0)[..., None]
    return display + field * (strength * (0.35 + 2.6 * y * (1.0 - y)))


def add_grain_linear(linear: np.ndarray, field: np.ndarray, strength: float) -> np.ndarray:
    """Grain on scene-linear values, added where it lives on film: in the display-like encoding."""
    return srgb_to_linear(add_grain(linear_to_srgb(linear), field, strength))


# -- drawing (anti-aliased coverage) ---------------------------------------------------------------
def _window(shape, box):
    """Integer row/column slices of ``box`` (x0, y0, x1, y1) clipped to ``shape``, and the pixel grid."""
    x0, y0 = max(0, int(math.floor(box[0]))), max(0, int(math.floor(box[1])))
    x1, y1 = min(shape[1], int(math.ceil(box[2])) + 1), min(shape[0], int(math.ceil(box[3])) + 1)
    if x1 <= x0 or y1 <= y0:
        return None
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    return (slice(y0, y1), slice(x0, x1)), xx, yy


def draw_segments(coverage: np.ndarray, points: np.ndarray, width: float) -> None:
    """Union into ``coverage`` a stroke of ``width`` pixels along the polyline ``points`` (N, 2 x/y),
    round-capped, with a one-pixel anti-aliased edge (a stroke thinner than a pixel is fainter)."""
    half = width / 2.0
    for (ax, ay), (bx, by) in zip(points[:-1], points[1:]):
        pad = half + 2
        got = _window(coverage.shape, (min(ax, bx) - pad, min(ay, by) - pad, max(ax, bx) + pad, max(ay, by) + pad))
        if got is None:
            continue
        where, xx, yy = got
        dx, dy = bx - ax, by - ay
        t = np.clip(((xx - ax) * dx + (yy - ay) * dy) / max(dx * dx + dy * dy, 1e-9), 0, 1)
        distance = np.hypot(xx - ax - t * dx, yy - ay - t * dy)
        ink = np.clip(max(half, 0.5) + 0.5 - distance, 0, 1) * min(1.0, width)
        coverage[where] = np.maximum(coverage[where], ink)


def draw_disc(coverage: np.ndarray, cx: float, cy: float, radius: float) -> None:
    got = _window(coverage.shape, (cx - radius - 2, cy - radius - 2, cx + radius + 2, cy + radius + 2))
    if got is not None:
        where, xx, yy = got
        coverage[where] = np.maximum(coverage[where], np.clip(radius + 0.5 - np.hypot(xx - cx, yy - cy), 0, 1))


def over(premultiplied: np.ndarray, alpha: np.ndarray, coverage: np.ndarray, colour) -> None:
    """Composite a flat-coloured layer of ``coverage`` over the running (premultiplied, alpha)."""
    a = coverage[..., None]
    premultiplied *= 1 - a
    premultiplied += a * np.asarray(colour, np.float32)
    alpha *= 1 - coverage
    alpha += coverage


# -- paint-out: markers, a wire, a logo ------------------------------------------------------------
MARKER_COLOURS = ((0.15, 0.95, 0.25), (0.95, 0.15, 0.85), (1.0, 0.5, 0.05), (0.2, 0.9, 0.95))


def set_dressing(rng: np.random.Generator, canvas: tuple[int, int], view: tuple[float, float, float, float],
                 scale: float, to_scene) -> tuple[np.ndarray, np.ndarray]:
    """Tracking markers and a wire on the set, drawn on the canvas so they move with the camera.

    ``view`` is the box (x0, y0, x1, y1) every frame sees; ``to_scene`` turns a display colour into
    the shot's values. Returns premultiplied colour (H, W, 3) and coverage (H, W, 1) on the canvas.
    """
    premultiplied = np.zeros((canvas[1], canvas[0], 3), np.float32)
    alpha = np.zeros((canvas[1], canvas[0]), np.float32)
    x0, y0, x1, y1 = view
    # A small frame gets fewer markers and a shorter wire: their one-pixel anti-aliased rims would
    # otherwise cover far more of it than the 3% a paint-out shot may change.
    small = min(1.0, scale)
    for i in range(max(2, round(int(rng.integers(6, 9)) * small))):
        size = rng.uniform(8, 16) * scale * (0.6 + 0.4 * small)
        cx, cy = rng.uniform(x0 + 0.08 * (x1 - x0), x1 - 0.08 * (x1 - x0)), rng.uniform(y0 + 0.1 * (y1 - y0), y1 - 0.1 * (y1 - y0))
        ink = np.zeros_like(alpha)
        if i % 3 == 2:  # a dot
            draw_disc(ink, cx, cy, size / 2)
        else:  # a cross, at any angle, its arms ~2.5 px thick
            a = rng.uniform(0, math.pi)
            for arm in (a, a + math.pi / 2):
                dx, dy = 0.5 * size * math.cos(arm), 0.5 * size * math.sin(arm)
                draw_segments(ink, np.array([[cx - dx, cy - dy], [cx + dx, cy + dy]]), max(1.2, 2.5 * scale))
        over(premultiplied, alpha, ink, to_scene(MARKER_COLOURS[int(rng.integers(len(MARKER_COLOURS)))]))
    # The wire: a gently sagging curve across part of the frame, 1-3 px thick, dark with a sheen.
    ink = np.zeros_like(alpha)
    length = rng.uniform(0.45, 0.65) * (x1 - x0) * (0.3 + 0.7 * small)
    start = np.array([rng.uniform(x0, x1 - length), rng.uniform(y0 + 0.2 * (y1 - y0), y1 - 0.3 * (y1 - y0))])
    tilt, sag = rng.uniform(-0.25, 0.25), rng.uniform(0.04, 0.09) * length
    t = np.linspace(0, 1, 48)[:, None]
    points = start + t * length * np.array([math.cos(tilt), math.sin(tilt)]) + np.array([0.0, 1.0]) * sag * 4 * t * (1 - t)
    draw_segments(ink, points, float(np.clip(2.0 * scale, 0.6, 3.0 * max(scale, 1.0))))
    over(premultiplied, alpha, ink, to_scene((0.07, 0.07, 0.08)))
    return premultiplied, alpha[..., None]


def logo(width: int, height: int, scale: float, rng: np.random.Generator, to_scene) -> tuple[np.ndarray, np.ndarray]:
    """A burnt-in channel bug in the bottom right corner: a translucent panel with letter-like
    strokes, fixed to the frame (it does not move with the camera). Premultiplied colour and coverage."""
    premultiplied = np.zeros((height, width, 3), np.float32)
    alpha = np.zeros((height, width), np.float32)
    scale *= 0.6 + 0.4 * min(1.0, scale)  # smaller still on a tiny frame, where its rim is most of it
    pw, ph = 46 * scale, 17 * scale
    x0, y0 = width - pw - 0.05 * height, height - ph - 0.05 * height
    panel = np.zeros_like(alpha)
    got = _window(alpha.shape, (x0 - 1, y0 - 1, x0 + pw + 1, y0 + ph + 1))
    if got is not None:
        where, xx, yy = got
        panel[where] = np.clip(np.minimum(np.minimum(xx - x0, x0 + pw - xx), np.minimum(yy - y0, y0 + ph - yy)) + 0.5, 0, 1)
    over(premultiplied, alpha, panel * 0.8, to_scene((0.05, 0.08, 0.30)))
    # Four "letters", each two or three strokes from a 2x3 grid of corners, as type has.
    strokes = np.zeros_like(alpha)
    nodes = np.array([[0, 0], [1, 0], [0, 0.5], [1, 0.5], [0, 1], [1, 1]], np.float32)
    lw, lh = 6 * scale, 10 * scale
    for k in range(4):
        ox, oy = x0 + 4 * scale + k * (lw + 4.5 * scale), y0 + 3.5 * scale
        for _ in range(int(rng.integers(2, 4))):
            a, b = rng.choice(len(nodes), 2, replace=False)
            points = np.array([nodes[a], nodes[b]]) * np.array([lw, lh]) + np.array([ox, oy])
            draw_segments(strokes, points, max(0.8, 1.5 * scale))
    over(premultiplied, alpha, strokes, to_scene((0.95, 0.95, 0.92)))
    return premultiplied, alpha[..., None]


# -- beauty: soft spots ----------------------------------------------------------------------------
def blemishes(rng: np.random.Generator, canvas: tuple[int, int], view, scale: float) -> np.ndarray:
    """A multiplicative layer minus one (H, W, 3) on the canvas: 30-60 soft dark or red-ish spots,
    4-12 px, each falling off smoothly to exactly nothing at its rim (so the truth outside is the
    plate, bit for bit)."""
    layer = np.ones((canvas[1], canvas[0], 3), np.float32)
    x0, y0, x1, y1 = view
    for _ in range(int(rng.integers(30, 61))):
        radius = rng.uniform(3, 7.5) * scale * 1.6  # soft rim: the visible core is the 4-12 px
        # Gathered toward the middle of the view, where the subject (a face, a retina) is.
        cx = float(np.clip(rng.normal((x0 + x1) / 2, 0.22 * (x1 - x0)), x0, x1))
        cy = float(np.clip(rng.normal((y0 + y1) / 2, 0.25 * (y1 - y0)), y0, y1))
        got = _window(layer.shape, (cx - radius, cy - radius, cx + radius, cy + radius))
        if got is None:
            continue
        where, xx, yy = got
        r2 = ((xx - cx) ** 2 + (yy - cy) ** 2) / (radius * radius)
        profile = np.clip(1 - r2, 0, 1) ** 2
        tint = np.array((0.9, 0.45, 0.5) if rng.random() < 0.4 else (0.4, 0.36, 0.34), np.float32)
        depth = rng.uniform(0.45, 0.85)
        layer[where] *= 1 - depth * profile[..., None] * (1 - tint)
    return layer - 1


# -- look: a hue-dependent grade with local contrast ----------------------------------------------
def look(display: np.ndarray, scale: float) -> np.ndarray:
    """The grade the ``look`` shots learn, on display-referred values.

    Hue-dependent: greens pushed toward teal, reds and skin warmed and richer, blues and purples
    turned toward cyan and calmed; then an unsharp mask on luminance (radius ~4 px, amount 0.65) for
    local contrast. The first needs the pixel's hue, the second its neighbours: a per-channel curve
    can do neither.
    """
    from skimage.color import hsv2rgb, rgb2hsv

    hsv = rgb2hsv(np.clip(display, 0, 1))
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]

    def near(centre, width):
        d = (h - centre + 0.5) % 1.0 - 0.5
        return np.exp(-(d / width) ** 2)

    greens, reds, blues = near(0.33, 0.09), near(0.06, 0.07), near(0.68, 0.09)
    hsv[..., 0] = (h + 0.07 * greens + 0.015 * reds - 0.12 * blues) % 1.0
    hsv[..., 1] = np.clip(s * (1 + 0.35 * reds - 0.35 * blues + 0.1 * greens), 0, 1)
    hsv[..., 2] = v * (1 + 0.06 * reds)
    graded = hsv2rgb(hsv).astype(np.float32)
    y = luminance(graded)
    detail = y - ndimage.gaussian_filter(y, max(1.0, 4.0 * scale))
    return np.clip(graded + 0.65 * detail[..., None], 0, 1).astype(np.float32)


# -- roto: an animal walking over the ground -------------------------------------------------------
#: The animal's parts as ellipses (centre x, y, radius x, y, angle) in body units (y down; the body's
#: half-length is 1). Legs and tail swing about their roots, see ``animal``.
BODY = ((0.0, 0.0, 1.0, 0.52, 0.0), (0.9, -0.38, 0.36, 0.22, -0.75), (1.28, -0.7, 0.36, 0.27, 0.15),
        (1.62, -0.6, 0.22, 0.13, 0.2), (1.1, -1.0, 0.08, 0.2, -0.35), (1.34, -1.0, 0.08, 0.2, 0.3))
LEGS = ((0.65, 0.3), (0.4, 0.38), (-0.45, 0.35), (-0.7, 0.3))
TAIL_ROOT = (-0.95, -0.15)


def _ellipse_distance(xx, yy, cx, cy, rx, ry, angle):
    """Approximate signed distance (in the units of xx) to a rotated ellipse, good near its edge."""
    c, s = math.cos(angle), math.sin(angle)
    u, v = (xx - cx) * c + (yy - cy) * s, -(xx - cx) * s + (yy - cy) * c
    k0 = np.sqrt((u / rx) ** 2 + (v / ry) ** 2)
    k1 = np.sqrt((u / rx**2) ** 2 + (v / ry**2) ** 2)
    return k0 * (k0 - 1) / np.maximum(k1, 1e-6)


def animal(u: float, width: int, height: int, texture: np.ndarray, rng_phase: float, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """The roto shot's foreground at shot fraction ``u``: colour (H, W, 3, linear) and coverage (H, W, 1).

    It walks on its own path (across about 40% of the frame, bobbing, turning a few degrees) with its
    legs swinging; its own texture moves with it, and its colours lie inside the ground's, so what
    separates it is its outline and shading, what a roto artist follows.
    """
    size = 48 * scale  # the body's half-length in pixels
    cx = width * (0.3 + 0.38 * u) + 0.4 * size * math.sin(rng_phase)
    cy = height * 0.55 + 0.08 * size * math.sin(2 * math.pi * 2.2 * u + rng_phase)
    turn = math.radians(-4 + 8 * u)
    colour = np.zeros((height, width, 3), np.float32)
    coverage = np.zeros((height, width, 1), np.float32)
    got = _window((height, width), (cx - 2.4 * size, cy - 2.2 * size, cx + 2.4 * size, cy + 2.2 * size))
    if got is None:
        return colour, coverage
    where, xx, yy = got
    c, s = math.cos(turn), math.sin(turn)
    bx, by = ((xx - cx) * c + (yy - cy) * s) / size, (-(xx - cx) * s + (yy - cy) * c) / size
    parts = [_ellipse_distance(bx, by, *p) for p in BODY]
    for i, (hx, hy) in enumerate(LEGS):
        swing = 0.35 * math.sin(2 * math.pi * 2.2 * u + (0 if i in (0, 3) else math.pi))
        parts.append(_ellipse_distance(bx, by, hx - 0.45 * math.sin(swing), hy + 0.45 * math.cos(swing), 0.11, 0.5, swing))
    wag = 0.55 + 0.2 * math.sin(2 * math.pi * 1.5 * u)
    parts.append(_ellipse_distance(bx, by, TAIL_ROOT[0] - 0.4 * math.cos(wag), TAIL_ROOT[1] - 0.4 * math.sin(wag), 0.45, 0.07, wag))
    distance = np.min(parts, axis=0) * size  # in pixels: union of the parts
    cover = np.clip(0.5 - distance, 0, 1)
    # The texture is fixed to the body (it turns and travels with it), ~1 texture pixel per pixel at 270p.
    th, tw = texture.shape[:2]
    tex_rows, tex_cols = by * size / scale + th / 2, bx * size / scale + tw / 2
    albedo = np.stack([ndimage.map_coordinates(texture[..., k], [tex_rows, tex_cols], order=1, mode="mirror")
                       for k in range(3)], -1)
    shade = 0.6 + 0.5 * np.clip(-distance / (0.35 * size), 0, 1) - 0.15 * np.clip(by, -1, 1)  # lit from above
    colour[where] = srgb_to_linear(albedo) * shade[..., None]
    coverage[where] = cover[..., None]
    return colour, coverage


# -- writing a shot --------------------------------------------------------------------------------
def keyframes(first: int, frames: int) -> list[int]:
    """Four keyframes spread over the shot, first and last included (fewer for a very short shot)."""
    return sorted({first + int(math.floor(i * (frames - 1) / 3 + 1e-9)) for i in range(4)})


def camera_view(camera: Camera, width: int, height: int) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of the canvas every frame of ``camera`` sees: around the middle of the
    move, shrunk by the push-in. Where a shot's markers, wire and blemishes go."""
    px, py, _, _ = camera.move.at(0.5)
    cw, ch = camera.canvas
    half_w, half_h = 0.5 * width / (1 + camera.move.zoom), 0.5 * height / (1 + camera.move.zoom)
    return ((cw - 1) / 2 + px - half_w, (ch - 1) / 2 + py - half_h, (cw - 1) / 2 + px + half_w, (ch - 1) / 2 + py + half_h)


def paint_over(scene: np.ndarray, attached: np.ndarray, screen: tuple[np.ndarray, np.ndarray],
               coords) -> np.ndarray:
    """The paint-out's plate before grain: ``scene`` under the set dressing that moves with the camera
    (``attached``: premultiplied RGB + coverage on the canvas) and the logo fixed on screen."""
    layer = np.clip(Camera.sample(attached, coords, order=1), 0, None)
    layer[layer[..., 3] < 0.01] = 0  # the faint halo resampling leaves is below what shows
    dirty = scene * (1 - layer[..., 3:]) + layer[..., :3]
    return dirty * (1 - screen[1]) + screen[0]


def _like(ext: str, width: int, height: int, directory: Path):
    """The ImageInfo every frame of the shot is written like: EXR half (zip), 10-bit DPX, 16-bit TIFF."""
    from duplidog import imageio

    pixel_type, format_name = {"exr": ("half", "openexr"), "dpx": ("uint16", "dpx"), "tif": ("uint16", "tiff")}[ext]
    bits = {"oiio:BitsPerSample": 10} if ext == "dpx" else None
    return imageio.new_like(directory / f"plate.{ext}", width, height, pixel_type, format_name, attributes=bits)


def write_photo_shot(kind: str, directory: Path, size: tuple[int, int] = (480, 270), frames: int = 12,
                     seed: int = 0) -> dict:
    """Write shot ``kind`` (one of PHOTO_SHOTS or ASIDE_SHOTS) of ``frames`` frames of ``size`` (W, H)
    into ``directory``: ``shot.json``, ``plate/`` every frame, ``fixed/`` on the keyframes, ``truth/``
    every frame (the fixed keyframes are byte copies of the truth).

    Returns ``{"config": shot config for duplidog, "meta": the shot.json dict, "plates": {frame: pixels},
    "truth": {frame: pixels}}``, pixels float32 (H, W, C) as read back from the files.
    """
    from duplidog import imageio
    from duplidog.atomic import atomic_path, atomic_write_text

    if kind not in RECIPES:
        raise ValueError(f"unknown photo shot {kind!r}; choose from {', '.join(PHOTO_SHOTS + ASIDE_SHOTS)}")
    width, height = (int(n) for n in size)
    if width < 8 or height < 8 or frames < 2:
        raise ValueError(f"photo shot {kind!r}: need at least 8x8 pixels and 2 frames, got {width}x{height}, {frames}")
    recipe = RECIPES[kind]
    ext, encoding, task = FORMATS[recipe.fix]
    directory = Path(directory)
    rng = _unit_rng(seed, kind)
    scale = height / REFERENCE_HEIGHT
    camera = Camera(Move.draw(rng, width), frames, width, height)
    linear = encoding == "linear"

    def to_scene(rgb):
        """A display colour in the shot's values (scene-linear at the shot's exposure, or as is)."""
        rgb = np.asarray(rgb, np.float32)
        return srgb_to_linear(rgb) * recipe.exposure if linear else rgb

    def to_backdrop(rgb):
        if recipe.fix == "degrain":
            return 0.035 + 0.93 * rgb  # a scan's lifted blacks, so the grain is not clipped at 0
        return to_scene(rgb)

    backdrop = Backdrop(recipe, width, camera.canvas, to_backdrop)

    view = camera_view(camera, width, height)
    attached = screen = spots = texture = None
    if recipe.fix == "paintout":
        attached = set_dressing(rng, camera.canvas, view, scale, to_scene)
        attached = np.concatenate(attached, -1)  # premultiplied RGB + coverage, warped together
        screen = logo(width, height, scale, rng, to_scene)
    elif recipe.fix == "beauty":
        spots = blemishes(rng, camera.canvas, view, scale)
    elif recipe.fix == "roto":
        texture = _tinted(load_photo(recipe.texture), recipe.texture_tint)
    phase = rng.uniform(0, 2 * math.pi)

    first = FIRST_FRAME
    keys = keyframes(first, frames)
    like = _like(ext, width, height, directory)
    plates, truths = {}, {}
    for index in range(frames):
        frame = first + index
        coords = camera.coords(index)
        scene = backdrop.sample(coords)
        scene = np.maximum(scene, 0) if linear else np.clip(scene, 0, 1)  # bicubic ringing
        field = grain_field(_unit_rng(seed, kind, frame), height, width)

        def grained(image):
            return add_grain_linear(image, field, recipe.grain) if linear else add_grain(image, field, recipe.grain)

        names = None
        if recipe.fix == "paintout":
            plate, truth = grained(paint_over(scene, attached, screen, coords)), grained(scene)
        elif recipe.fix == "beauty":
            plate, truth = grained(scene * (1 + Camera.sample(spots, coords, order=1))), grained(scene)
        elif recipe.fix == "degrain":
            plate, truth = grained(scene), scene
        elif recipe.fix == "look":
            plate = grained(scene)
            truth = look(np.clip(plate, 0, 1), scale)  # the grade is applied to the grainy plate
        else:  # roto
            colour, matte = animal(camera.u(index), width, height, texture, phase, scale)
            plate, truth, names = grained(scene * (1 - matte) + colour * matte), matte, ["A"]
        plate_path = directory / f"plate/plate.{frame:04d}.{ext}"
        truth_path = directory / f"truth/truth.{frame:04d}.{ext}"
        imageio.write_pixels(plate_path, plate, like)
        imageio.write_pixels(truth_path, truth, like, channel_names=names)
        if frame in keys:
            # The artist's keyframe is the truth, byte for byte.
            with atomic_path(directory / f"fixed/fixed.{frame:04d}.{ext}") as tmp:
                shutil.copyfile(truth_path, tmp)
        plates[frame] = imageio.read_pixels(plate_path)
        truths[frame] = imageio.read_pixels(truth_path)

    meta = {"ext": ext, "encoding": encoding, "task": task, "first": first, "last": first + frames - 1,
            "keyframes": keys, "size": [width, height], "kind": kind, "photo": recipe.photo}
    atomic_write_text(directory / "shot.json", json.dumps(meta, indent=2) + "\n")
    config = {"shot": kind, "source": str(directory / f"plate/plate.%04d.{ext}"),
              "target": str(directory / f"fixed/fixed.%04d.{ext}"), "output": str(directory / f"out/out.%04d.{ext}")}
    return {"config": config, "meta": meta, "plates": plates, "truth": truths}
