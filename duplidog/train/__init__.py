"""Training (stage 3): learn the shot's transformation from the tile pool.

``train(pool_path, plan_path, manifest_path, model_dir, work_dir, config)`` runs it (``loop``);
``bench_train()`` measures the data path and each preset's speed (``bench``). Modules: ``data``
(which tiles, and how they reach the device), ``losses``, ``schedule``, ``ema``, ``checkpoint``,
``monitor`` (progress, convergence, TensorBoard, metrics.csv, loss plot), ``validate`` (whole-frame
validation through production inference); device and precision come from ``duplidog.core.runtime``.
"""

from duplidog.train.loop import TrainingInterrupted, train

__all__ = ["train", "bench_train", "TrainingInterrupted"]


def bench_train(*args, **kwargs):
    """See ``duplidog.train.bench.bench_train`` (imported lazily: it builds a temporary pool)."""
    from duplidog.train.bench import bench_train as run

    return run(*args, **kwargs)
