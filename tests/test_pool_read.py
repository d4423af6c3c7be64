"""Reading pool tiles by index: straight from the shard files, and through zarr for any other layout.

Each test writes a small pool (8-pixel tiles, shards of 4 tiles, a partial last shard) with the pool's
own ``TileWriter`` and compares every read with zarr's own orthogonal read of the same array.
"""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from duplidog.errors import DuplidogError
from duplidog.core import pool_store
from duplidog.core.pool_store import open_pool, tile_reader

TILES, SHARD, T = 10, 4, 8


def write_pool(path, compressor: str = "blosc-zstd", zero_tiles=()) -> zarr.Group:
    rng = np.random.default_rng(0)
    codec = pool_store.compressor({"compressor": compressor, "zstd_level": 3})
    writer = pool_store.TileWriter(path, TILES, 3, 1, T, SHARD, codec, {"duplidog_pool": pool_store.POOL_FORMAT})
    for i in range(TILES):
        source = rng.random((3, T, T), dtype=np.float32)
        target = source[:1] * 0.5
        if i in zero_tiles:  # equal to the fill value: zarr stores no chunk for it
            source, target = np.zeros_like(source), np.zeros_like(target)
        writer.add(source, target, frame=1001, y=0, x=i, augmented=False)
    writer.close()
    return open_pool(path)


@pytest.mark.parametrize("compressor", ["blosc-zstd", "zstd"])
def test_shard_reads_equal_zarr_reads(tmp_path, compressor):
    group = write_pool(tmp_path / "pool.zarr", compressor, zero_tiles=(5,))
    indices = np.array([9, 0, 5, 3, 3, 8, 1])  # any order, repeats, the partial last shard, an unstored tile
    for name in ("source", "target"):
        reader = tile_reader(group[name])
        assert reader.kind == "shard files"
        expected = group[name].oindex[np.unique(indices)][np.unique(indices, return_inverse=True)[1]]
        assert np.array_equal(reader.read(indices), expected)
        out = np.full((len(indices), *group[name].shape[1:]), np.nan, dtype=np.float16)
        assert reader.read(indices, out=out) is out and np.array_equal(out, expected)
        assert np.array_equal(reader.read(np.arange(TILES)), group[name][...])
    assert not reader.read(np.array([5])).any()
    with pytest.raises(IndexError):
        reader.read(np.array([TILES]))


def test_a_shard_of_fill_values_reads_as_zarr_does(tmp_path):
    group = write_pool(tmp_path / "pool.zarr", zero_tiles=(4, 5, 6, 7))
    reader = tile_reader(group["source"])
    assert np.array_equal(reader.read(np.arange(TILES)), group["source"][...])
    assert not reader.read(np.arange(4, 8)).any()


def test_another_layout_is_read_through_zarr(tmp_path):
    group = zarr.create_group(str(tmp_path / "plain.zarr"), zarr_format=3)
    array = group.create_array("source", shape=(6, 2, T, T), dtype="float16", chunks=(1, 2, T, T))
    array[...] = np.random.default_rng(1).random((6, 2, T, T)).astype(np.float16)
    reader = tile_reader(array)
    assert reader.kind == "zarr"
    assert np.array_equal(reader.read(np.array([5, 0, 5])), array[...][[5, 0, 5]])


def test_damaged_shards_name_the_file(tmp_path):
    group = write_pool(tmp_path / "pool.zarr")
    reader = tile_reader(group["source"])
    path = reader.shard_path(1)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # inside the shard's index: its checksum no longer matches
    path.write_bytes(bytes(data))
    with pytest.raises(DuplidogError, match="damaged pool shard") as error:
        tile_reader(group["source"]).read(np.array([5]))
    assert str(path) in str(error.value)

    path = reader.shard_path(0)
    data = bytearray(path.read_bytes())
    offset, nbytes = np.frombuffer(bytes(data[-(16 * SHARD + 4):-4]), dtype="<u8").reshape(SHARD, 2)[2]
    data[int(offset): int(offset + nbytes)] = b"\0" * int(nbytes)  # a tile's bytes overwritten
    path.write_bytes(bytes(data))
    with pytest.raises(DuplidogError, match="damaged pool tile 2") as error:
        tile_reader(group["source"]).read(np.array([2]))
    assert str(path) in str(error.value)

