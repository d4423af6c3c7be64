"""How training batches reach the device: read ahead by threads, or decoded whole up front.

A small pool (16-pixel tiles, shards of 8 tiles) is written with the pool's own writer; every path
must give exactly the batches of the plan, whatever the number of reading threads.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from duplidog.errors import DuplidogError
from duplidog.core import pool_store
from duplidog.core.pool_store import open_pool, tile_reader
from duplidog.train.data import DeviceBatches, EpochPlan, StreamedBatches, load_pool, make_batches

TILES, SHARD, T = 36, 8, 16


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "pool.zarr"
    rng = np.random.default_rng(0)
    codec = pool_store.compressor({"compressor": "blosc-zstd", "zstd_level": 3})
    writer = pool_store.TileWriter(path, TILES, 3, 3, T, SHARD, codec, {"duplidog_pool": pool_store.POOL_FORMAT})
    for i in range(TILES):
        source = rng.random((3, T, T), dtype=np.float32)
        writer.add(source, source * 0.8 + 0.05, frame=1001, y=0, x=i, augmented=False)
    writer.close()
    return path


def reading_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("duplidog-pool-read")]


def test_load_pool_decodes_every_tile(pool):
    group = open_pool(pool)
    source, target = load_pool(group, torch.device("cpu"))
    assert source.dtype == torch.float16 and source.shape == (TILES, 3, T, T)
    assert np.array_equal(source.numpy(), group["source"][...])
    assert np.array_equal(target.numpy(), group["target"][...])


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_every_thread_count_gives_the_plans_batches(pool, workers):
    group = open_pool(pool)
    plan = EpochPlan(TILES, 5, 0.7, seed=2)
    device = torch.device("cpu")
    expected = DeviceBatches(group, plan, device).batches(start=4)
    streamed = StreamedBatches(str(pool), plan, device, num_workers=workers, prefetch=2)
    assert streamed.reader_kind == "shard files"
    batches = streamed.batches(start=4)
    try:
        for _ in range(2 * plan.batches_per_epoch):  # across an epoch boundary
            (a_src, a_tgt), (b_src, b_tgt) = next(expected), next(batches)
            assert b_src.dtype == torch.float32
            assert torch.equal(a_src, b_src) and torch.equal(a_tgt, b_tgt)
        assert len(reading_threads()) == workers
    finally:
        streamed.close()
    assert not reading_threads()


def test_a_read_error_reaches_the_training_thread(pool, tmp_path):
    import shutil

    broken = tmp_path / "pool.zarr"
    shutil.copytree(pool, broken)
    shard = tile_reader(open_pool(broken)["source"]).shard_path(2)
    shard.write_bytes(shard.read_bytes()[:-8])  # truncated: the index checksum fails
    streamed = StreamedBatches(str(broken), EpochPlan(TILES, 4, 1.0, seed=0), torch.device("cpu"), 2, 2)
    batches = streamed.batches(0)
    try:
        with pytest.raises(DuplidogError, match="damaged pool shard"):
            for _ in range(TILES):  # an epoch reads every tile, so shard 2 comes
                next(batches)
    finally:
        streamed.close()
    assert not reading_threads()


def test_make_batches_follows_the_setting(pool):
    group = open_pool(pool)
    plan = EpochPlan(TILES, 4, 0.5, seed=0)
    settings = {"data_on_device": "never", "device_memory_fraction": 0.5, "num_workers": 1, "prefetch_batches": 2}
    source, choice = make_batches(str(pool), group, plan, torch.device("cpu"), settings)
    assert isinstance(source, StreamedBatches) and choice.mode == "streamed"
    source.close()
    source, choice = make_batches(str(pool), group, plan, torch.device("cpu"), {**settings, "data_on_device": "auto"})
    assert isinstance(source, DeviceBatches) and choice.mode == "on device"


def test_bench_times_the_data_path_alone(pool):
    from duplidog.settings import defaults
    from duplidog.bench.train import bench_train

    config = defaults()
    config["model"] = {"arch": "msrn", "preset": "small",
                       "overrides": {"levels": 2, "stages": 1, "width": 8, "depth": 1, "block": "res"}}
    config["train"].update(batch_size=4, num_workers=1, prefetch_batches=2)
    lines = []
    result = bench_train(str(pool), config, presets=[], steps=2, warmup=0, device="cpu", print_fn=lines.append)
    data = result["data_path"]
    assert data["reader"] == "shard files" and data["num_workers"] == 1 and data["prefetch_batches"] == 2
    assert data["overhead"] > 0 and data["load_s"] > 0 and result["steps_per_s"] == {}
    assert any("overhead x" in line for line in lines)
