"""``duplidog bench train``: what the data path costs, and how fast each preset trains on this device.

Two measurements, both printed as ratios or rates rather than asserted (speed depends on the machine):

* **data-path overhead** = seconds per step when every batch is read from the pool by the streaming
  threads (the path for a pool too big for memory), divided by seconds per step for the very same
  batches already in memory; one step of each in turn, the median of each. Near 1.0 means reading
  keeps up and streaming costs nothing; well above 1.0 means training waits for the disk or the
  decoding, or the readers take the training's cores. Beside it, the seconds to decode the whole pool up front, which
  is what ``train.data_on_device: auto`` pays instead when the pool fits;
* **steps/s per preset**, with batches in memory: the real training step (forward over every pyramid
  level, the loss mix, backward, clipping, AdamW, schedule, weight average): ``train.step.StepRunner``
  over the network and parts that ``train.setup`` builds for a run (the VGG loss left out: its weights
  are a download).

Without a ``pool_path`` a synthetic pool with the default tile size is written to a temporary folder
with the pool's own writer, so the reads are real reads of sharded, compressed chunks.
"""

from __future__ import annotations

import itertools
import logging
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterable, Optional

import numpy as np
import torch

from duplidog.core.runtime import choose_device, choose_precision
from duplidog.train.data import DeviceBatches, StreamedBatches, load_pool, pool_bytes
from duplidog.train.setup import (PoolShape, RunLength, build_network, build_parts, changes_most_pixels, epoch_plan,
                                  network_overrides, resolve_batch_size, seed_everything)
from duplidog.train.step import StepRunner

log = logging.getLogger(__name__)

#: Fewest timed steps of each kind for the data-path ratio (a handful of CPU steps is mostly noise).
DATA_PATH_STEPS = 20
#: The length of run whose schedule the timed steps follow (the learning rate does not change a step's cost).
SCHEDULE = RunLength(max_minutes=None, budget_seconds=None, total_steps=1000)


def synthetic_pool(path: Path, tiles: int, tile_size: int, border: int, channels: int = 3) -> Path:
    """A pool of smooth random tiles (target = a grade of the source), written like a real one."""
    from duplidog.core import pool_store
    from duplidog.pool import pool_settings

    settings = pool_settings({"tile_size": tile_size, "border": border})
    rng = np.random.default_rng(0)
    attributes = {"duplidog_pool": pool_store.POOL_FORMAT, "seed": 0, "tile_size": tile_size, "border": border,
                  "source_channels": ["R", "G", "B"][:channels], "target_channels": ["R", "G", "B"][:channels],
                  "colorspace": "display", "synthetic": True}
    writer = pool_store.TileWriter(path, tiles, channels, channels, tile_size, int(settings["shard_tiles"]),
                                   pool_store.compressor(settings), attributes)
    coarse = tile_size // 8
    for _ in range(tiles):
        low = torch.from_numpy(rng.random((1, channels, coarse, coarse), dtype=np.float32))
        smooth = torch.nn.functional.interpolate(low, size=(tile_size, tile_size), mode="bicubic")[0].numpy()
        source = np.clip(smooth + 0.03 * rng.standard_normal(smooth.shape, dtype=np.float32), 0, 1)
        writer.add(source, source * 0.8 + 0.05, frame=1001, y=0, x=0, augmented=False)
    writer.close()
    return path


def _runner(model_settings: dict, settings: dict, group, pool_path, device, precision) -> StepRunner:
    """A step runner built as a fresh run builds one (``train.setup``) for the pool ``group``."""
    shape = PoolShape.of(group)
    seed_everything(0)
    overrides = network_overrides(model_settings, {}, group, changes_most_pixels(group, shape))
    model = build_network(model_settings, shape, overrides, pool_path)
    model.to(device=device, memory_format=torch.channels_last)
    settings = {**settings, "losses": {k: v for k, v in settings["losses"].items() if k != "vgg"}}
    parts = build_parts(model, settings, float(settings["lr"]), precision, device, shape.border, SCHEDULE)
    return StepRunner(parts, model, settings, shape.tile_size)


def _seconds_per_step(runner: StepRunner, batches: Iterable, steps: int, warmup: int) -> float:
    stream = iter(batches)
    for _ in range(warmup):
        runner(stream)
    started = time.perf_counter()
    for _ in range(steps):
        runner(stream)  # loss.item() inside synchronises the device every step
    return (time.perf_counter() - started) / max(steps, 1)


def _load_seconds(group, device: torch.device) -> float:
    """Seconds to decode the whole pool onto ``device`` (the files already in the page cache)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    tensors = load_pool(group, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    del tensors
    return seconds


def _first_batches(group, plan, device: torch.device, count: int) -> list:
    """The first ``count`` batches of ``plan``, decoded onto ``device`` (the batches held in memory)."""
    return list(itertools.islice(DeviceBatches(group, plan, device).batches(0), count))


def _time_data_path(make_runner, streamed: StreamedBatches, in_memory: list, warmup: int, steps: int) -> dict:
    """Seconds of each step on batches ``streamed`` from the pool by reading threads, and on the same
    batches held ``in_memory``, each by a runner of its own.

    One step of each in turn (which goes first alternating), so a change in the machine's load falls on
    both alike; the caller takes the median of each, so a burst of someone else's work counts for neither.
    """
    runners = {name: make_runner() for name in ("streamed", "in memory")}
    streams = {"streamed": iter(streamed.batches(0)), "in memory": iter(in_memory)}
    times = {name: [] for name in runners}
    for step in range(-warmup, steps):
        for name in sorted(runners, reverse=step % 2 == 1):
            seconds = _seconds_per_step(runners[name], streams[name], 1, 0)
            if step >= 0:
                times[name].append(seconds)
    return times


def bench_train(pool_path: Optional[str] = None, config: Optional[dict] = None, presets=None,
                steps: Optional[int] = None, warmup: Optional[int] = None, tiles: int = 256, device: Optional[str] = None,
                print_fn=print) -> Dict[str, object]:
    """Print and return the data-path overhead and steps/s per preset (see the module docstring).

    Args:
        pool_path: a pool to read; default a synthetic one in a temporary folder.
        config: a resolved shot config (train, model and pool sections); default the defaults.
        presets: preset names to time; default every preset of the configured architecture, ``[]`` none.
        steps: timed steps per measurement; default 20 on a GPU, 3 on the CPU, and at least
            ``DATA_PATH_STEPS`` of each kind for the data path.
        warmup: untimed steps first (allocation, cuDNN autotuning); default 3 on a GPU, 1 on the CPU.
        tiles: size of the synthetic pool.
        device: override ``train.device``.
    """
    from duplidog.model import PRESETS
    from duplidog.core.pool_store import open_pool
    from duplidog.settings import defaults

    config = config or defaults()
    settings = dict(config["train"])
    model_settings = dict(config.get("model", {}))
    device = choose_device(device or settings["device"], key="train.device")
    precision = choose_precision(device, settings["precision"], key="train.precision", reduced_on_cpu=True)
    data_steps = steps or max(20 if device.type != "cpu" else 3, DATA_PATH_STEPS)
    steps = steps or (20 if device.type != "cpu" else 3)
    warmup = warmup if warmup is not None else (3 if device.type != "cpu" else 1)
    arch = model_settings.get("arch", "msrn")
    presets = list(PRESETS.get(arch, {}).keys() if presets is None else presets)
    results: Dict[str, object] = {"device": str(device), "precision": precision.name}

    with tempfile.TemporaryDirectory(prefix="duplidog-bench-train-") as tmp:
        if pool_path is None:
            pool_config = config.get("pool", {})
            pool_path = synthetic_pool(Path(tmp) / "pool.zarr", tiles, int(pool_config.get("tile_size", 128)),
                                       int(pool_config.get("border", 16)))
        group = open_pool(pool_path)
        n, _, tile_size, _ = group["source"].shape
        shape = PoolShape.of(group)
        settings["batch_size"] = resolve_batch_size(settings, shape, changes_most_pixels(group, shape))
        batch = settings["batch_size"] * int(settings["accumulate"])
        plan = epoch_plan(n, settings, 0)
        print_fn(f"train bench on {device} ({precision.name}): pool of {n} tiles of {tile_size} px, "
                 f"batch {batch}, {steps} timed steps after {warmup}")

        def make_runner(preset: str = model_settings.get("preset", "small")) -> StepRunner:
            return _runner({**model_settings, "preset": preset}, settings, group, pool_path, device, precision)

        workers, ahead = int(settings["num_workers"]), int(settings["prefetch_batches"])
        in_memory = _first_batches(group, plan, device, (warmup + data_steps) * int(settings["accumulate"]))
        streamed = StreamedBatches(str(pool_path), plan, device, workers, ahead)
        try:
            times = _time_data_path(make_runner, streamed, in_memory, warmup, data_steps)
        finally:
            streamed.close()
        read_seconds, memory_seconds = float(np.median(times["streamed"])), float(np.median(times["in memory"]))
        load_seconds = _load_seconds(group, device)
        overhead = read_seconds / memory_seconds
        results["data_path"] = {"streamed_s_per_step": read_seconds, "in_memory_s_per_step": memory_seconds,
                                "overhead": overhead, "num_workers": workers, "prefetch_batches": ahead,
                                "reader": streamed.reader_kind, "load_s": load_seconds}
        print_fn(f"data path ({model_settings.get('preset', 'small')}): streamed from the pool by {workers} "
                 f"thread(s) reading {streamed.reader_kind}, {ahead} batch(es) ahead each, "
                 f"{read_seconds * 1e3:.1f} ms/step; same batches in memory {memory_seconds * 1e3:.1f} ms/step "
                 f"-> overhead x{overhead:.2f} (median of {data_steps} steps each)")
        print_fn(f"whole pool ({pool_bytes(group) / 2**20:.1f} MiB) decoded onto {device} up front in "
                 f"{load_seconds:.2f} s = {load_seconds / memory_seconds:.1f} steps (the path train.data_on_device: "
                 f"auto takes when it fits)")

        # Steps per second of each preset, batches in memory.
        per_preset = {}
        for preset in presets:
            runner = make_runner(preset)
            seconds = _seconds_per_step(runner, in_memory, steps, warmup)
            per_preset[preset] = 1.0 / seconds
            parameters = sum(p.numel() for p in runner.model.parameters())
            print_fn(f"preset {preset}: {1.0 / seconds:.2f} steps/s ({batch * tile_size * tile_size / seconds / 1e6:.2f} "
                     f"Mpx/s trained, {parameters} parameters)")
        results["steps_per_s"] = per_preset
    return results
