"""``duplidog bench infer``: how fast a shot goes through inference, and what tiles cost.

Absolute speeds depend on the machine, so the figures that matter are ratios measured in the same run:
megapixels per second for

1. read + write only (read a 2K EXR, write it back with its spec: the floor no inference can beat),
2. the model whole-frame, through ``infer_frames`` (threads, colour transform, write included),
3. the model tiled, through the same path, with ``--tile`` pixel tiles (default: two across),

each printed with its ratio to (1); then tiled against whole: the time ratio (end to end, and of the
network's compute alone) and the largest difference between the two runs' half-float frames. MSRN
tiles run split (``runner.splits_levels``): the coarse levels once over the frame, only the finest level
in tiles, overlapping by twice its reach as measured on the first frame. The reach is a property of a
*trained* network -- a fresh one's head starts near zero, so its influence dies away early for the
wrong reason -- so ``--model`` takes a trained model folder, and without one the figures say they are
for an untrained network. The plate is a photograph (scikit-image's astronaut, mirrored out to the
frame size) with grain, so the network sees texture like a real plate's.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from duplidog import colour, imageio
from duplidog.core.mirror import mirror_index
from duplidog.core.runtime import choose_device
from duplidog.infer.frames import infer_frames
from duplidog.core.apply import model_geometry, splits_levels, tile_geometry
from duplidog.core.tiling import default_overlap, round_up


def _write_plate(path: Path, width: int, height: int, seed: int) -> None:
    """A half-float RGB EXR of a photograph mirrored out to ``width`` x ``height``, shifted a little per
    frame (a camera move) and with grain, values 0..1."""
    from skimage import data

    photo = data.astronaut().astype(np.float32) / 255.0
    rng = np.random.default_rng(seed)
    rows = mirror_index(photo.shape[0], height, torch.device("cpu"), 3 * seed).numpy()
    columns = mirror_index(photo.shape[1], width, torch.device("cpu"), 5 * seed).numpy()
    pixels = photo[rows][:, columns] + rng.normal(0, 0.02, (height, width, 3)).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.write_pixels(path, pixels, imageio.new_like(path, width, height))


def _bench_tile(model, width: int, height: int) -> int:
    """The largest tile that still needs two tiles across the frame's long side (what ``auto`` does
    for a frame slightly too big for the device)."""
    multiple, reach = tile_geometry(model, splits_levels(model))
    overlap = default_overlap(reach, multiple)
    long_side = round_up(max(width, height), model_geometry(model)[0])
    return round_up((long_side + overlap) // 2 + multiple, multiple)


def _largest_difference(folder_a: Path, folder_b: Path, frames: list[int]) -> float:
    worst = 0.0
    for frame in frames:
        a = imageio.read_pixels(folder_a / f"o.{frame}.exr")
        b = imageio.read_pixels(folder_b / f"o.{frame}.exr")
        worst = max(worst, float(np.abs(a - b).max()))
    return worst


def bench_infer(preset: str = "small", frames: int = 2, device: str | None = None, tile: int | None = None,
                width: int = 1920, height: int = 1080, workdir: str | Path | None = None,
                threads: int | None = None, model: str | Path | None = None) -> dict:
    """Measure and print megapixels/s for read+write, whole-frame and tiled inference, and tiled against
    whole (time and largest difference); return the figures.

    ``model``: a trained model folder (default: a fresh ``preset`` network, reported as untrained).
    ``threads``: torch CPU threads (default: torch's choice). On a CPU shared with other jobs, one
    thread gives steadier figures: idle-spinning worker threads fight for the busy cores.
    """
    if threads:
        torch.set_num_threads(threads)
    from duplidog.model import build_model, count_parameters
    from duplidog.core.modelstore import load_model, save_model

    torch_device = choose_device(device, key="infer.device")
    with tempfile.TemporaryDirectory(dir=workdir, prefix="duplidog-bench-") as tmp:
        root = Path(tmp)
        for i in range(frames):
            _write_plate(root / f"plate/plate.{1001 + i}.exr", width, height, seed=i)
        if model is None:
            torch.manual_seed(0)
            net = build_model(preset=preset)
            model_dir = root / "model"
            card = save_model(model_dir, net, {"input_channels": ["R", "G", "B"], "output_channels": ["R", "G", "B"],
                                               "colorspace": colour.describe("linear")})
            what = f"MSRN {preset}, UNTRAINED (a fresh network's reach is not a trained one's: pass --model)"
        else:
            model_dir = Path(model)
            net, card = load_model(model_dir)
            what = f"model {model_dir} ({card.network.get('preset', 'custom')}, trained)"
        space = card.colorspace
        numbers = list(range(1001, 1001 + frames))
        plan = {"shot": "bench", "source": str(root / "plate/plate.%04d.exr"), "output": str(root / "out/o.%04d.exr"),
                "frames": numbers, "keyframes": [], "colorspace": space.get("name", "linear"),
                "input_channels": ["R", "G", "B"], "output_channels": ["R", "G", "B"], "passthrough_channels": [],
                "width": width, "height": height, "pixel_type": "half", "nonfinite": "error"}
        (root / "plan.json").write_text(json.dumps(plan))
        megapixels = frames * width * height / 1e6

        start = time.perf_counter()
        for frame in numbers:
            info = imageio.read_info(root / f"plate/plate.{frame}.exr")
            imageio.write_pixels(root / f"io/o.{frame}.exr", imageio.read_pixels(info.path), like=info)
        io_seconds = time.perf_counter() - start

        tile = tile or _bench_tile(net, width, height)
        runs = {}
        for name, setting in (("whole", "none"), ("tiled", tile)):
            settings = {"tile": setting, "device": str(torch_device)}
            if torch_device.type != "cpu":  # warm up kernels and the allocator before timing
                infer_frames(model_dir, root / "plan.json", numbers[:1], str(root / "warm/w.%04d.exr"), settings)
            runs[name] = infer_frames(model_dir, root / "plan.json", numbers, str(root / f"{name}/o.%04d.exr"),
                                      settings)
        difference = _largest_difference(root / "whole", root / "tiled", numbers)

    tiling = runs["tiled"].get("tiling")
    reference = megapixels / io_seconds
    results = {
        "device": str(torch_device), "preset": preset if model is None else card.network.get("preset"),
        "trained": model is not None, "parameters": count_parameters(net),
        "threads": torch.get_num_threads(), "reach": int(net.reach), "frame": f"{width}x{height}", "frames": frames,
        "tile": tile, "read_write_mpix_per_s": round(reference, 3),
    }
    print(f"duplidog bench infer: {frames} frames of {width}x{height} half EXR, {what}, device {torch_device}"
          + (f", {torch.get_num_threads()} CPU threads" if torch_device.type == "cpu" else ""))
    print(f"  {'run':<14}{'Mpix/s':>10}{'frames/s':>10}{'x read+write':>14}   notes")
    print(f"  {'read+write':<14}{reference:>10.3f}{frames / io_seconds:>10.3f}{1.0:>14.4f}   reference")
    for name, summary in runs.items():
        rate = megapixels / summary["seconds"]
        note = (f"compute {summary['compute_seconds']:.2f}s, waited on reads {summary['wait_read_seconds']:.2f}s "
                f"(+{summary['first_read_seconds']:.2f}s first frame), on writes {summary['wait_write_seconds']:.2f}s")
        if name == "tiled":
            if tiling is None:
                note = f"tile {tile} covers the frame: ran whole; " + note
            else:
                note = (f"{tiling['tiles']} tiles of {tiling['tile_width']}x{tiling['tile_height']}, "
                        f"{tiling['pixel_overhead']:.2f}x the frame's pixels in tiles; " + note)
        print(f"  {name:<14}{rate:>10.3f}{frames / summary['seconds']:>10.3f}{rate / reference:>14.4f}   {note}")
        results[f"{name}_mpix_per_s"] = round(rate, 3)
        results[f"{name}_ratio"] = round(rate / reference, 5)
        results[f"{name}_summary"] = summary
    time_ratio = runs["tiled"]["seconds"] / runs["whole"]["seconds"]
    compute_ratio = runs["tiled"]["compute_seconds"] / max(runs["whole"]["compute_seconds"], 1e-9)
    if tiling is not None:
        reach_note = (f"the finest level's reach {tiling['reach']} px ({tiling['reach_source']}; the whole network's "
                      f"analytic bound is {net.reach})" if tiling["split"] else
                      f"the network's reach {tiling['reach']} px")
        print(f"  tiles: {tile}-px asked, {tiling['tile_width']}x{tiling['tile_height']} used, overlap "
              f"{tiling['overlap']} px for {reach_note}")
    print(f"  tiled/whole: time {time_ratio:.3f}x (compute alone {compute_ratio:.3f}x), "
          f"largest |difference| of the half-float frames {difference:.2e}")
    results.update(tiled_over_whole_time=round(time_ratio, 4), tiled_over_whole_compute=round(compute_ratio, 4),
                   max_abs_difference=difference, tiling=tiling,
                   tiled_tiles=tiling["tiles"] if tiling else 1,
                   tiled_pixel_overhead=tiling["pixel_overhead"] if tiling else 1.0)
    return results
