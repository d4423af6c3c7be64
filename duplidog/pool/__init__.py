"""The tile pool (stage 2): training tiles cut from the keyframes into one Zarr v3 group.

``build_pool(manifest_path, plan_path, pool_path, settings, seed)`` writes it, ``open_pool(path)``
opens it read-only, ``pool_fingerprint(path)`` names its content (training refuses to resume a
checkpoint made from another pool). Modules: ``sampling`` (where tiles are drawn), ``augment`` (how
some are varied), ``store`` (the on-disk layout), ``build`` (the loop), ``bench`` (the measurements).

Measured (``duplidog bench pool`` / ``benchmarks/bench_pool.py``): FIGURES_PENDING
"""

from duplidog.pool.build import build_pool, pool_settings
from duplidog.pool.store import open_pool, pool_fingerprint

__all__ = ["build_pool", "open_pool", "pool_fingerprint", "pool_settings"]
