"""Measure the pool: which sampler puts tiles on the fix, what a build costs, how well tiles compress.

Synthetic keyframes (a textured scene-linear plate and three typical paint fixes) so the figures can
be reproduced anywhere:

* ``spot``: one round patch painted out (dust, a blemish);
* ``two spots``: two patches in opposite corners (the separable sampler's weak case: it also draws
  where one patch's rows cross the other's columns);
* ``wire``: a thin diagonal wire removed across the frame (a classic rig/wire removal).

For each fix and sampler (and a ``uniform`` baseline: the full sampler with change and detail weights
0): the share of tiles whose loss region touches the fix (``hits``), the share of the fix's difference
mass inside at least one loss region of the first 16 tiles drawn (``coverage``: one training batch's
worth; with all tiles every sampler covers everything), the mean share of a tile's loss region that
is fix (``density``), and the time to set the sampler up and draw. Then a whole ``build_pool`` per
sampler and per compressor: seconds, tiles per second, bytes per tile.

``duplidog bench pool`` and ``benchmarks/bench_pool.py`` call ``bench_pool``; results are printed as
ratios against the full 2D sampler, never asserted.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from duplidog import colour, imageio
from duplidog.pool import build as pool_build
from duplidog.pool import sampling

FIXES = ("spot", "two spots", "wire")
#: Tiles whose union is measured for ``coverage``: about one training batch.
COVERAGE_TILES = 16
#: (sampler, compressor) pairs built whole; the first is the default and the base of the ratios.
VARIANTS = [("full", "blosc-zstd"), ("separable", "blosc-zstd"), ("full", "zstd")]


def synthetic_plate(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Scene-linear RGB with detail at several scales and sensor-like noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    plate = np.zeros((height, width, 3), np.float32)
    for period, amplitude in ((211.0, 0.3), (53.0, 0.15), (13.0, 0.06)):
        phase = rng.uniform(0, 2 * np.pi, 2)
        wave = np.sin(xx / period + phase[0]) * np.cos(yy / (period * 0.7) + phase[1])
        plate += amplitude * wave[..., None] * rng.uniform(0.5, 1.0, 3)
    plate = 0.18 * np.exp2(2.0 * plate)  # around mid grey, a few stops either way
    return plate * (1 + 0.03 * rng.standard_normal(plate.shape)).astype(np.float32)


def fix_mask(kind: str, height: int, width: int) -> np.ndarray:
    """Where the artist's fix changes the plate, (H, W) float in 0..1 (soft edged)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    radius = 0.04 * min(height, width)

    def spot(cy: float, cx: float) -> np.ndarray:
        return np.clip(radius + 2 - np.hypot(yy - cy, xx - cx), 0, 2) / 2

    if kind == "spot":
        return spot(0.6 * height, 0.35 * width)
    if kind == "two spots":
        return np.maximum(spot(0.2 * height, 0.2 * width), spot(0.8 * height, 0.8 * width))
    if kind == "wire":
        # distance to the line from (0.1 H, 0.05 W) to (0.9 H, 0.95 W)
        y0, x0, y1, x1 = 0.1 * height, 0.05 * width, 0.9 * height, 0.95 * width
        distance = np.abs((y1 - y0) * (xx - x0) - (x1 - x0) * (yy - y0)) / np.hypot(y1 - y0, x1 - x0)
        inside = (xx >= x0) & (xx <= x1)
        return np.where(inside, np.clip(3.0 - distance, 0, 1), 0).astype(np.float32)
    raise ValueError(f"unknown fix {kind!r}")


def fixed_plate(plate: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The 'after': inside the mask the plate is replaced by a smooth clean-plate value."""
    clean = plate.mean(axis=(0, 1), keepdims=True) * 0.7
    return plate * (1 - mask[..., None]) + clean * mask[..., None]


def tile_metrics(positions: np.ndarray, change: np.ndarray, mask: np.ndarray, tile: int, border: int) -> dict:
    """hits, coverage (of the first ``COVERAGE_TILES``) and density of tiles at ``positions`` (loss regions)."""
    inner = tile - 2 * border
    covered = np.zeros(mask.shape, bool)
    table = sampling.BoxMeans((mask > 0).astype(np.float32))
    tops, lefts = positions[:, 0] + border, positions[:, 1] + border
    fix_share = table.mean(tops, lefts, inner, inner)
    for y, x in zip(tops[:COVERAGE_TILES].tolist(), lefts[:COVERAGE_TILES].tolist()):
        covered[y : y + inner, x : x + inner] = True
    mass = change * (mask > 0)
    return {
        "hits": float(np.mean(fix_share > 0)),
        "coverage": float(mass[covered].sum() / max(mass.sum(), 1e-12)),
        "density": float(fix_share.mean()),
    }


def compare_samplers(
    height: int, width: int, settings: dict, repeats: int = 5, seed: int = 0
) -> list[dict[str, Any]]:
    """Per fix and sampler: placement quality (mean over ``repeats`` seeds) and set-up + draw time."""
    tile, border = int(settings["tile_size"]), int(settings["border"])
    plate = synthetic_plate(height, width, seed)
    results = []
    for kind in FIXES:
        mask = fix_mask(kind, height, width)
        source = colour.encode(plate, "linear")
        target = colour.encode(fixed_plate(plate, mask), "linear")
        change = sampling.change_map(source, target, "RGB", "RGB")
        detail = sampling.gradient_magnitude(source)
        activity = sampling.BoxMeans(change + detail)
        for name in ("uniform",) + sampling.SAMPLERS:
            seconds, metrics = [], []
            shares = (0.0, 0.0) if name == "uniform" else (settings["change_weight"], settings["detail_weight"])
            for r in range(repeats):
                rng = np.random.default_rng([seed, r])
                started = time.perf_counter()
                weights = sampling.pixel_weights(change, detail, *shares, settings["uniform_floor"])
                sampler = sampling.make_sampler("full" if name == "uniform" else name, weights)
                positions, _, _ = sampling.draw_tile_positions(
                    sampler, activity, rng, int(settings["tiles_per_keyframe"]), (height, width), tile, border,
                    0, float(settings["detail_threshold"]), int(settings["max_attempts"]),
                )
                seconds.append(time.perf_counter() - started)
                metrics.append(tile_metrics(positions, change, mask, tile, border))
            row = {"fix": kind, "sampler": name, "seconds": float(np.median(seconds))}
            row.update({k: float(np.mean([m[k] for m in metrics])) for k in metrics[0]})
            results.append(row)
    return results


def _write_exr(path: Path, pixels: np.ndarray) -> None:
    imageio.write_pixels(path, pixels, imageio.new_like(path, pixels.shape[1], pixels.shape[0]))


def compare_builds(
    folder: Path, height: int, width: int, settings: dict, keyframes: int = 2, seed: int = 0
) -> list[dict[str, Any]]:
    """Whole ``build_pool`` runs on ``keyframes`` synthetic 'spot' keyframes, per sampler and compressor."""
    rows = []
    for i in range(keyframes):
        plate = synthetic_plate(height, width, seed + i)
        _write_exr(folder / f"plate.{1001 + i}.exr", plate)
        _write_exr(folder / f"fixed.{1001 + i}.exr", fixed_plate(plate, fix_mask("spot", height, width)))
        rows.append({"frame": 1001 + i, "role": "train", "source": str(folder / f"plate.{1001 + i}.exr"),
                     "target": str(folder / f"fixed.{1001 + i}.exr")})
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    plan = {"colorspace": "linear", "input_channels": ["R", "G", "B"], "output_channels": ["R", "G", "B"]}
    (folder / "plan.json").write_text(json.dumps(plan))
    results = []
    for sampler, compressor in VARIANTS:
        variant = {**settings, "sampler": sampler, "compressor": compressor}
        started = time.perf_counter()
        stats = pool_build.build_pool(
            folder / "manifest.csv", folder / "plan.json", folder / "pool.zarr", variant, seed
        )
        seconds = time.perf_counter() - started
        results.append({
            "sampler": sampler, "compressor": compressor, "seconds": seconds, "tiles": stats["tiles"],
            "tiles_per_second": stats["tiles"] / seconds, "bytes_per_tile": stats["bytes"] / stats["tiles"],
            "compression": stats["uncompressed_bytes"] / stats["bytes"],
        })
    return results


def bench_pool(
    height: int = 540, width: int = 960, tiles_per_keyframe: int | None = None, repeats: int = 5,
    keyframes: int = 2, work_dir: str | Path | None = None, settings: dict | None = None,
) -> dict[str, Any]:
    """Run both comparisons, print them with ratios against the default, and return the figures."""
    settings = pool_build.pool_settings(settings)
    if tiles_per_keyframe is not None:
        settings["tiles_per_keyframe"] = tiles_per_keyframe
    samplers = compare_samplers(height, width, settings, repeats)
    with tempfile.TemporaryDirectory(dir=work_dir) as folder:
        builds = compare_builds(Path(folder), height, width, settings, keyframes)

    print(f"tile placement, {width}x{height}, {settings['tiles_per_keyframe']} tiles of {settings['tile_size']} "
          f"(border {settings['border']}), mean of {repeats} seeds; ratio = separable / full")
    print(f"{'fix':<10} {'sampler':<10} {'hits':>6} {'coverage':>9} {'density':>8} {'ms':>8}")
    by_key = {(r["fix"], r["sampler"]): r for r in samplers}
    for kind in FIXES:
        for name in ("uniform",) + sampling.SAMPLERS:
            r = by_key[(kind, name)]
            print(f"{kind:<10} {name:<10} {r['hits']:6.3f} {r['coverage']:9.3f} {r['density']:8.3f} "
                  f"{1000 * r['seconds']:8.1f}")
        full, separable = by_key[(kind, "full")], by_key[(kind, "separable")]
        print(f"{kind:<10} {'ratio':<10} {separable['hits'] / full['hits']:6.2f} "
              f"{separable['coverage'] / max(full['coverage'], 1e-9):9.2f} "
              f"{separable['density'] / max(full['density'], 1e-9):8.2f} {separable['seconds'] / full['seconds']:8.2f}")
    print(f"\nbuild_pool, {keyframes} keyframes {width}x{height} half EXR; ratio = variant / (full, blosc-zstd)")
    base = builds[0]
    for b in builds:
        print(f"{b['sampler']:<10} {b['compressor']:<11} {b['tiles']:5d} tiles {b['seconds']:6.2f} s "
              f"({b['seconds'] / base['seconds']:.2f}x)  {b['bytes_per_tile'] / 1024:6.1f} KiB/tile "
              f"({b['bytes_per_tile'] / base['bytes_per_tile']:.2f}x)  compression {b['compression']:.2f}:1")
    return {"samplers": samplers, "builds": builds, "settings": settings, "size": [height, width]}
