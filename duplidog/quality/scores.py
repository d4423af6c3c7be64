"""Does a trained model beat simple baselines on the frames it never saw?

Three synthetic shots with the truth known on every frame, made from the demo's procedural scene and
camera move (duplidog.demo): ``cleanup`` (dust removed and a grade, exactly the demo), ``look`` (the
grade alone) and ``roto`` (a one-channel matte of two shaded objects that move across the plate on
their own paths, from an RGB plate). Each goes through
the stages the pipeline runs (ingest, pool, train, infer_frames); the non-key frames are then scored
against two baselines: doing nothing (the plate) and a per-channel curve fitted on the keyframes (the
fix a compositor could get from a 1D LUT). PSNR for images (peak 1.0) on scene-linear values, where
the highlights (up to about 25 here) dominate, and in the working space (the log-like encoding the
network learns in, ``duplidog.colour``), where an error counts as much in the shadows as in a
highlight, as the eye sees it; IoU of matte > 0.5 for the matte.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from duplidog import demo

SHOTS = ("cleanup", "look", "roto")
CURVE_BINS = 64


# -- baselines and scores --------------------------------------------------------------------------
def fit_curve(source: np.ndarray, target: np.ndarray, bins: int = CURVE_BINS) -> tuple[np.ndarray, np.ndarray]:
    """A piecewise-linear curve source -> target through the mean target of each source quantile bin."""
    source, target = source.ravel().astype(np.float64), target.ravel().astype(np.float64)
    edges = np.unique(np.quantile(source, np.linspace(0, 1, bins + 1)))
    which = np.clip(np.searchsorted(edges, source, side="right") - 1, 0, len(edges) - 2)
    counts = np.bincount(which, minlength=len(edges) - 1)
    keep = counts > 0
    xs = (np.bincount(which, source, len(edges) - 1)[keep] / counts[keep])
    ys = (np.bincount(which, target, len(edges) - 1)[keep] / counts[keep])
    return xs, ys


def apply_curve(curve: tuple[np.ndarray, np.ndarray], values: np.ndarray) -> np.ndarray:
    """The curve at ``values``, extended linearly past its ends (scene-linear values are unbounded)."""
    xs, ys = curve
    if len(xs) < 2:
        return np.full_like(values, ys[0] if len(ys) else 0.0)
    out = np.interp(values, xs, ys)
    low, high = values < xs[0], values > xs[-1]
    out[low] = ys[0] + (values[low] - xs[0]) * (ys[1] - ys[0]) / (xs[1] - xs[0])
    out[high] = ys[-1] + (values[high] - xs[-1]) * (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
    return out.astype(np.float32)


def curve_baseline(key_sources: Sequence[np.ndarray], key_targets: Sequence[np.ndarray],
                   plates: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per output channel, a curve from the matching source channel (or from luminance for a matte)."""
    src, tgt = np.stack(key_sources), np.stack(key_targets)
    same = src.shape[-1] == tgt.shape[-1]

    def feature(images: np.ndarray, channel: int) -> np.ndarray:
        return images[..., channel] if same else images[..., :3].mean(-1)

    curves = [fit_curve(feature(src, c), tgt[..., c]) for c in range(tgt.shape[-1])]
    return [np.stack([apply_curve(curves[c], feature(p, c)) for c in range(tgt.shape[-1])], -1) for p in plates]


def psnr(result: np.ndarray, truth: np.ndarray, peak: float = 1.0) -> float:
    mse = float(np.mean((result.astype(np.float64) - truth.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(peak * peak / mse)


def iou(result: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> float:
    a, b = result > threshold, truth > threshold
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


# -- the shots -------------------------------------------------------------------------------------
# The roto shot's objects: centre and radii as fractions of the frame, motion in frame fractions per
# frame, albedo (scene-linear RGB, inside the background's range so no key or curve separates them).
ROTO_OBJECTS = (
    dict(centre=(0.22, 0.40), radii=(0.14, 0.17), motion=(0.022, 0.006), albedo=(0.42, 0.34, 0.22)),
    dict(centre=(0.80, 0.70), radii=(0.07, 0.10), motion=(-0.018, -0.012), albedo=(0.20, 0.30, 0.26)),
)


def roto_objects(frame: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """The roto shot's foreground at ``frame``: its colour (H, W, 3) and coverage (H, W, 1).

    Each object is an ellipse lit like a sphere from the top left, with an anti-aliased edge (a
    one-pixel ramp of coverage), moving on its own straight path while the camera drifts over the
    background. Its colours lie inside the background's, so what separates it is shape and
    shading, which is what a roto artist follows and what a per-pixel curve cannot see.
    """
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    t = frame - demo.FRAMES[0]
    colour = np.zeros((height, width, 3), np.float32)
    alpha = np.zeros((height, width), np.float32)
    for thing in ROTO_OBJECTS:
        cx = (thing["centre"][0] + thing["motion"][0] * t) * width
        cy = (thing["centre"][1] + thing["motion"][1] * t) * height
        rx, ry = thing["radii"][0] * width, thing["radii"][1] * height
        u, v = (xx - cx) / rx, (yy - cy) / ry
        radius = np.sqrt(u * u + v * v)
        coverage = np.clip(0.5 - (radius - 1.0) * min(rx, ry), 0.0, 1.0)
        normal_z = np.sqrt(np.clip(1.0 - radius * radius, 0.0, 1.0))
        shade = 0.3 + 0.9 * np.clip(-0.5 * u - 0.5 * v + 0.7 * normal_z, 0.0, None)
        shaded = shade[..., None] * np.asarray(thing["albedo"], np.float32)
        colour = colour * (1 - coverage[..., None]) + shaded * coverage[..., None]  # later objects in front
        alpha = alpha * (1 - coverage) + coverage
    return colour, alpha[..., None]


def write_shot(kind: str, directory: Path, width: int = demo.WIDTH, height: int = demo.HEIGHT) -> dict:
    """Plates for every frame, targets on the keyframes; returns the shot config and the truth per frame."""
    import OpenImageIO as oiio

    from duplidog import imageio

    if kind not in SHOTS:
        raise ValueError(f"unknown quality shot {kind!r}; choose from {', '.join(SHOTS)}")
    reach_x, reach_y = (int(max(demo.frame_offset(f)[i] for f in demo.FRAMES)) + 2 for i in (0, 1))
    canvas = demo.scene(height + reach_y + 2, width + reach_x + 2)
    spots = demo.dust(height, width)
    spec = oiio.ImageSpec(width, height, 3, "half")
    spec.channelnames = ("R", "G", "B")
    spec.attribute("compression", "zip")
    like = imageio.info_from_spec(directory / "plate.exr", spec, "openexr")
    plates, truth = {}, {}
    for frame in demo.FRAMES:
        clean = demo.render(frame, canvas, width, height)
        if kind == "roto":
            foreground, alpha = roto_objects(frame, width, height)
            plate, fixed, names = clean * (1 - alpha) + foreground * alpha, alpha, ["A"]
        else:
            plate = clean * spots if kind == "cleanup" else clean
            fixed, names = demo.grade(clean), None
        imageio.write_pixels(directory / f"plate/plate.{frame:04d}.exr", plate, like)
        if frame in demo.KEYFRAMES:
            imageio.write_pixels(directory / f"fixed/fixed.{frame:04d}.exr", fixed, like, channel_names=names)
        # Scored against what the files hold (half floats), as the model sees them.
        plates[frame] = imageio.read_pixels(directory / f"plate/plate.{frame:04d}.exr")
        truth[frame] = fixed.astype(np.float16).astype(np.float32)
    config = {"shot": kind, "source": str(directory / "plate/plate.%04d.exr"),
              "target": str(directory / "fixed/fixed.%04d.exr"), "output": str(directory / "out/out.%04d.exr")}
    return {"config": config, "plates": plates, "truth": truth}


# -- the benchmark ---------------------------------------------------------------------------------
def evaluate_shot(kind: str, directory: Path, settings: dict | None = None,
                  size: tuple[int, int] = (demo.WIDTH, demo.HEIGHT)) -> dict:
    """Train on ``kind``'s keyframes with ``settings`` (a partial shot config) and score the other frames."""
    from duplidog import colour, imageio
    from duplidog.infer import infer_frames
    from duplidog.ingest import ingest
    from duplidog.pool import build_pool
    from duplidog.settings import resolve
    from duplidog.train import train

    shot = write_shot(kind, directory, *size)
    config = resolve({**(settings or {}), **shot["config"]}, origin=f"quality shot {kind}")
    results = directory / "results"
    plan = ingest(config, results / "ingest")
    build_pool(results / "ingest/manifest.csv", results / "ingest/plan.json", results / "pool.zarr",
               config["pool"], seed=config["seed"])
    started = time.perf_counter()
    trained = train(results / "pool.zarr", results / "ingest/plan.json", results / "ingest/manifest.csv",
                    results / "model", results / "train",
                    {"model": config["model"], "train": config["train"], "seed": config["seed"]})
    seconds = time.perf_counter() - started
    unseen = [f for f in plan["frames"] if f not in plan["keyframes"]]
    infer_frames(results / "model", results / "ingest/plan.json", unseen, None, settings=config["infer"])
    output = {f: imageio.read_pixels(directory / f"out/out.{f:04d}.exr") for f in unseen}
    keys = plan["train_frames"] + plan["validation_frames"]
    curve = dict(zip(unseen, curve_baseline([shot["plates"][f] for f in keys], [shot["truth"][f] for f in keys],
                                            [shot["plates"][f] for f in unseen])))
    score = iou if kind == "roto" else psnr

    def mean(images: dict, space: str | None = None) -> float:
        """The mean score over the unseen frames, on scene values or (``space``) encoded into it."""
        def shaped(x):
            return x if space is None else colour.encode(x, space)

        return float(np.mean([score(shaped(images[f]), shaped(shot["truth"][f])) for f in unseen]))

    working = None if kind == "roto" else plan["colorspace"]
    row = {"shot": kind, "metric": "IoU" if kind == "roto" else "PSNR dB", "model": mean(output),
           "nothing": None if kind == "roto" else mean(shot["plates"]), "curve": mean(curve),
           "model_working": None if working is None else mean(output, working),
           "nothing_working": None if working is None else mean(shot["plates"], working),
           "curve_working": None if working is None else mean(curve, working),
           "frames": len(unseen), "steps": trained["steps"], "train_seconds": round(seconds, 1),
           "steps_per_second": round(trained["steps"] / seconds, 2) if seconds else None}
    baselines = [v for v in (row["nothing"], row["curve"]) if v is not None]
    row["margin"] = row["model"] - max(baselines)
    return row


def bench_quality(steps: int | None = None, preset: str = "small", shots: Iterable[str] = SHOTS,
                  out_dir: str | Path | None = None, settings: dict | None = None,
                  size: tuple[int, int] = (demo.WIDTH, demo.HEIGHT)) -> list[dict]:
    """Every shot of ``shots`` (frames of ``size``) trained for ``steps`` (default: train.steps) and
    scored; the rows."""
    settings = dict(settings or {})
    settings["model"] = {**settings.get("model", {}), "preset": preset}
    if steps is not None:
        settings["train"] = {**settings.get("train", {}), "steps": int(steps)}
    settings["train"] = {"progress": False, **settings.get("train", {})}
    with tempfile.TemporaryDirectory(prefix="duplidog-quality-") as scratch:
        root = Path(out_dir) if out_dir is not None else Path(scratch)
        return [evaluate_shot(kind, root / kind, settings, size) for kind in shots]


def format_rows(rows: Sequence[dict]) -> str:
    def cell(value, digits=3):
        return "-" if value is None else (f"{value:.{digits}f}" if isinstance(value, float) else str(value))

    header = ("shot", "metric", "model", "nothing", "curve", "model-best", "working: model", "nothing", "curve",
              "frames", "steps", "train s", "steps/s")
    lines = [header] + [(r["shot"], r["metric"], cell(r["model"]), cell(r["nothing"]), cell(r["curve"]),
                         cell(r["margin"], 3), cell(r.get("model_working")), cell(r.get("nothing_working")),
                         cell(r.get("curve_working")), cell(r["frames"]), cell(r["steps"]),
                         cell(r["train_seconds"], 1), cell(r["steps_per_second"], 2)) for r in rows]
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(line, widths)) for line in lines)
