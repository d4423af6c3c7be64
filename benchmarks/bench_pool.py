"""Tile pool benchmark: sampler placement quality and build cost (see duplidog.bench.pool).

    python benchmarks/bench_pool.py [--height 540 --width 960 --repeats 5 --keyframes 2]

Same as ``duplidog bench pool``. Prints ratios; asserts nothing.
"""

from __future__ import annotations

import argparse
import logging

import torch

from duplidog.bench.pool import bench_pool


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=540)
    parser.add_argument("--width", type=int, default=960)
    parser.add_argument("--tiles-per-keyframe", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keyframes", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    bench_pool(args.height, args.width, args.tiles_per_keyframe, args.repeats, args.keyframes)


if __name__ == "__main__":
    main()
