"""The pool on disk: one Zarr v3 group, laid out for random access by training.

Layout (N tiles of T x T pixels, working-space values)::

    pool.zarr/
      source     (N, Cin,  T, T) float16   chunk = one tile, shard = ``shard_tiles`` tiles, zstd
      target     (N, Cout, T, T) float16   same
      frame      (N,)   int32   keyframe each tile came from
      position   (N, 2) int32   (y, x) of the tile's top-left corner in that keyframe's data window
      augmented  (N,)   bool
      zarr.json  group attributes: settings, seed, tile_size, border, channels, colour space,
                 content digest, statistics

Why this shape: training reads random tiles, so a tile is one chunk (one read, one decompression);
writing and the file system want few large files, so chunks are packed into shards. Float16 halves the
size and is what mixed-precision training consumes; the working space keeps values near 0..1, where
float16 has ample precision (unlike raw scene-linear highlights).

``TileWriter`` keeps at most one shard of tiles in memory and writes whole shards, so a pool many times
larger than RAM builds in bounded memory. ``pool_fingerprint`` hashes the attributes (which include a
digest of every tile written) so training can refuse to resume a checkpoint made from another pool.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from duplidog.errors import DuplidogError

#: Bumped when the layout changes; readers check it.
POOL_FORMAT = 1
#: Attributes that describe one build rather than the pool's content (left out of the fingerprint).
VOLATILE_ATTRIBUTES = ("statistics",)


def compressor(settings: dict) -> Any:
    """zstd through Blosc with byte shuffle (float16 high and low bytes compressed apart), or plain zstd."""
    if settings["compressor"] == "blosc-zstd":
        return BloscCodec(cname="zstd", clevel=int(settings["zstd_level"]), shuffle="shuffle", typesize=2)
    return ZstdCodec(level=int(settings["zstd_level"]))


class TileWriter:
    """Append tiles to a new pool group, one shard at a time, and hash everything written."""

    def __init__(
        self,
        path: str | os.PathLike,
        capacity: int,
        source_channels: int,
        target_channels: int,
        tile_size: int,
        shard_tiles: int,
        codec: Any,
        attributes: dict,
    ):
        self.group = zarr.create_group(str(path), zarr_format=3, attributes=attributes)
        self.shard_tiles = shard_tiles = max(1, min(shard_tiles, capacity))
        t = tile_size

        def tiles(name: str, channels: int) -> zarr.Array:
            return self.group.create_array(
                name,
                shape=(capacity, channels, t, t),
                dtype="float16",
                chunks=(1, channels, t, t),
                shards=(shard_tiles, channels, t, t),
                compressors=codec,
                fill_value=0,
                dimension_names=("tile", "channel", "y", "x"),
            )

        def small(name: str, shape: tuple[int, ...], dtype: str) -> zarr.Array:
            return self.group.create_array(
                name,
                shape=(capacity, *shape),
                dtype=dtype,
                chunks=(shard_tiles, *shape),
                compressors=ZstdCodec(level=3),
                fill_value=0,
            )

        self.arrays = {
            "source": tiles("source", source_channels),
            "target": tiles("target", target_channels),
            "frame": small("frame", (), "int32"),
            "position": small("position", (2,), "int32"),
            "augmented": small("augmented", (), "bool"),
        }
        self.buffers = {
            name: np.zeros((shard_tiles, *array.shape[1:]), dtype=array.dtype) for name, array in self.arrays.items()
        }
        self.filled = 0  # tiles in the buffers
        self.written = 0  # tiles on disk
        self.digest = hashlib.sha256()
        # The source values' extremes, so training reads the range its colour curves span from the
        # attributes instead of decoding the pool a second time on the budget's clock.
        self.source_low, self.source_high = math.inf, -math.inf

    def add(self, source: np.ndarray, target: np.ndarray, frame: int, y: int, x: int, augmented: bool) -> None:
        """Queue one tile ((C, T, T) arrays); a full buffer is written as one shard."""
        i = self.filled
        self.buffers["source"][i] = source
        self.source_low = min(self.source_low, float(np.min(self.buffers["source"][i])))
        self.source_high = max(self.source_high, float(np.max(self.buffers["source"][i])))
        self.buffers["target"][i] = target
        self.buffers["frame"][i] = frame
        self.buffers["position"][i] = (y, x)
        self.buffers["augmented"][i] = augmented
        self.filled += 1
        if self.filled == self.shard_tiles:
            self.flush()

    def flush(self) -> None:
        n, start = self.filled, self.written
        if n == 0:
            return
        for name, array in self.arrays.items():
            block = self.buffers[name][:n]
            array[start : start + n] = block
            self.digest.update(name.encode())
            self.digest.update(np.ascontiguousarray(block).tobytes())
        self.written += n
        self.filled = 0

    def close(self) -> int:
        """Write what is queued and trim the arrays to the tiles actually written; returns that count."""
        self.flush()
        for array in self.arrays.values():
            if array.shape[0] != self.written:
                array.resize((self.written, *array.shape[1:]))
        if self.written:
            self.group.attrs["source_range"] = [self.source_low, self.source_high]
        return self.written


def bytes_on_disk(path: str | os.PathLike) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def open_pool(pool_path: str | os.PathLike) -> zarr.Group:
    """Open a finished pool read-only; a missing or foreign store is a one-line DuplidogError."""
    path = Path(pool_path)
    if not path.is_dir():
        raise DuplidogError(f"{path}: tile pool not found (run the pool step first)")
    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as exc:  # zarr raises several types for a damaged store
        raise DuplidogError(f"{path}: not a readable Zarr group ({exc})") from None
    found = group.attrs.get("duplidog_pool")
    if found != POOL_FORMAT:
        raise DuplidogError(f"{path}: not a duplidog tile pool of format {POOL_FORMAT} (found {found!r})")
    return group


def pool_fingerprint(pool_path: str | os.PathLike) -> str:
    """SHA-256 of the pool's attributes minus build statistics (seconds, bytes).

    The attributes include the settings, seed, channels and a digest of every tile, so two pools
    share a fingerprint exactly when training would see the same data.
    """
    attributes = dict(open_pool(pool_path).attrs)
    for key in VOLATILE_ATTRIBUTES:
        attributes.pop(key, None)
    text = json.dumps(attributes, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()
