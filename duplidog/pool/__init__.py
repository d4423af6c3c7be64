"""The tile pool (stage 2): training tiles cut from the keyframes into one Zarr v3 group.

``build_pool(manifest_path, plan_path, pool_path, settings, seed)`` writes it, ``open_pool(path)``
opens it read-only, ``pool_fingerprint(path)`` names its content (training refuses to resume a
checkpoint made from another pool). Modules: ``sampling`` (where tiles are drawn), ``augment`` (how
some are varied), ``store`` (the on-disk layout), ``build`` (the loop); its bench is ``duplidog.bench.pool``.

The defaults are chosen by measurement (``benchmarks/bench_pool.py``; the figures are in ``docs/speed.md``):
``sampler: full``, because the 2D sampler puts several times more tiles on the fix than the product of
row and column marginals (which also draws where one fix's rows meet another's columns) for a few
milliseconds per keyframe; ``compressor: blosc-zstd``, smaller and faster than plain zstd. Memory is
one keyframe plus one shard, whatever the pool's size.
"""

from duplidog.pool.build import build_pool, pool_settings
from duplidog.pool.store import open_pool, pool_fingerprint, pool_temporal_frames, tile_reader

__all__ = ["build_pool", "open_pool", "pool_fingerprint", "pool_settings", "pool_temporal_frames", "tile_reader"]
