"""Build the tile pool: training keyframes in, one Zarr group of (source, target) tiles out.

Keyframes are read one at a time (source with the plan's input channels, target with its output
channels), weighted tile positions are drawn on each (``sampling``), a fraction of the tiles is
augmented (``augment``), and tiles stream into the store a shard at a time (``store``). Memory is one
keyframe plus one shard, whatever the pool's size. The store is built under a temporary name and
renamed into place, so a killed job leaves no half pool behind.

A temporal shot's (``temporal_frames`` N in the plan) keyframes are read with their neighbour plate frames
t-N..t+N (``duplidog.temporal``: mirrored at the shot's ends), stacked as channels after the keyframe's
own, and every tile is cut from that stack: the same window, the same flips, turns and warp, the same
exposure and gain for every frame (grain is drawn for each frame, as a camera's is). Where tiles are
drawn is decided on the keyframe alone. The source array then has the plate's channels times 2N + 1.

Randomness comes from ``numpy.random.default_rng([seed, frame])``: each keyframe's tiles depend only on
the seed, the frame and its pixels, not on which other keyframes are in the pool or in what order.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from duplidog import colour, imageio, temporal
from duplidog.atomic import atomic_path
from duplidog.errors import DuplidogError
from duplidog.core.plan import Plan, read_manifest, read_plan
from duplidog.core import pool_store
from duplidog.pool import augment, sampling
from duplidog.sequence import FramePattern

log = logging.getLogger(__name__)

#: Settings that shape the data (stored in the attributes, part of the fingerprint).
SAMPLING_KEYS = (
    "tiles_per_keyframe", "tile_size", "border", "sampler", "change_weight", "change_measure", "detail_weight",
    "uniform_floor", "detail_threshold", "max_attempts", "include_edges",
)
AUGMENTATION_KEYS = (
    "augment_fraction", "flips", "turns", "rotate_degrees", "scale_min", "scale_max",
    "exposure_stops", "colour_gain", "grain", "colour_to",
)
STORAGE_KEYS = ("shard_tiles", "compressor", "zstd_level")


def pool_settings(settings: dict | None = None) -> dict:
    """The pool section of the shot config, defaults filled in, checked beyond what the schema says."""
    from duplidog.settings import defaults

    merged = {**defaults()["pool"], **(settings or {})}
    unknown = sorted(set(merged) - set(SAMPLING_KEYS + AUGMENTATION_KEYS + STORAGE_KEYS))
    if unknown:
        raise DuplidogError(f"pool: unknown setting(s) {', '.join(unknown)}")
    tile, border = int(merged["tile_size"]), int(merged["border"])
    if tile < 16 or tile % 8:
        raise DuplidogError(f"pool.tile_size: {tile} must be a multiple of 8, at least 16")
    if border < 0 or tile - 2 * border < 8:
        raise DuplidogError(f"pool.border: {border} leaves less than 8 pixels of a {tile}-pixel tile to train on")
    if merged["sampler"] not in sampling.SAMPLERS:
        raise DuplidogError(f"pool.sampler: {merged['sampler']!r} is not one of {', '.join(sampling.SAMPLERS)}")
    if not 0.0 <= float(merged["uniform_floor"]) <= 1.0:
        raise DuplidogError(f"pool.uniform_floor: {merged['uniform_floor']} is not between 0 and 1")
    if not 0.0 <= float(merged["augment_fraction"]) <= 1.0:
        raise DuplidogError(f"pool.augment_fraction: {merged['augment_fraction']} is not between 0 and 1")
    if not 0 < float(merged["scale_min"]) <= float(merged["scale_max"]):
        raise DuplidogError(f"pool.scale_min/scale_max: need 0 < {merged['scale_min']} <= {merged['scale_max']}")
    if not 0.0 <= float(merged["colour_gain"]) < 1.0:
        raise DuplidogError(f"pool.colour_gain: {merged['colour_gain']} is not in [0, 1)")
    if merged["colour_to"] not in ("none", "both", "source"):
        raise DuplidogError(f"pool.colour_to: {merged['colour_to']!r} is not 'none', 'both' or 'source'")
    if merged["compressor"] not in ("blosc-zstd", "zstd"):
        raise DuplidogError(f"pool.compressor: {merged['compressor']!r} is not 'blosc-zstd' or 'zstd'")
    for key in ("tiles_per_keyframe", "max_attempts", "shard_tiles"):
        if int(merged[key]) < 1:
            raise DuplidogError(f"pool.{key}: {merged[key]} must be at least 1")
    return merged


def edge_margin(settings: dict) -> int:
    """Pixels kept clear of the frame edge: none when edge tiles are allowed, else the context border
    (so the tile's context, too, is picture rather than the frame's edge)."""
    return 0 if settings["include_edges"] else int(settings["border"])


def _training_rows(manifest_path: str | os.PathLike) -> list[dict]:
    manifest = read_manifest(manifest_path)
    missing = {"frame", "role", "source", "target"} - set(manifest.columns)
    if missing:
        raise DuplidogError(f"{manifest_path}: manifest lacks column(s) {', '.join(sorted(missing))}")
    rows = manifest[manifest["role"] == "train"].sort_values("frame").to_dict("records")
    if not rows:
        raise DuplidogError(f"{manifest_path}: no training keyframes (no row with role 'train')")
    for row in rows:
        if not str(row["target"]).strip():
            raise DuplidogError(f"{manifest_path}: training keyframe {row['frame']} has no target path")
    return rows


def _read_keyframe(row: dict, plan: Plan, settings: dict) -> tuple[np.ndarray, np.ndarray]:
    """Scene-value source and target of one keyframe, (H, W, C) float32, checked for size and NaN."""
    policy = plan.nonfinite
    source = imageio.check_finite(imageio.read_pixels(row["source"], plan.input_channels), row["source"], policy)
    target = imageio.check_finite(imageio.read_pixels(row["target"], plan.output_channels), row["target"], policy)
    # In the plan's colour space (ingest refused or allowed a plate or keyframe in another one).
    source = plan.to_working(source, plan.input_channels, "plate", row["source"])
    target = plan.to_working(target, plan.output_channels, "target", row["target"])
    scale = plan.scale
    if target.shape[:2] != (scale * source.shape[0], scale * source.shape[1]):
        raise DuplidogError(
            f"{row['target']}: keyframe {row['frame']} is {target.shape[1]}x{target.shape[0]}, its source "
            f"{row['source']} is {source.shape[1]}x{source.shape[0]}"
            + (f" (model.scale {scale} wants {scale * source.shape[1]}x{scale * source.shape[0]})" if scale > 1 else "")
        )
    tile, margin = int(settings["tile_size"]), edge_margin(settings)
    need = tile + 2 * margin
    if min(source.shape[:2]) < need:
        raise DuplidogError(
            f"{row['source']}: keyframe {row['frame']} is {source.shape[1]}x{source.shape[0]}, smaller than a "
            f"{tile}-pixel tile{' with a ' + str(margin) + '-pixel edge margin' if margin else ''} "
            f"(lower pool.tile_size)"
        )
    return source, target


def read_neighbours(frame: int, plan: Plan, source: np.ndarray) -> np.ndarray:
    """The keyframe's source ``source`` (H, W, C scene values) with its neighbour plate frames stacked
    after it (``duplidog.temporal``), each read and checked like it; itself when the plan reads one frame."""
    n = plan.temporal_frames
    if n == 0:
        return source
    pattern = FramePattern(plan.source)
    policy = plan.nonfinite

    def read(number: int) -> np.ndarray:
        if number == frame:
            return source
        path = pattern.path(number)
        pixels = imageio.check_finite(imageio.read_pixels(path, plan.input_channels), path, policy)
        pixels = plan.to_working(pixels, plan.input_channels, "plate", path)
        if pixels.shape != source.shape:
            raise DuplidogError(f"{path}: neighbour frame {number} is {pixels.shape[1]}x{pixels.shape[0]}, its "
                                f"keyframe {frame} {source.shape[1]}x{source.shape[0]}")
        return pixels

    return temporal.stacked_frame(frame, n, plan.ends, read)


def block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """An (sH, sW, C) image averaged over ``factor`` x ``factor`` blocks: (H, W, C)."""
    if factor == 1:
        return image
    height, width = image.shape[0] // factor, image.shape[1] // factor
    return image.reshape(height, factor, width, factor, -1).mean(axis=(1, 3), dtype=np.float32)


def _tiles_of_keyframe(
    frame: int,
    source: np.ndarray,
    target: np.ndarray,
    plan: Plan,
    settings: dict,
    seed: int,
    writer: pool_store.TileWriter,
) -> dict[str, int]:
    """Draw, cut, augment and queue one keyframe's tiles; returns its counts."""
    space = plan.colorspace
    source_names, target_names = list(plan.input_channels), list(plan.output_channels)
    # A temporal shot's source is the keyframe with its neighbours stacked: each frame's channels alike.
    stacked_names = temporal.stacked_names(source_names, plan.temporal_frames)
    channels = len(source_names)
    tile, border, margin = int(settings["tile_size"]), int(settings["border"]), edge_margin(settings)
    rng = np.random.default_rng([seed, frame])

    def encode_source(x: np.ndarray) -> np.ndarray:
        return colour.encode(x, space, stacked_names)

    def encode_target(x: np.ndarray) -> np.ndarray:
        return colour.encode(x, space, target_names)

    source_ws = np.asarray(encode_source(source), dtype=np.float32)
    target_ws = np.asarray(encode_target(target), dtype=np.float32)
    s = plan.scale  # upscaling: target tiles are s times the source tiles' size and position
    # Where the fix changes most, judged at the source's size (an upscaled target averaged down to it).
    # Where tiles go is decided on the keyframe itself (a temporal source's first channels).
    keyframe_ws = source_ws[:, :, :channels]
    change = sampling.change_map(keyframe_ws, block_mean(target_ws, s), source_names, target_names)
    if settings["change_measure"] == "area":
        change = sampling.changed_area(change)
    detail = sampling.gradient_magnitude(keyframe_ws)
    weights = sampling.pixel_weights(
        change, detail, float(settings["change_weight"]), float(settings["detail_weight"]),
        float(settings["uniform_floor"]),
    )
    sampler = sampling.make_sampler(settings["sampler"], weights)
    activity = sampling.BoxMeans(change + detail)
    del weights
    positions, redraws, given_up = sampling.draw_tile_positions(
        sampler, activity, rng, int(settings["tiles_per_keyframe"]), source.shape[:2], tile, border, margin,
        float(settings["detail_threshold"]), int(settings["max_attempts"]),
    )
    count = len(positions)
    augmented = np.zeros(count, dtype=bool)
    augmented[rng.permutation(count)[: int(round(float(settings["augment_fraction"]) * count))]] = True
    pairs = augment.shared_channels(source_names, target_names)

    for (y, x), is_augmented in zip(positions.tolist(), augmented.tolist()):
        if is_augmented:
            choice = augment.draw_augmentation(rng, settings, channels)
            source_tile, target_tile, _ = augment.augmented_tile(
                source, target, y, x, tile, margin, choice, pairs, settings["colour_to"], (encode_source, encode_target), rng,
                s,
            )
        else:
            source_tile = source_ws[y : y + tile, x : x + tile]
            target_tile = target_ws[s * y : s * (y + tile), s * x : s * (x + tile)]
        writer.add(source_tile.transpose(2, 0, 1), target_tile.transpose(2, 0, 1), frame, y, x, is_augmented)
    return {"tiles": count, "augmented": int(augmented.sum()), "redraws": redraws, "flat_skipped": given_up}


def build_pool(
    manifest_path: str | os.PathLike,
    plan_path: str | os.PathLike,
    pool_path: str | os.PathLike,
    settings: dict | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Build ``pool_path`` (a Zarr v3 group) from the training keyframes in the manifest; returns statistics.

    ``settings`` is the ``pool`` section of the shot config (missing keys take their defaults).
    Validation keyframes are left out: they must stay unseen for validation to mean anything.
    """
    started = time.perf_counter()
    settings = pool_settings(settings)
    plan = read_plan(plan_path)
    rows = _training_rows(manifest_path)
    tile = int(settings["tile_size"])
    source_names, target_names = list(plan.input_channels), list(plan.output_channels)
    frames = temporal.frame_count(plan.temporal_frames)  # stacked in each source tile
    capacity = len(rows) * int(settings["tiles_per_keyframe"])
    attributes = {
        "duplidog_pool": pool_store.POOL_FORMAT,
        "seed": int(seed),
        "tile_size": tile,
        "border": int(settings["border"]),
        "scale": plan.scale,  # target tiles are this many times tile_size (and border)
        # source tiles carry 2N + 1 frames' channels, the keyframe's first (duplidog.temporal)
        "temporal_frames": plan.temporal_frames,
        "source_channels": source_names,
        "target_channels": target_names,
        "colorspace": plan.colorspace,
        "frames": [int(r["frame"]) for r in rows],
        "sampling": {k: settings[k] for k in SAMPLING_KEYS},
        "augmentation": {k: settings[k] for k in AUGMENTATION_KEYS},
        "storage": {k: settings[k] for k in STORAGE_KEYS},
    }
    pool_path = Path(pool_path)
    per_keyframe: dict[str, dict[str, int]] = {}
    with atomic_path(pool_path) as tmp:
        writer = pool_store.TileWriter(
            tmp, capacity, len(source_names) * frames, len(target_names), tile, int(settings["shard_tiles"]),
            pool_store.compressor(settings), attributes, target_scale=plan.scale,
            range_channels=len(source_names) if frames > 1 else None,
        )
        for row in rows:
            frame = int(row["frame"])
            source, target = _read_keyframe(row, plan, settings)
            source = read_neighbours(frame, plan, source)
            counts = _tiles_of_keyframe(frame, source, target, plan, settings, seed, writer)
            per_keyframe[str(frame)] = counts
            log.info(
                "pool: keyframe %d: %d tiles (%d augmented), %d flat redraws, %d flat tiles given up",
                frame, counts["tiles"], counts["augmented"], counts["redraws"], counts["flat_skipped"],
            )
            if counts["tiles"] == 0:
                log.warning("pool: keyframe %d gave no tiles: all of it is flatter than pool.detail_threshold", frame)
            del source, target
        tiles = writer.close()
        if tiles == 0:
            raise DuplidogError(
                f"{manifest_path}: no tiles: every training keyframe is flatter than pool.detail_threshold "
                f"({settings['detail_threshold']})"
            )
        statistics = {
            "tiles": tiles,
            "augmented": sum(c["augmented"] for c in per_keyframe.values()),
            "flat_skipped": sum(c["flat_skipped"] for c in per_keyframe.values()),
            "redraws": sum(c["redraws"] for c in per_keyframe.values()),
            "tiles_per_keyframe": {f: c["tiles"] for f, c in per_keyframe.items()},
            "bytes": pool_store.bytes_on_disk(tmp),
            "uncompressed_bytes": (tiles * (len(source_names) * frames + len(target_names) * plan.scale ** 2)
                                   * tile * tile * 2),
            "seconds": round(time.perf_counter() - started, 3),
        }
        writer.group.attrs.update({"content_digest": writer.digest.hexdigest(), "statistics": statistics})
    log.info(
        "pool: %d tiles (%d augmented) from %d keyframes, %.1f MB on disk (%.2fx compression), %.1f s -> %s",
        tiles, statistics["augmented"], len(rows), statistics["bytes"] / 1e6,
        statistics["uncompressed_bytes"] / max(statistics["bytes"], 1), statistics["seconds"], pool_path,
    )
    return {**statistics, "path": str(pool_path)}
