"""Training batches from the tile pool: which tiles, in which order, and how they reach the device.

Which tiles: an epoch is a random subset of the pool (``epoch_fraction`` of it), drawn without
replacement, and batches walk through it. Which subset, which order and which flips/turns a batch gets
are pure functions of (seed, batch number): numpy generators seeded with ``[seed, epoch]`` and
``[seed, batch]``. Resuming therefore needs only the batch number, and a streamed run and an
in-memory run see exactly the same batches.

How they arrive, chosen per run:

* **on device** -- when the pool fits the memory budget (a share of free GPU memory, or of free RAM
  when training on the CPU) it is read once into two float16 tensors on the device and batches are
  gathered there: no per-step I/O at all;
* **streamed** -- otherwise a ``DataLoader`` whose workers (``spawn`` start method: zarr's event-loop
  thread and ``fork`` have deadlocked together) each open the Zarr arrays lazily, on first use in the
  worker, and read whole batches (one chunk per tile) ahead of the training loop. Workers only read:
  the indices come from the main process and augmentation runs on the device, so the worker count
  cannot change the result. ``num_workers: 0`` reads in the main process.

The dihedral augmentation (flips and 90-degree turns, applied identically to source and target) is
cheap extra variety on top of the pool's own augmentation; it suits every duplidog task since none of
them has a preferred direction in the frame. Turn it off with ``augment_dihedral: false``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import numpy as np
import torch

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
    """Tiles ``indices`` (any order, repeats allowed) of a Zarr array, in one orthogonal read."""
    unique, inverse = np.unique(indices, return_inverse=True)
    return np.asarray(array.oindex[unique])[inverse]


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
    """Bytes the pool may occupy on ``device``: a share of what is free there now."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * fraction)
    if device.type == "mps":
        return int((torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory()) * fraction)
    try:
        import psutil

        available = psutil.virtual_memory().available
    except ImportError:  # Linux without psutil
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return int(available * fraction)


def _to_device(source: torch.Tensor, target: torch.Tensor, device: torch.device) -> Batch:
    pin = device.type == "cuda"
    if pin:
        source, target = source.pin_memory(), target.pin_memory()
    return (source.to(device, non_blocking=pin).float(), target.to(device, non_blocking=pin).float())


class DeviceBatches:
    """The whole pool in two float16 tensors on the training device; batches gathered in place."""

    mode = "on device"

    def __init__(self, group, plan: EpochPlan, device: torch.device):
        self.plan = plan
        self.device = device
        self.source = torch.from_numpy(np.asarray(group["source"][...])).to(device)
        self.target = torch.from_numpy(np.asarray(group["target"][...])).to(device)

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


class PoolBatchReader(torch.utils.data.Dataset):
    """Item ``b`` = the tiles of batch ``b`` read from the pool (float16 CPU tensors).

    Picklable (it holds only a path and the plan's numbers), so spawned workers rebuild it and open
    the Zarr arrays lazily, once per worker, on the first read.
    """

    def __init__(self, pool_path: str, plan: EpochPlan):
        self.pool_path = str(pool_path)
        self.plan = plan
        self._arrays = None

    def __len__(self) -> int:  # the sampler decides; this is only an upper bound
        return 2**62

    def _open(self):
        if self._arrays is None:
            from duplidog.pool import open_pool

            group = open_pool(self.pool_path)
            self._arrays = (group["source"], group["target"])
        return self._arrays

    def __getitem__(self, batch: int) -> Tuple[torch.Tensor, torch.Tensor]:
        source, target = self._open()
        indices = self.plan.indices(batch)
        return torch.from_numpy(read_tiles(source, indices)), torch.from_numpy(read_tiles(target, indices))

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_arrays"] = None
        return state


def _quiet_worker(_worker_id: int) -> None:
    """Workers leave SIGINT/SIGTERM/SIGHUP to the main process, which checkpoints and then stops them."""
    from duplidog.train.loop import StopRequest

    for signum in StopRequest.SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    torch.set_num_threads(1)


class _BatchNumbers(torch.utils.data.Sampler):
    def __init__(self, start: int):
        self.start = start

    def __iter__(self):
        batch = self.start
        while True:
            yield batch
            batch += 1


@contextlib.contextmanager
def _main_module_hidden():
    """Keep spawned workers from re-running the main script.

    ``spawn`` children normally re-import ``__main__`` (a Snakemake ``script:`` file, a user's
    script) so its functions can be unpickled; a script without an ``if __name__ == "__main__"``
    guard would then start training again inside every worker. The workers need nothing from
    ``__main__`` (the reader and the init function live in this module), so the main module's file
    and spec are hidden while the workers start.
    """
    main = sys.modules.get("__main__")
    saved = {name: main.__dict__[name] for name in ("__file__", "__spec__") if main is not None and name in main.__dict__}
    try:
        if main is not None:
            main.__dict__.pop("__file__", None)
            main.__spec__ = None
        yield
    finally:
        if main is not None:
            main.__dict__.pop("__spec__", None)
            main.__dict__.update(saved)


class StreamedBatches:
    """Batches read from the Zarr pool by background workers, ``prefetch`` batches ahead per worker."""

    mode = "streamed"

    def __init__(self, pool_path: str, plan: EpochPlan, device: torch.device, num_workers: int, prefetch: int):
        self.plan = plan
        self.device = device
        self.num_workers = int(num_workers)
        self.prefetch = int(prefetch)
        self.reader = PoolBatchReader(pool_path, plan)
        self._loader_iter = None

    def batches(self, start: int) -> Iterator[Batch]:
        if self.num_workers > 0:
            loader = torch.utils.data.DataLoader(
                self.reader, batch_size=None, sampler=_BatchNumbers(start), num_workers=self.num_workers,
                multiprocessing_context="spawn", prefetch_factor=max(1, self.prefetch),
                worker_init_fn=_quiet_worker, persistent_workers=False, pin_memory=False,
                generator=torch.Generator(),  # worker seeds must not draw from the global generator
            )
            with _main_module_hidden():
                self._loader_iter = iter(loader)
            source_iter = self._loader_iter
        else:
            source_iter = (self.reader[b] for b in _BatchNumbers(start))
        batch = start
        for source, target in source_iter:
            source, target = _to_device(source, target, self.device)
            yield augment_batch(source, target, self.plan.augment_codes(batch))
            batch += 1

    def close(self) -> None:
        """Stop the workers now rather than at garbage collection."""
        iterator, self._loader_iter = self._loader_iter, None
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()


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
    else:
        source = StreamedBatches(pool_path, plan, device, settings["num_workers"], settings["prefetch_batches"])
    log.info("training data %s: %s", choice.mode, choice.reason)
    return source, choice
