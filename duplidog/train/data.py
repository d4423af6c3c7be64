"""Training batches from the tile pool: which tiles, in which order, and how they reach the device.

Which tiles: an epoch is a random subset of the pool (``epoch_fraction`` of it), drawn without
replacement, and batches walk through it. Which subset, which order and which flips/turns a batch gets
are pure functions of (seed, batch number): numpy generators seeded with ``[seed, epoch]`` and
``[seed, batch]``. Resuming therefore needs only the batch number, and a streamed run and an
in-memory run see exactly the same batches.

How they arrive, chosen per run:

* **on device** -- when the pool fits the memory budget (a share of free GPU memory, or of free RAM
  when training on the CPU) it is decoded once, before the first step, into two float16 tensors on
  the device, and batches are gathered there: no reading or decoding while training;
* **streamed** -- otherwise background threads read each batch's tiles straight from the pool's
  shard files (``duplidog.core.pool_store.tile_reader``) ahead of the training loop, into page-locked memory
  when training on a GPU so the copy overlaps the step. The reading threads only read: the indices
  are the plan's and augmentation runs on the device, so the thread count cannot change the result.
  ``num_workers: 0`` reads in the training thread.

The dihedral augmentation (flips and 90-degree turns, applied identically to source and target) is
cheap extra variety on top of the pool's own augmentation; it suits every duplidog task since none of
them has a preferred direction in the frame. Turn it off with ``augment_dihedral: false``.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import numpy as np
import torch

from duplidog.core.runtime import free_bytes

log = logging.getLogger(__name__)

Batch = Tuple[torch.Tensor, torch.Tensor]  # (source, target), float32 on the training device


class EpochPlan:
    """Tile indices and augmentation codes of every batch, as pure functions of the batch number."""

    def __init__(self, pool_size: int, batch_size: int, epoch_fraction: float, seed: int, augment: bool = True):
        if pool_size < 1:
            raise ValueError("the tile pool is empty")
        self.pool_size = int(pool_size)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.augment = bool(augment)
        self.epoch_tiles = max(self.batch_size, int(round(self.pool_size * float(epoch_fraction))))
        self.batches_per_epoch = max(1, self.epoch_tiles // self.batch_size)
        self._cached_epoch: Optional[int] = None
        self._cached_order: Optional[np.ndarray] = None

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The tiles of ``epoch`` in training order (repeats only if the pool is smaller than a batch)."""
        if self._cached_epoch != epoch:
            rng = np.random.Generator(np.random.PCG64([self.seed, 0, epoch]))
            parts, needed = [], self.epoch_tiles
            while needed > 0:
                take = min(needed, self.pool_size)
                parts.append(rng.permutation(self.pool_size)[:take])
                needed -= take
            self._cached_order = np.concatenate(parts).astype(np.int64)
            self._cached_epoch = epoch
        return self._cached_order

    def indices(self, batch: int) -> np.ndarray:
        epoch, k = divmod(int(batch), self.batches_per_epoch)
        return self.epoch_order(epoch)[k * self.batch_size: (k + 1) * self.batch_size]

    def augment_codes(self, batch: int) -> np.ndarray:
        """Per tile 0..7: bit 0 flips x, bit 1 flips y, bit 2 swaps x and y (with flips: all 8 turns)."""
        if not self.augment:
            return np.zeros(self.batch_size, dtype=np.int64)
        rng = np.random.Generator(np.random.PCG64([self.seed, 1, int(batch)]))
        return rng.integers(0, 8, size=self.batch_size, dtype=np.int64)

    def epoch_of(self, batch: int) -> int:
        return int(batch) // self.batches_per_epoch


def dihedral(x: torch.Tensor, code: int) -> torch.Tensor:
    """One of the 8 symmetries of the square applied to (..., H, W) tiles."""
    if code & 4:
        x = x.transpose(-1, -2)
    if code & 2:
        x = x.flip(-2)
    if code & 1:
        x = x.flip(-1)
    return x


def augment_batch(source: torch.Tensor, target: torch.Tensor, codes: np.ndarray) -> Batch:
    """Apply each tile's dihedral code to its source and target alike."""
    if not codes.any():
        return source, target
    source, target = source.clone(), target.clone()
    for code in np.unique(codes):
        if code == 0:
            continue
        rows = torch.from_numpy(np.flatnonzero(codes == code)).to(source.device)
        source[rows] = dihedral(source[rows], int(code))
        target[rows] = dihedral(target[rows], int(code))
    return source, target


def read_tiles(array, indices: np.ndarray) -> np.ndarray:
    """Tiles ``indices`` (any order, repeats allowed) of a pool array, by the pool's fastest reader."""
    from duplidog.core.pool_store import tile_reader

    return tile_reader(array).read(indices)


def evenly_spaced(n_tiles: int, count: int) -> np.ndarray:
    """Up to ``count`` tile indices spread evenly over ``n_tiles`` (a deterministic sample)."""
    return np.unique(np.linspace(0, n_tiles - 1, min(count, n_tiles)).round().astype(np.int64))


def value_range(group, max_tiles: int = 512, margin: float = 0.02) -> list[float]:
    """[low, high] of a pool's source values, widened by ``margin`` of the span on each side.

    The extremes the pool recorded when it was written; a pool written before it recorded them gives
    those of up to ``max_tiles`` evenly spaced tiles (a deterministic sample: a resumed run gets the
    same range).
    """
    recorded = group.attrs.get("source_range")
    if recorded:
        low, high = float(recorded[0]), float(recorded[1])
    else:
        values = read_tiles(group["source"], evenly_spaced(group["source"].shape[0], max_tiles)).astype(np.float32)
        low, high = float(np.min(values)), float(np.max(values))
    pad = max(margin * (high - low), 1e-3)
    return [low - pad, high + pad]


def pool_bytes(group) -> int:
    return sum(int(np.prod(group[name].shape)) * group[name].dtype.itemsize for name in ("source", "target"))


def memory_budget(device: torch.device, fraction: float) -> int:
    """Bytes the pool may occupy on ``device``: a share of what is free there now, not counting what
    the allocator holds (the pool stays resident beside the run's own tensors); 0 where unknown."""
    return int((free_bytes(device, count_cached=False) or 0) * fraction)


def _to_device(source: torch.Tensor, target: torch.Tensor, device: torch.device) -> Batch:
    pinned = source.device.type == "cpu" and device.type == "cuda" and source.is_pinned()
    return (source.to(device, non_blocking=pinned).float(), target.to(device, non_blocking=pinned).float())


def _empty(shape: tuple, dtype: np.dtype, device: torch.device, pin: bool = False) -> torch.Tensor:
    """A tensor to decode into; page-locked when it is bound for a GPU (the copy then runs asynchronously)."""
    dtype = torch.from_numpy(np.empty(0, dtype=dtype)).dtype
    return torch.empty(shape, dtype=dtype, device=device, pin_memory=pin)


def load_pool(group, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """The whole pool as two float16 tensors on ``device``, decoded a shard at a time on a thread per core.

    On the CPU each shard decodes straight into place; for a GPU through one shard of host memory per
    thread, so a pool that fits the device but not the host's RAM still loads.
    """
    from duplidog.core.pool_store import tile_reader

    tensors = []
    with ThreadPoolExecutor(max(1, os.cpu_count() or 1), thread_name_prefix="duplidog-pool-load") as threads:
        for name in ("source", "target"):
            reader = tile_reader(group[name])
            tensor = _empty(reader.shape, reader.dtype, device)

            def fill(first: int, stop: int) -> None:
                rows = np.arange(first, stop)
                if tensor.device.type == "cpu":
                    reader.read(rows, out=tensor.numpy()[first:stop])
                else:
                    tensor[first:stop].copy_(torch.from_numpy(reader.read(rows)))

            step = int(getattr(reader, "shard_tiles", 128))
            starts = range(0, reader.shape[0], step)
            list(threads.map(fill, starts, [min(a + step, reader.shape[0]) for a in starts]))
            tensors.append(tensor)
    return tensors[0], tensors[1]


class DeviceBatches:
    """The whole pool in two float16 tensors on the training device; batches gathered in place."""

    mode = "on device"

    def __init__(self, group, plan: EpochPlan, device: torch.device):
        self.plan = plan
        self.device = device
        started = time.perf_counter()
        self.source, self.target = load_pool(group, device)
        self.load_seconds = time.perf_counter() - started

    def batches(self, start: int) -> Iterator[Batch]:
        batch = start
        while True:
            rows = torch.from_numpy(self.plan.indices(batch)).to(self.device)
            source = self.source.index_select(0, rows).float()
            target = self.target.index_select(0, rows).float()
            yield augment_batch(source, target, self.plan.augment_codes(batch))
            batch += 1

    def close(self) -> None:
        pass


class StreamedBatches:
    """Batches read from the pool's shard files by ``num_workers`` threads, ``prefetch`` batches ahead each.

    Threads rather than processes: reading a batch is a few file reads and decodes that hold no GIL,
    so a thread keeps up without a process's start-up (a Python interpreter importing torch) and
    without copying every tile between processes. ``num_workers: 0`` reads in the training thread.
    """

    mode = "streamed"

    def __init__(self, pool_path: str, plan: EpochPlan, device: torch.device, num_workers: int, prefetch: int):
        from duplidog.core.pool_store import open_pool, tile_reader

        group = open_pool(pool_path)
        self.plan = plan
        self.device = device
        self.num_workers = int(num_workers)
        self.prefetch = max(1, int(prefetch))
        self.readers = (tile_reader(group["source"]), tile_reader(group["target"]))
        self.reader_kind = self.readers[0].kind
        self._threads: list[ThreadPoolExecutor] = []

    def read(self, batch: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """The tiles of ``batch`` as float16 CPU tensors (page-locked when training on a GPU)."""
        indices = self.plan.indices(batch)
        tiles = []
        for reader in self.readers:
            tensor = _empty((len(indices), *reader.shape[1:]), reader.dtype, torch.device("cpu"),
                            pin=self.device.type == "cuda")
            reader.read(indices, out=tensor.numpy())
            tiles.append(tensor)
        return tiles[0], tiles[1]

    def _read_ahead(self, start: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        threads = ThreadPoolExecutor(self.num_workers, thread_name_prefix="duplidog-pool-read")
        self._threads.append(threads)
        pending: collections.deque = collections.deque()
        batch = start
        try:
            while True:
                while len(pending) < self.num_workers * self.prefetch:
                    pending.append(threads.submit(self.read, batch))
                    batch += 1
                yield pending.popleft().result()
        finally:
            threads.shutdown(wait=True, cancel_futures=True)

    def batches(self, start: int) -> Iterator[Batch]:
        if self.num_workers > 0:
            reads = self._read_ahead(start)
        else:
            reads = (self.read(batch) for batch in itertools.count(start))
        for batch, (source, target) in enumerate(reads, start):
            source, target = _to_device(source, target, self.device)
            yield augment_batch(source, target, self.plan.augment_codes(batch))

    def close(self) -> None:
        """Stop the reading threads now (a read under way finishes first)."""
        threads, self._threads = self._threads, []
        for executor in threads:
            executor.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True)
class DataChoice:
    mode: str
    reason: str


def choose_data_path(group, device: torch.device, setting: str, memory_fraction: float) -> DataChoice:
    """On device when the pool fits ``memory_fraction`` of free memory there (``auto``), or as told."""
    size = pool_bytes(group)
    budget = memory_budget(device, memory_fraction)
    if setting == "always":
        return DataChoice("on device", f"train.data_on_device is 'always' (pool {size / 2**20:.1f} MiB)")
    if setting == "never":
        return DataChoice("streamed", "train.data_on_device is 'never'")
    if size <= budget:
        return DataChoice("on device", f"pool {size / 2**20:.1f} MiB fits the {budget / 2**20:.0f} MiB budget on {device}")
    return DataChoice("streamed", f"pool {size / 2**20:.1f} MiB exceeds the {budget / 2**20:.0f} MiB budget on {device}")


def make_batches(pool_path: str, group, plan: EpochPlan, device: torch.device, settings: dict):
    """The batch source for this run (``DeviceBatches`` or ``StreamedBatches``) and why it was chosen."""
    choice = choose_data_path(group, device, settings["data_on_device"], float(settings["device_memory_fraction"]))
    if choice.mode == "on device":
        source = DeviceBatches(group, plan, device)
        how = f"decoded in {source.load_seconds:.2f} s"
    else:
        source = StreamedBatches(pool_path, plan, device, settings["num_workers"], settings["prefetch_batches"])
        how = (f"{source.num_workers} reading thread(s), {source.prefetch} batch(es) ahead each, "
               f"read through {source.reader_kind}")
    log.info("training data %s: %s; %s", choice.mode, choice.reason, how)
    return source, choice
