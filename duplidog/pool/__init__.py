"""The tile pool (stage 2): training tiles cut from the keyframes into one Zarr v3 group.

``build_pool(manifest_path, plan_path, pool_path, settings, seed)`` writes it, ``open_pool(path)``
opens it read-only, ``pool_fingerprint(path)`` names its content (training refuses to resume a
checkpoint made from another pool). Modules: ``sampling`` (where tiles are drawn), ``augment`` (how
some are varied), ``store`` (the on-disk layout), ``build`` (the loop), ``bench`` (the measurements).

Sampler choice, measured (``python benchmarks/bench_pool.py --height 1080 --width 1920``; 2 CPU cores;
256 tiles of 128 px, border 16, default weights; mean of 5 seeds). hits = share of tiles whose loss
region touches the fix; coverage = share of the fix's difference mass under the first 16 tiles;
ms = weights + sampler set-up + drawing for one keyframe::

    fix         sampler     hits  coverage  ms
    spot        uniform    0.016   0.095   12.2
    spot        full       0.617   0.996   17.8
    spot        separable  0.427   1.000   12.2
    two spots   uniform    0.024   0.022   12.8
    two spots   full       0.618   0.911   19.2
    two spots   separable  0.255   0.696   12.5
    wire        uniform    0.128   0.065   11.6
    wire        full       0.682   0.447   18.0
    wire        separable  0.173   0.162   13.6

The full 2D sampler puts 1.4x (one spot) to 3.9x (a diagonal wire) more tiles on the fix than the
separable one, whose product of marginals also draws where one fix's rows meet another's columns and
spreads a wire over its bounding box; it costs about 6 ms more per 1080p keyframe, against ~1 s to
build that keyframe's tiles. So ``sampler: full`` is the default. Whole builds (2 keyframes, 512
tiles): full 2.48 s, separable 2.63 s (1.06x); blosc-zstd with byte shuffle stores 92 KiB a tile
(2.08:1), plain zstd 105 KiB (1.82:1) and takes 1.26x as long, so ``compressor: blosc-zstd``.
Memory is one keyframe plus one shard: peak RSS 896 MB for 500 tiles and 901 MB for 4000 tiles of
1080p keyframes (546 MB of it is the imported libraries).
"""

from duplidog.pool.build import build_pool, pool_settings
from duplidog.pool.store import open_pool, pool_fingerprint, pool_temporal_frames, tile_reader

__all__ = ["build_pool", "open_pool", "pool_fingerprint", "pool_settings", "pool_temporal_frames", "tile_reader"]
