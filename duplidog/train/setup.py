"""What a training run is built from, each piece from the settings: how long it trains, the pool and plan
it reads (their shapes checked against each other and the model settings), the network, and the parts
an optimizer step changes (weight average, AdamW, schedule, gradient scaler, loss mix).

The loop (``loop.train``) and the speed bench (``duplidog.bench.train``) build through these same
functions, so the bench times the step that training takes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from duplidog.core.layout import TrainFiles
from duplidog.core.plan import Plan, read_plan
from duplidog.core.runtime import Precision
from duplidog.errors import DuplidogError
from duplidog.train.data import EpochPlan, value_range
from duplidog.train.ema import WeightAverage
from duplidog.train.losses import LossMix
from duplidog.train.schedule import TrainingClock, TrainingSchedule

#: Steps of a run given neither train.steps nor train.max_minutes (and the warm-up's measure with a budget alone).
DEFAULT_STEPS = 300

#: Tiles per batch when train.batch_size is unset. A matte network (output channels its input lacks) and one
#: learning a fix that changes most of the frame (grain, a grade) gain more from twice the steps in a time
#: budget than from twice the tiles in each; a local fix (a paint-out, a beauty fix) keeps more tiles a step,
#: so each holds more of the few pixels it changes (docs/quality.md).
DEFAULT_BATCH_SIZE = 8
STEPS_FIRST_BATCH_SIZE = 4
#: Blocks per stage of the small preset's network for a fix that changes most of the frame, where the
#: model.overrides do not say: such a fix needs steps more than depth, and half the blocks take nearly twice
#: the steps in the same minutes (a local fix keeps the preset's depth for its hardest spots: docs/quality.md).
WHOLE_FRAME_DEPTH = 1
WHOLE_FRAME_PRESETS = ("small",)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class RunLength:
    """How long a run trains: ``total_steps`` optimizer steps, or ``budget_seconds`` of training time
    (``train.max_minutes``), whichever comes first; None where that bound is not set."""

    max_minutes: Any
    budget_seconds: Optional[float]
    total_steps: Optional[int]

    @classmethod
    def from_settings(cls, settings: dict) -> "RunLength":
        max_minutes = settings.get("max_minutes")
        budget_seconds = 60.0 * float(max_minutes) if max_minutes else None
        # Without a step count the budget alone ends the run (and the schedule); without either, DEFAULT_STEPS.
        total_steps = int(settings["steps"]) if settings.get("steps") else (None if budget_seconds else DEFAULT_STEPS)
        return cls(max_minutes, budget_seconds, total_steps)

    @property
    def schedule_steps(self) -> int:
        """The steps the schedule's warm-up is a fraction of (DEFAULT_STEPS where only a budget is set)."""
        return self.total_steps or DEFAULT_STEPS


@dataclass(frozen=True)
class RunSettings:
    """A run's settings as the loop reads them: the config's sections, its seed and length, and where its
    files go (``work_dir``: checkpoints, metrics, pictures; ``model_dir``: the finished model)."""

    config: dict
    seed: int
    length: RunLength
    accumulate: int
    work_dir: Path
    model_dir: Path

    @classmethod
    def from_config(cls, config: dict, work_dir, model_dir) -> "RunSettings":
        settings = config["train"]
        return cls(config, int(config.get("seed", 0)), RunLength.from_settings(settings),
                   max(1, int(settings["accumulate"])), Path(work_dir), Path(model_dir))

    @property
    def settings(self) -> dict:
        return self.config["train"]

    def with_batch_size(self, batch_size: int) -> "RunSettings":
        """These settings with ``train.batch_size`` set (``resolve_batch_size``)."""
        train = {**self.settings, "batch_size": int(batch_size)}
        return replace(self, config={**self.config, "train": train})

    @property
    def model_settings(self) -> dict:
        return self.config.get("model", {})

    @property
    def checkpoints(self) -> Path:
        return TrainFiles(self.work_dir).checkpoints


@dataclass(frozen=True)
class PoolShape:
    """A tile pool's geometry: ``tiles`` tiles of ``tile_size`` px carrying ``stacked_channels`` (each of
    the ``2 * temporal_frames + 1`` frames' channels, the centre frame's first), targets of
    ``target_size`` px with ``out_channels``, cut with ``border`` px of context."""

    tiles: int
    stacked_channels: int
    tile_size: int
    out_channels: int
    target_size: int
    temporal_frames: int
    border: int

    @classmethod
    def of(cls, group) -> "PoolShape":
        from duplidog.core.pool_store import pool_temporal_frames

        tiles, stacked_channels, tile_size, _ = group["source"].shape
        return cls(tiles, stacked_channels, tile_size, group["target"].shape[1], group["target"].shape[-1],
                   pool_temporal_frames(group), int(group.attrs.get("border", 0)))

    @property
    def in_channels(self) -> int:
        """Each frame's source channels."""
        return self.stacked_channels // (2 * self.temporal_frames + 1)

    @property
    def scale(self) -> int:
        return int(self.target_size) // int(self.tile_size)


@dataclass(frozen=True)
class Inputs:
    """What a run reads: the pool (``group``, its fingerprint and shape), the plan and the manifest."""

    pool_path: Any
    group: Any
    pool_hash: str
    shape: PoolShape
    plan: Plan
    manifest_path: Any


def open_inputs(pool_path, plan_path, manifest_path, model_settings: dict) -> Inputs:
    """Read the plan, open the pool and check that the two and the model settings agree."""
    from duplidog.core.pool_store import open_pool, pool_fingerprint

    plan = read_plan(plan_path)
    group = open_pool(pool_path)
    pool_hash = pool_fingerprint(pool_path)
    shape = PoolShape.of(group)
    check_pool(shape, pool_path, plan, plan_path, model_settings)
    return Inputs(pool_path, group, pool_hash, shape, plan, manifest_path)


def changes_most_pixels(group, shape: PoolShape) -> bool:
    """Whether the pool's fix changes most pixels of its tiles (grain, a grade) rather than a few (a paint-out,
    a beauty fix), as the colour path's fit measures it: on the same evenly spaced tiles, so every run over
    the pool (a resumed one, each process of a data-parallel one) finds the same. A matte is neither."""
    from duplidog.model import makes_matte
    from duplidog.train.colour_fit import sample_pixels
    from duplidog.train.losses import CHANGE_RADIUS, CHANGE_THRESHOLD

    if makes_matte(shape.in_channels, shape.out_channels):
        return False
    return sample_pixels(group, shape.border, CHANGE_THRESHOLD, 2 * CHANGE_RADIUS, seed=0).mostly_changed


def resolve_batch_size(settings: dict, shape: PoolShape, whole_frame: bool, world_size: int = 1) -> int:
    """``train.batch_size``, or where it is unset the default for the pool's network (``STEPS_FIRST_BATCH_SIZE``
    for a matte or a fix that changes most pixels, ``whole_frame``; else ``DEFAULT_BATCH_SIZE``), rounded up
    to split evenly over ``world_size`` processes."""
    if settings.get("batch_size"):
        return int(settings["batch_size"])
    from duplidog.model import makes_matte

    steps_first = whole_frame or makes_matte(shape.in_channels, shape.out_channels)
    size = STEPS_FIRST_BATCH_SIZE if steps_first else DEFAULT_BATCH_SIZE
    return -(-size // world_size) * world_size


def check_pool(shape: PoolShape, pool_path, plan: Plan, plan_path, model_settings: dict) -> None:
    """The pool's scale, frames and channels must be the model settings' and the plan's."""
    scale = int(model_settings.get("scale", 1))
    if shape.target_size != scale * shape.tile_size:
        raise DuplidogError(
            f"{pool_path}: pool target tiles are {shape.target_size} px for {shape.tile_size} px source tiles, but "
            f"model.scale is {scale} (rebuild the pool from an ingest with this scale)"
        )
    temporal_frames = int(model_settings.get("temporal_frames", 0) or 0)
    if shape.temporal_frames != temporal_frames:
        raise DuplidogError(
            f"{pool_path}: pool tiles carry {2 * shape.temporal_frames + 1} frame(s) (temporal_frames "
            f"{shape.temporal_frames}), but model.temporal_frames is {temporal_frames} (rebuild the pool from an "
            f"ingest with this setting)"
        )
    in_channels, out_channels = shape.in_channels, shape.out_channels
    if (in_channels * (2 * temporal_frames + 1) != shape.stacked_channels or in_channels != len(plan.input_channels)
            or out_channels != len(plan.output_channels)):
        raise DuplidogError(
            f"{pool_path}: pool has {in_channels} -> {out_channels} channels but the plan {plan_path} says "
            f"{len(plan.input_channels)} -> {len(plan.output_channels)} (rebuild the pool)"
        )


def network_overrides(model_settings: dict, earlier: dict, group, whole_frame: bool = False) -> dict:
    """``model.overrides``, plus what a run from ``earlier`` weights (that network's config) must keep, plus
    ``WHOLE_FRAME_DEPTH`` for a fresh small network whose fix changes most pixels (``whole_frame``).

    The colour path's curves span the data's values; a run from earlier weights keeps the knots its
    curves were learnt on, and what its output means, or its weights would mean other values. It keeps
    the earlier network's normalisation and depth too, whose parameters its weights include or lack (a card
    written before normalisation existed does not say, and its network had none).
    """
    overrides = dict(model_settings.get("overrides") or {})
    if "curve_range" not in overrides:
        overrides["curve_range"] = earlier.get("curve_range") or value_range(group)
    if earlier:
        for setting in ("output_activation", "norm"):
            if setting not in overrides:
                overrides[setting] = earlier.get(setting, "none")
        if "depth" not in overrides and "depth" in earlier:
            overrides["depth"] = earlier["depth"]
    elif whole_frame and "depth" not in overrides and model_settings.get("preset", "small") in WHOLE_FRAME_PRESETS:
        overrides["depth"] = WHOLE_FRAME_DEPTH
    return overrides


def build_network(model_settings: dict, shape: PoolShape, overrides: dict, pool_path) -> torch.nn.Module:
    """The configured network for tiles of ``shape`` (on the CPU, freshly initialised)."""
    from duplidog.model import build_model

    model = build_model(model_settings.get("arch", "msrn"), model_settings.get("preset", "small"),
                        in_channels=shape.in_channels, out_channels=shape.out_channels,
                        **{**overrides, "scale": shape.scale, "temporal_frames": shape.temporal_frames})
    if shape.tile_size % model.size_multiple:
        raise DuplidogError(
            f"{pool_path}: pool tiles of {shape.tile_size} px are not a multiple of the network's size_multiple "
            f"{model.size_multiple} (set pool.tile_size to a multiple of it)"
        )
    return model


def parameter_groups(model: torch.nn.Module, lr: float, weight_decay: float, curve_lr_scale: float) -> list:
    """AdamW groups: the network's weights, and the colour path's curves (LUT values: a larger step,
    no decay, which would pull each knot's value towards 0 rather than towards a smooth curve)."""
    from duplidog.model.blocks import ChannelCurves

    curves = [p for m in model.modules() if isinstance(m, ChannelCurves) for p in m.parameters()]
    weights = [p for p in model.parameters() if all(p is not c for c in curves)]
    groups = [{"params": weights, "lr": lr, "weight_decay": weight_decay}]
    if curves:
        groups.append({"params": curves, "lr": lr * curve_lr_scale, "weight_decay": 0.0})
    return groups


@dataclass
class Parts:
    """What an optimizer step runs on and changes (``step.StepRunner``)."""

    model: torch.nn.Module
    ema: WeightAverage
    optimizer: torch.optim.Optimizer
    scheduler: TrainingSchedule
    scaler: torch.amp.GradScaler
    loss_mix: LossMix
    device: torch.device
    precision: Precision


def build_parts(model: torch.nn.Module, settings: dict, lr: float, precision: Precision, device: torch.device,
                border: int, length: RunLength, clock: Optional[TrainingClock] = None) -> Parts:
    """The weight average, AdamW at ``lr``, the schedule over ``length``, the scaler and the loss mix
    around ``model`` (already on ``device``)."""
    ema = WeightAverage(model, float(settings["ema_decay"]))
    optimizer = torch.optim.AdamW(parameter_groups(model, lr, float(settings["weight_decay"]),
                                                   float(settings["curve_lr_scale"])),
                                  betas=tuple(float(b) for b in settings["betas"]))
    warmup = int(round(float(settings["warmup_fraction"]) * length.schedule_steps))
    scheduler = TrainingSchedule(optimizer, length.total_steps, warmup, float(settings["min_lr"]),
                                 length.budget_seconds, clock)
    scaler = precision.scaler()
    loss_mix = LossMix(settings["losses"], border, float(settings["coarse_level_weight"]),
                       float(settings["charbonnier_eps"]), settings.get("vgg19_weights") or "",
                       autocast=precision.autocast, change_weight=float(settings["change_weight"]),
                       colour_split=bool(settings["colour_split"]),
                       logits=bool(getattr(model, "sigmoid_output", False)),
                       matte_edge_weight=float(settings["matte_edge_weight"])).to(device)
    return Parts(model, ema, optimizer, scheduler, scaler, loss_mix, device, precision)


def epoch_plan(tiles: int, settings: dict, seed: int) -> EpochPlan:
    """Which tiles each batch draws, and how they are turned (``data.EpochPlan``)."""
    return EpochPlan(tiles, int(settings["batch_size"]), float(settings["epoch_fraction"]), seed,
                     bool(settings["augment_dihedral"]))
