"""``duplidog bench infer``: how fast a shot goes through inference, as ratios against the disk.

Absolute speeds depend on the machine, so the figures that matter are ratios measured in the same run:
megapixels per second for

1. read + write only (read a 2K EXR, write it back with its spec: the floor no inference can beat),
2. the model whole-frame, through ``infer_frames`` (threads, colour transform, write included),
3. the model tiled, through the same path, with tiles small enough to need several per frame,

each printed with its ratio to (1). The tiled run also reports how many pixels the network computed
per frame pixel: with exact tiling every tile carries twice the network's reach of overlap, so a
network that sees far (MSRN small: ~550 pixels) pays for tiles much more than a short-sighted one;
that is why ``tile: auto`` runs whole frames whenever they fit. ``compute_seconds`` against
``wait_read_seconds`` shows whether the network ever waited for the disk.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import OpenImageIO as oiio
import torch

from duplidog import colour, imageio
from duplidog.errors import DuplidogError
from duplidog.infer.frames import infer_frames, resolve_device
from duplidog.infer.runner import model_geometry, plan_run
from duplidog.infer.tiling import default_overlap, round_up


def _write_plate(path: Path, width: int, height: int, seed: int) -> None:
    """A half-float RGB EXR with scene-like values (smooth gradients plus grain, highlights above 1)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin(x / 37.0 + y / 53.0)], axis=2) * 2.0
    pixels = (base + rng.normal(0, 0.02, base.shape)).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    spec = oiio.ImageSpec(width, height, 3, "half")
    spec.channelnames = ("R", "G", "B")
    spec.attribute("compression", "zip")
    out = oiio.ImageOutput.create(str(path))
    if out is None or not out.open(str(path), spec) or not out.write_image(pixels) or not out.close():
        raise DuplidogError(f"{path}: cannot write the benchmark plate ({oiio.geterror()})")


def _bench_tile(model, width: int, height: int) -> int:
    """The largest tile that still needs two tiles across the frame's long side (what ``auto`` does
    for a frame slightly too big for the device), or the smallest legal tile if that is larger."""
    multiple, reach, _ = model_geometry(model)
    overlap = default_overlap(reach, multiple)
    long_side = round_up(max(width, height), multiple)
    two_across = round_up((long_side + overlap) // 2 + multiple, multiple)
    return max(two_across, round_up(overlap + multiple, multiple))


def bench_infer(preset: str = "small", frames: int = 3, device: str | None = None, tile: int | None = None,
                width: int = 2048, height: int = 1080, workdir: str | Path | None = None,
                threads: int | None = None) -> dict:
    """Measure and print megapixels/s for read+write, whole-frame and tiled inference; return the figures.

    ``threads``: torch CPU threads (default: torch's choice). On a CPU shared with other jobs, one
    thread gives steadier figures: idle-spinning worker threads fight for the busy cores.
    """
    if threads:
        torch.set_num_threads(threads)
    from duplidog.model import build_model, count_parameters
    from duplidog.modelstore import save_model

    torch_device = resolve_device(device)
    with tempfile.TemporaryDirectory(dir=workdir, prefix="duplidog-bench-") as tmp:
        root = Path(tmp)
        for i in range(frames):
            _write_plate(root / f"plate/plate.{1001 + i}.exr", width, height, seed=i)
        torch.manual_seed(0)
        net = build_model(preset=preset)
        save_model(root / "model", net, {"input_channels": ["R", "G", "B"], "output_channels": ["R", "G", "B"],
                                         "colorspace": colour.describe("linear")})
        numbers = list(range(1001, 1001 + frames))
        plan = {"shot": "bench", "source": str(root / "plate/plate.%04d.exr"), "output": str(root / "out/o.%04d.exr"),
                "frames": numbers, "keyframes": [], "colorspace": "linear", "input_channels": ["R", "G", "B"],
                "output_channels": ["R", "G", "B"], "passthrough_channels": [], "width": width, "height": height,
                "pixel_type": "half", "nonfinite": "error"}
        (root / "plan.json").write_text(json.dumps(plan))
        megapixels = frames * width * height / 1e6

        start = time.perf_counter()
        for frame in numbers:
            info = imageio.read_info(root / f"plate/plate.{frame}.exr")
            imageio.write_pixels(root / f"io/o.{frame}.exr", imageio.read_pixels(info.path), like=info)
        io_seconds = time.perf_counter() - start

        tile = tile or _bench_tile(net, width, height)
        shape = (1, 3, height, width)
        tiled_plan = plan_run(net.to(torch_device), shape, tile, device=torch_device)
        grid = tiled_plan.grid
        computed = (len(grid) * grid.tile_height * grid.tile_width) if grid else 0
        runs = {}
        for name, setting in (("whole", "none"), ("tiled", tile)):
            settings = {"tile": setting, "device": str(torch_device)}
            if torch_device.type != "cpu":  # warm up kernels and the allocator before timing
                infer_frames(root / "model", root / "plan.json", numbers[:1], str(root / "warm/w.%04d.exr"), settings)
            runs[name] = infer_frames(root / "model", root / "plan.json", numbers, str(root / f"{name}/o.%04d.exr"),
                                      settings)

    reference = megapixels / io_seconds
    results = {
        "device": str(torch_device), "preset": preset, "parameters": count_parameters(net),
        "threads": torch.get_num_threads(), "reach": int(net.reach), "frame": f"{width}x{height}", "frames": frames,
        "read_write_mpix_per_s": round(reference, 3),
    }
    print(f"duplidog bench infer: {frames} frames of {width}x{height} half EXR, MSRN {preset} "
          f"(reach {net.reach}), device {torch_device}"
          + (f", {torch.get_num_threads()} CPU threads" if torch_device.type == "cpu" else ""))
    print(f"  {'run':<14}{'Mpix/s':>10}{'frames/s':>10}{'x read+write':>14}   notes")
    print(f"  {'read+write':<14}{reference:>10.3f}{frames / io_seconds:>10.3f}{1.0:>14.4f}   reference")
    for name, summary in runs.items():
        rate = megapixels / summary["seconds"]
        note = (f"compute {summary['compute_seconds']:.2f}s, waited on reads {summary['wait_read_seconds']:.2f}s "
                f"(+{summary['first_read_seconds']:.2f}s first frame), on writes {summary['wait_write_seconds']:.2f}s")
        if name == "tiled":
            if grid is None:
                note = f"tile {tile} covers the frame: ran whole; " + note
            else:
                note = (f"{len(grid)} tiles of {grid.tile_width}x{grid.tile_height}, "
                        f"{computed / (width * height):.1f}x the frame's pixels computed; " + note)
        print(f"  {name:<14}{rate:>10.3f}{frames / summary['seconds']:>10.3f}{rate / reference:>14.4f}   {note}")
        results[f"{name}_mpix_per_s"] = round(rate, 3)
        results[f"{name}_ratio"] = round(rate / reference, 5)
        results[f"{name}_summary"] = summary
    results["tiled_tiles"] = len(grid) if grid else 1
    results["tiled_pixel_overhead"] = round(computed / (width * height), 3) if grid else 1.0
    return results
