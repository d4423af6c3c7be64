"""Warm start: shot B trained from shot A's model reaches a validation PSNR in fewer steps than from scratch.

Two related shots -- the same grade (a warm colour matrix plus lift) on different plates -- are written
with OpenImageIO, ingested and pooled with the real stages, and trained with the real
``duplidog.train.train`` on a real MSRN cut down to a few hundred parameters. Shot A trains from
scratch; shot B trains twice for the same number of steps, once from scratch and once with
``train.init_from`` = A's model, validating every few steps. The target is the PSNR the scratch run
ends at; the warm run must reach it at an earlier validation. The figures are printed (``-s``) and
recorded as test properties.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from shotdata import write_frame
from trainshot import TINY_MODEL, TINY_POOL, TINY_TRAIN, with_train

torch.set_num_threads(1)

#: The shared look: a warm colour matrix and a lift (applied to the plate in scene values).
GRADE = np.array([[0.95, 0.10, 0.00], [0.05, 0.80, 0.05], [0.00, 0.10, 0.65]], np.float32)
LIFT = np.array([0.06, 0.03, 0.01], np.float32)
SHOT_STEPS = 40  # steps for shot B, both ways
VALIDATE_EVERY = 5


def write_related_shot(root: Path, name: str, seed: int, size=(48, 40)) -> dict:
    """Three keyframes of plate content drawn from ``seed``, all graded with the shared look."""
    from duplidog.ingest import ingest
    from duplidog.pool import build_pool
    from duplidog.settings import resolve

    width, height = size
    rng = np.random.default_rng(seed)
    # Content: smooth random blobs plus fine noise, different for each seed.
    coarse = rng.random((height // 8 + 2, width // 8 + 2, 3), dtype=np.float32) * 1.2
    smooth = np.kron(coarse, np.ones((8, 8, 1), np.float32))
    for frame in (1001, 1002, 1003):
        offset = (frame - 1001) * 3
        plate = smooth[offset % 8: offset % 8 + height, offset: offset + width]
        plate = plate + rng.random((height, width, 3), dtype=np.float32) * 0.3
        write_frame(root / "plate" / f"plate.{frame:04d}.exr", plate)
        write_frame(root / "fixed" / f"fixed.{frame:04d}.exr", plate @ GRADE.T + LIFT)
    user = {"shot": name, "source": str(root / "plate/plate.%04d.exr"), "target": str(root / "fixed/fixed.####.exr"),
            "model": TINY_MODEL, "pool": TINY_POOL, "train": TINY_TRAIN, "seed": 0, "colorspace": "log"}
    (root / f"{name}.yaml").write_text(yaml.safe_dump(user))
    config = resolve(user)
    ingest(config, root / "ingest")
    build_pool(root / "ingest/manifest.csv", root / "ingest/plan.json", root / "pool.zarr", config["pool"], seed=0)
    return {"config": config, "pool": root / "pool.zarr", "plan": root / "ingest/plan.json",
            "manifest": root / "ingest/manifest.csv"}


def train_shot(shot: dict, work: Path, **settings) -> pd.DataFrame:
    """Train with the real trainer; returns the validation rows (step, val_psnr) of metrics.csv."""
    from duplidog.train import train

    train(shot["pool"], shot["plan"], shot["manifest"], work / "model", work / "train",
          with_train(shot["config"], **settings))
    metrics = pd.read_csv(work / "train/metrics.csv")
    return metrics.loc[metrics["val_psnr"].notna(), ["step", "val_psnr"]].reset_index(drop=True)


def first_step_reaching(validation: pd.DataFrame, target: float):
    reached = validation[validation["val_psnr"] >= target - 1e-9]
    return None if reached.empty else int(reached["step"].iloc[0])


def test_shot_b_from_shot_a_reaches_the_psnr_in_fewer_steps(tmp_path, record_property):
    shot_a = write_related_shot(tmp_path / "a", "sha", seed=11)
    shot_b = write_related_shot(tmp_path / "b", "shb", seed=22)
    common = dict(validate_every=VALIDATE_EVERY, checkpoint_every=0, activation_stats_every=0)

    train_shot(shot_a, tmp_path / "train_a", steps=60, **common)
    scratch = train_shot(shot_b, tmp_path / "b_scratch", steps=SHOT_STEPS, **common)
    warm = train_shot(shot_b, tmp_path / "b_warm", steps=SHOT_STEPS, init_from=str(tmp_path / "train_a/model"),
                      **common)

    target = float(scratch["val_psnr"].iloc[-1])
    steps_scratch = first_step_reaching(scratch, target)
    steps_warm = first_step_reaching(warm, target)
    summary = (f"warm start: target PSNR {target:.2f} dB (scratch after {SHOT_STEPS} steps): scratch reaches it at "
               f"step {steps_scratch}, warm start at step {steps_warm}; first validation (step {VALIDATE_EVERY}): "
               f"scratch {scratch['val_psnr'].iloc[0]:.2f} dB, warm {warm['val_psnr'].iloc[0]:.2f} dB")
    print(summary)
    record_property("warm_start", summary)

    from duplidog.core.card import read_card

    card = read_card(tmp_path / "b_warm/model")
    assert card.training["init_from"] == str(tmp_path / "train_a/model")
    assert steps_warm is not None, summary
    assert steps_warm < steps_scratch, summary
    assert warm["val_psnr"].iloc[0] > scratch["val_psnr"].iloc[0], summary
