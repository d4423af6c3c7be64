"""A tiny shot, ingested and pooled with the real stages, for the training tests.

Three 48x40 keyframes (two train, one validation) graded by ``plate * 0.8 + 0.05``, read as ``log``
(the identity working space), so the network must learn an affine map per pixel: a learnable task.
The pool has 16-pixel tiles with a 3-pixel border; the network is MSRN cut down to 2 levels, 1 stage,
width 8 (size_multiple 4), so a step takes milliseconds on one CPU core.
"""

from __future__ import annotations

import copy
from pathlib import Path

from shotdata import make_shot, write_frame

TINY_MODEL = {"arch": "msrn", "preset": "small",
              "overrides": {"levels": 2, "stages": 1, "width": 8, "depth": 1, "block": "res"}}
TINY_POOL = {"tile_size": 16, "border": 3, "tiles_per_keyframe": 24, "shard_tiles": 16, "augment_fraction": 0.0}
TINY_TRAIN = {"batch_size": 4, "steps": 20, "log_every": 1, "validate_every": 10, "checkpoint_every": 10,
              "activation_stats_every": 5, "convergence_window": 8, "progress": False, "num_workers": 0,
              "device": "cpu", "warmup_fraction": 0.1, "lr": 0.003}


def build_tiny_shot(root: Path, pool_overrides: dict | None = None, seed: int = 0, local_edit: bool = False,
                    edited_columns: int = 24) -> dict:
    """Write, ingest and pool the tiny shot under ``root``; returns paths and the resolved config.

    ``local_edit``: the keyframes are graded on their ``edited_columns`` leftmost columns only (of 48; a fix
    that leaves some pixels alone, so the change-weighted loss terms weight pixels unevenly).
    """
    from duplidog.core.layout import ShotLayout
    from duplidog.imageio import read_pixels
    from duplidog.ingest import ingest
    from duplidog.pool import build_pool
    from duplidog.settings import resolve

    root = Path(root)
    shot_file = make_shot(root / "shot", frames=range(1001, 1004), keyframes=(1001, 1002, 1003), size=(48, 40))
    if local_edit:
        for frame in (1001, 1002, 1003):
            plate = read_pixels(root / "shot/plate" / f"plate.{frame:04d}.exr")
            fixed = plate.copy()
            fixed[:, :edited_columns] = plate[:, :edited_columns] * 0.8 + 0.05
            write_frame(root / "shot/fixed" / f"fixed.{frame:04d}.exr", fixed)
    import yaml

    user = yaml.safe_load(shot_file.read_text())
    user.update({"model": TINY_MODEL, "pool": {**TINY_POOL, **(pool_overrides or {})}, "train": TINY_TRAIN,
                 "seed": seed, "colorspace": "log"})
    config = resolve(user)
    layout = ShotLayout(root / "results", config["shot"])
    ingest(config, layout.ingest_dir)
    build_pool(layout.manifest, layout.plan, layout.pool, config["pool"], seed=config["seed"])
    return {"config": config, "pool": layout.pool, "plan": layout.plan, "manifest": layout.manifest}


def with_train(config: dict, **train) -> dict:
    config = copy.deepcopy(config)
    config["train"].update(train)
    return config


def final_state(work: Path) -> dict:
    """The newest checkpoint a training run under ``work`` wrote (its training folder ``work/train``)."""
    from duplidog.core.layout import TrainFiles, list_checkpoints
    from duplidog.train.checkpoint import load_checkpoint

    return load_checkpoint(list_checkpoints(TrainFiles(work / "train").checkpoints)[-1][1])
