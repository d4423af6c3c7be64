"""The tile pool (stage 2): training tiles cut from the keyframes into one Zarr v3 group.

``build_pool(manifest_path, plan_path, pool_path, settings, seed)`` writes it. Its on-disk format, which
training reads, is the core's (``duplidog.core.pool_store``: ``open_pool``, ``tile_reader``,
``pool_fingerprint``). Modules: ``sampling`` (where tiles are drawn), ``augment`` (how some are varied),
``build`` (the loop); its bench is ``duplidog.bench.pool``.

The defaults are chosen by measurement (``benchmarks/bench_pool.py``; the figures are in ``docs/speed.md``):
``sampler: full``, because the 2D sampler puts several times more tiles on the fix than the product of
row and column marginals (which also draws where one fix's rows meet another's columns) for a few
milliseconds per keyframe; ``compressor: blosc-zstd``, smaller and faster than plain zstd. Memory is
one keyframe plus one shard, whatever the pool's size.
"""

from duplidog.pool.build import build_pool, pool_settings

__all__ = ["build_pool", "pool_settings"]
