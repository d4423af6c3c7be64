"""The pool on disk: one Zarr v3 group, laid out for random access by training.

Layout (N tiles of T x T pixels, working-space values)::

    pool.zarr/
      source     (N, Cin,  T, T) float16   chunk = one tile, shard = ``shard_tiles`` tiles, zstd;
                                           a temporal shot's (``temporal_frames`` N in the attributes)
                                           Cin is the plate's channels times 2N + 1: the keyframe's
                                           own, then its neighbours' (``duplidog.temporal``) at the
                                           same place, augmented alike
      target     (N, Cout, sT, sT) float16 same; s = the shot's upscaling scale (1: same size)
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
larger than RAM builds in bounded memory. ``tile_reader`` reads tiles by index: for the layout above,
straight from the shard files (the shard's index gives each tile's byte range, numcodecs decodes it
without holding the GIL), because zarr's general read path spends far more time in Python per chunk
than the decoding itself takes; any other layout is read through zarr. ``pool_fingerprint`` hashes the attributes (which include a
digest of every tile written) so training can refuse to resume a checkpoint made from another pool.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numcodecs
import zarr
from zarr.codecs import BloscCodec, ZstdCodec
from zarr.storage import LocalStore

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
        target_scale: int = 1,
        range_channels: int | None = None,
    ):
        self.group = zarr.create_group(str(path), zarr_format=3, attributes=attributes)
        self.shard_tiles = shard_tiles = max(1, min(shard_tiles, capacity))

        def tiles(name: str, channels: int, t: int) -> zarr.Array:
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
            "source": tiles("source", source_channels, tile_size),
            # an upscaling shot's targets are target_scale times the source tiles' size
            "target": tiles("target", target_channels, tile_size * target_scale),
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
        # Of the keyframe's own channels only (a temporal pool's neighbours follow them): what the curves read.
        self.range_channels = range_channels

    def add(self, source: np.ndarray, target: np.ndarray, frame: int, y: int, x: int, augmented: bool) -> None:
        """Queue one tile ((C, T, T) arrays); a full buffer is written as one shard."""
        i = self.filled
        self.buffers["source"][i] = source
        own = self.buffers["source"][i][: self.range_channels]
        self.source_low = min(self.source_low, float(np.min(own)))
        self.source_high = max(self.source_high, float(np.max(own)))
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


def pool_temporal_frames(group: zarr.Group) -> int:
    """Neighbour frames on each side a pool's source tiles carry (pools written before them: 0)."""
    return int(group.attrs.get("temporal_frames", 0) or 0)


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


#: Shard index entry of a chunk that was never written (it reads as the fill value).
_MISSING = np.uint64(2**64 - 1)


class ShardTileReader:
    """Tiles of a pool array read straight from its shard files (the layout ``TileWriter`` writes).

    Thread-safe: every read opens the shard files it needs, reads with ``os.pread`` and decodes into
    the caller's array; the only shared state is a cache of shard indexes (16 bytes a tile).
    """

    kind = "shard files"

    def __init__(self, root: Path, array: zarr.Array, shard_tiles: int, codec: Any):
        self.array = array
        self.root = root
        self.shard_tiles = shard_tiles
        self.codec = codec
        self.shape, self.dtype = tuple(array.shape), np.dtype(array.dtype)
        self.fill_value = array.fill_value
        self._indexes: dict[int, np.ndarray] = {}

    def shard_path(self, shard: int) -> Path:
        return self.root / self.array.metadata.encode_chunk_key((shard,) + (0,) * (len(self.shape) - 1))

    def _index(self, shard: int, fd: int, path: Path) -> np.ndarray:
        """(offset, nbytes) of every tile in ``shard``, read from the shard's end and checked (CRC-32C)."""
        index = self._indexes.get(shard)
        if index is None:
            import google_crc32c  # zarr's own dependency for this codec

            size = 16 * self.shard_tiles + 4
            end = os.fstat(fd).st_size
            raw = os.pread(fd, size, end - size) if end >= size else b""
            if len(raw) != size or google_crc32c.value(raw[:-4]) != int.from_bytes(raw[-4:], "little"):
                raise DuplidogError(f"{path}: damaged pool shard (its index does not match its checksum)")
            index = np.frombuffer(raw[:-4], dtype="<u8").reshape(self.shard_tiles, 2)
            self._indexes[shard] = index
        return index

    def read(self, indices: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Tiles ``indices`` (any order, repeats allowed) as one (len, C, T, T) array (into ``out``)."""
        indices = np.asarray(indices, dtype=np.int64)
        if out is None:
            out = np.empty((len(indices), *self.shape[1:]), dtype=self.dtype)
        if len(indices) and (indices.min() < 0 or indices.max() >= self.shape[0]):
            raise IndexError(f"tile index out of range 0..{self.shape[0] - 1}")
        shards = indices // self.shard_tiles
        for shard in np.unique(shards):
            path = self.shard_path(int(shard))
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:  # zarr leaves out a shard whose tiles all equal the fill value
                out[shards == shard] = self.fill_value
                continue
            try:
                index = self._index(int(shard), fd, path)
                for row in np.flatnonzero(shards == shard):
                    offset, nbytes = index[indices[row] % self.shard_tiles]
                    if offset == _MISSING and nbytes == _MISSING:
                        out[row] = self.fill_value
                        continue
                    data = os.pread(fd, int(nbytes), int(offset))
                    try:
                        if len(data) != nbytes:
                            raise ValueError("shorter than its index says")
                        self.codec.decode(data, out=out[row])
                    except Exception as exc:  # numcodecs raises several types for damaged bytes
                        raise DuplidogError(f"{path}: damaged pool tile {int(indices[row])} ({exc})") from None
            finally:
                os.close(fd)
        return out


class ZarrTileReader:
    """Tiles of any Zarr array, through zarr's own read path (one orthogonal read a call)."""

    kind = "zarr"

    def __init__(self, array: zarr.Array):
        self.array = array
        self.shape, self.dtype = tuple(array.shape), np.dtype(array.dtype)

    def read(self, indices: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        unique, inverse = np.unique(np.asarray(indices, dtype=np.int64), return_inverse=True)
        tiles = np.asarray(self.array.oindex[unique])[inverse]
        if out is None:
            return tiles
        out[...] = tiles
        return out


def _shard_codec(array: zarr.Array) -> tuple[int, Any] | None:
    """(tiles per shard, chunk decoder) when ``array`` has ``TileWriter``'s layout, else None."""
    meta = array.metadata.to_dict()
    if meta.get("zarr_format") != 3 or meta.get("storage_transformers") or len(array.shape) < 2:
        return None
    codecs = meta.get("codecs") or []
    if len(codecs) != 1 or codecs[0].get("name") != "sharding_indexed":
        return None
    config = codecs[0]["configuration"]
    shard_shape = list(meta["chunk_grid"]["configuration"]["chunk_shape"])
    if (list(config["chunk_shape"]) != [1, *array.shape[1:]] or shard_shape[1:] != list(array.shape[1:])
            or config.get("index_location", "end") != "end"):
        return None
    little = {"name": "bytes", "configuration": {"endian": "little"}}
    if [dict(c) for c in config.get("index_codecs", [])] != [little, {"name": "crc32c"}]:
        return None
    inner = [dict(c) for c in config.get("codecs", [])]
    if sys.byteorder != "little" or len(inner) != 2 or inner[0] != little:
        return None
    if inner[1]["name"] == "blosc":
        return int(shard_shape[0]), numcodecs.Blosc()  # blosc's header names its own settings
    if inner[1]["name"] == "zstd":
        return int(shard_shape[0]), numcodecs.Zstd()
    return None


def tile_reader(array: zarr.Array) -> ShardTileReader | ZarrTileReader:
    """The fastest reader for ``array``: its shard files when it has the pool's layout on a local disk."""
    store = array.store_path.store
    layout = _shard_codec(array)
    if layout is None or not isinstance(store, LocalStore):
        return ZarrTileReader(array)
    shard_tiles, codec = layout
    return ShardTileReader(Path(store.root) / array.store_path.path, array, shard_tiles, codec)
