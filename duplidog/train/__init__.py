"""Training (stage 3): learn the shot's transformation from the tile pool.

``train(pool_path, plan_path, manifest_path, model_dir, work_dir, config)`` runs it (``loop``: the run
from top to bottom, and the ``Trainer`` that steps, validates and checkpoints). Its pieces: ``setup``
(run length, pool shape, network and the parts a step changes, from the settings), ``start`` (how a run
begins: resume, fine-tune, warm start, colour fit), ``step`` (one optimizer step), ``stop`` (signals),
``finish`` (the model card, result.json). Below them: ``data`` (which tiles, and how they reach the
device), ``losses``, ``schedule``, ``ema``, ``checkpoint``, ``colour_fit``, ``monitor`` (progress,
convergence, TensorBoard, metrics.csv, loss plot), ``validate`` (whole-frame validation through
production inference), ``distributed`` and ``launch`` (several processes); device and precision come
from ``duplidog.core.runtime``. Its speed bench is ``duplidog.bench.train``.
"""

from duplidog.train.loop import TrainingInterrupted, train

__all__ = ["train", "TrainingInterrupted"]
