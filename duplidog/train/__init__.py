"""Training (stage 3): learn the shot's transformation from the tile pool.

``train(pool_path, plan_path, manifest_path, model_dir, work_dir, config)`` runs it (``loop``). Modules:
``data`` (which tiles, and how they reach the device), ``losses``, ``schedule``, ``ema``, ``checkpoint``,
``monitor`` (progress, convergence, TensorBoard, metrics.csv, loss plot), ``validate`` (whole-frame
validation through production inference); device and precision come from ``duplidog.core.runtime``. Its
speed bench is ``duplidog.bench.train``.
"""

from duplidog.train.loop import TrainingInterrupted, train

__all__ = ["train", "TrainingInterrupted"]
