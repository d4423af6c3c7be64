"""What each network preset costs: parameters, MACs per megapixel, reach, and training speed.

Training speed is forward + backward + AdamW on a batch of tiles with the multi-level loss, timed
after one warm-up step; it is printed as steps per second and as a ratio to the small preset (the
ratio carries across machines, the absolute figure does not). Run:

    python benchmarks/bench_model.py [--threads 2] [--tile 128] [--batch 8] [--steps 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from duplidog.model import PRESETS, build_model, count_parameters, macs_per_megapixel


def training_steps_per_second(model: torch.nn.Module, tile: int, batch: int, steps: int, device: str) -> float:
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), 1e-4)
    x = torch.rand(batch, model.in_channels, tile, tile, device=device)
    target = torch.rand(batch, model.out_channels, tile, tile, device=device)
    for step in range(steps + 1):
        if step == 1:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
        outputs = model(x, all_levels=True)
        loss = sum(F.l1_loss(o, F.avg_pool2d(target, tile // o.shape[-1])) for o in outputs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--presets", nargs="*", default=list(PRESETS["msrn"]))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"device {args.device}, {args.threads} threads, batch {args.batch} of {args.tile}x{args.tile} tiles")
    print(f"{'preset':8} {'params':>10} {'GMAC/MP':>9} {'reach':>6} {'steps/s':>8} {'vs small':>9}")
    reference = None
    for preset in args.presets:
        torch.manual_seed(0)
        model = build_model(preset=preset)
        params, macs = count_parameters(model), macs_per_megapixel(model)
        speed = training_steps_per_second(model, args.tile, args.batch, args.steps, args.device)
        reference = reference or speed
        print(f"{preset:8} {params:>10,} {macs / 1e9:>9.1f} {model.reach:>6} {speed:>8.3f} {speed / reference:>8.3f}x",
              flush=True)


if __name__ == "__main__":
    main()
