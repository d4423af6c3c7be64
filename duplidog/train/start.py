"""How a training run begins, and where it stands (``Progress``) when it does.

``checkpoint.find_start`` decides from the newest checkpoint: resumed, trained further ("continue"),
fine-tuned from the shot's model, or from scratch ("fresh"), which may warm-start from another model
(``train.init_from``). A resumed run gets back its weights, optimizer, schedule, RNG and progress; a
fresh one clears the last run's curves and pictures and first fits the colour path alone
(``colour_fit``).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from duplidog.core.card import ModelCard, read_card
from duplidog.core.layout import TrainFiles
from duplidog.core.modelstore import load_model
from duplidog.errors import DuplidogError
from duplidog.train import checkpoint as ckpt
from duplidog.train.colour_fit import (BUDGET_SHARE, KEEP_SHARE, STEPS_PER_NETWORK_STEP, explained_share,
                                       fit_colour_path, hold_colour_path, sample_pixels)
from duplidog.train.distributed import Ranks
from duplidog.train.setup import Parts, RunSettings, parameter_groups

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Where a run stands: its step, its last loss and validation, the best validation so far, and the
    steps it last validated and checkpointed at. ``resumed_from`` is the step it resumed from (None:
    it did not resume)."""

    step: int = 0
    resumed_from: Optional[int] = None
    loss: float = float("nan")
    nonfinite: int = 0  # steps in a row with a non-finite loss or gradient
    stopped_by: str = "steps"
    validation: Dict[str, Any] = field(default_factory=dict)  # the last validation's scores
    results: List[torch.Tensor] = field(default_factory=list)  # the last validation's frames
    best_psnr: float = -math.inf
    best_step: Optional[int] = None
    validated_at: Optional[int] = None
    checkpointed_at: Optional[int] = None


def choose_start(ranks: Ranks, run: RunSettings, pool_hash: str) -> Tuple[ckpt.Start, str]:
    """How the run begins (rank 0 decides), and the ``train.init_from`` model that still applies."""
    settings = run.settings
    init_from = settings.get("init_from") or ""
    own_model = bool(init_from) and Path(init_from).resolve() == run.model_dir.resolve()
    start = ranks.first_decides(
        lambda: ckpt.find_start(run.checkpoints, run.config, pool_hash, bool(settings["start_over"]), own_model))
    log.info("train: %s", start.why)
    if own_model and start.kind == "fresh":
        # The shot's own model is what its checkpoints hold (Snakemake removes the model files before
        # the job); with none left the run starts afresh rather than failing.
        log.warning("train: train.init_from is this shot's own model, which has no checkpoint to start from")
        init_from = ""
    return start, init_from


def earlier_network(start: ckpt.Start, warm_from: str) -> dict:
    """The config of the network whose weights the run starts from ({} for none)."""
    if start.state is not None:
        return json.loads(start.state.get("model_config") or "{}")
    return read_card(warm_from).network if warm_from else {}


def load_start_weights(model: torch.nn.Module, start: ckpt.Start, warm_from: str, settings: dict) -> float:
    """Load the weights a fine-tune or a warm start begins with; returns the learning rate (scaled by
    ``train.finetune_lr_scale`` for them)."""
    lr = float(settings["lr"])
    if start.kind == "fine-tune":
        model.load_state_dict(start.state["ema"]["model"])  # the weights the shot's model was saved with
    elif warm_from:
        warm_start(model, warm_from)
    if start.kind == "fine-tune" or warm_from:
        lr *= float(settings["finetune_lr_scale"])
        log.info("train: starting from %s, learning rate scaled to %.3g", start.source or warm_from, lr)
    return lr


def warm_start(model: torch.nn.Module, model_dir: str | os.PathLike) -> ModelCard:
    """Copy the weights of the model in ``model_dir`` into ``model``; every tensor must match in shape."""
    previous, card = load_model(model_dir, "cpu")
    theirs_scale, mine_scale = card.scale, int(getattr(model, "scale", 1))
    if theirs_scale != mine_scale:
        raise DuplidogError(
            f"{model_dir}: train.init_from model upscales x{theirs_scale}, this shot's network x{mine_scale} "
            f"(model.scale): a model cannot warm-start a network of another scale"
        )
    theirs_frames, mine_frames = card.temporal_frames, int(getattr(model, "temporal_frames", 0))
    if theirs_frames != mine_frames:
        raise DuplidogError(
            f"{model_dir}: train.init_from model reads {2 * theirs_frames + 1} frame(s) (temporal_frames "
            f"{theirs_frames}), this shot's network {2 * mine_frames + 1} (model.temporal_frames {mine_frames}): a "
            f"model cannot warm-start a network that reads another number of frames"
        )
    theirs, mine = previous.state_dict(), model.state_dict()
    differing = [k for k in mine if k not in theirs or tuple(theirs[k].shape) != tuple(mine[k].shape)]
    differing += [k for k in theirs if k not in mine]
    if differing:
        raise DuplidogError(
            f"{model_dir}: train.init_from model does not fit this shot's network ({len(differing)} weights differ, "
            f"first {differing[0]}; its network {_describe(card.network)}, this one {_describe(model.config)})"
        )
    model.load_state_dict(theirs)
    return card


def _describe(config: dict) -> str:
    keys = ("arch", "preset", "in_channels", "out_channels", "levels", "width", "depth", "stages")
    return ", ".join(f"{k}={config[k]}" for k in keys if k in config) or "unknown"


def resume(parts: Parts, start: ckpt.Start, run: RunSettings) -> Progress:
    """Restore a resumed or continued run's state into ``parts`` and the RNGs; its progress (or a new
    run's). A continued run's schedule gets a new segment from the checkpoint's step."""
    progress = Progress()
    state = start.state if start.kind in ("resume", "continue") else None
    if state is not None:
        parts.model.load_state_dict(state["model"])
        if state.get("colour_path_held"):
            hold_colour_path(parts.model.colour)  # as the run that wrote the checkpoint decided
        parts.ema.load_state_dict(state["ema"])
        parts.optimizer.load_state_dict(state["optimizer"])
        if state["scaler"] and parts.scaler.is_enabled():
            parts.scaler.load_state_dict(state["scaler"])
        parts.scheduler.load_state_dict(state["scheduler"])
        ckpt.restore_rng_state(state["rng"])
        progress.step = progress.resumed_from = int(state["step"])
        progress.best_psnr = float(state["best_psnr"])
        progress.best_step = int(state["best_step"]) if int(state["best_step"]) >= 0 else None
        progress.validation = json.loads(state.get("validation", "{}"))
    if start.kind == "continue":
        added = run.length.schedule_steps - progress.step
        parts.scheduler.continue_from_here(float(run.settings["finetune_lr_scale"]),
                                           int(round(float(run.settings["warmup_fraction"]) * max(1, added))))
    start.state = None  # the weights are in the model now; do not hold a second copy
    return progress


def begin_fresh(parts: Parts, group, border: int, run: RunSettings, ranks: Ranks, clock) -> None:
    """Before a run from scratch: clear the last run's outputs, then fit the colour path first."""
    settings, length = run.settings, run.length
    if ranks.first:
        clear_run_outputs(run.work_dir)
    if getattr(parts.model, "colour", None) is not None and int(settings["colour_fit_steps"]) > 0:
        fit_steps = int(settings["colour_fit_steps"])
        if length.total_steps:
            fit_steps = min(fit_steps, STEPS_PER_NETWORK_STEP * length.total_steps)
        seconds = BUDGET_SHARE * length.budget_seconds if length.budget_seconds else None
        fit_colour_path_first(parts.model, parts.ema, group, border, parts.loss_mix, settings, fit_steps, run.seed,
                              seconds, clock)


def fit_colour_path_first(model, ema, group, border: int, loss_mix, settings: dict, steps: int, seed: int,
                          seconds: Optional[float], clock) -> None:
    """Before a fresh run: fit the colour path alone where the fix changes most pixels (``colour_fit``),
    and keep the fit only where it carries most of the change (``KEEP_SHARE``)."""
    pixels = sample_pixels(group, border, loss_mix.change_threshold, 2 * loss_mix.change_radius, seed)
    if not pixels.needs_fit:
        log.info("train: colour path not fitted first: the fix changes %.0f %% of the pixels (a local edit)",
                 100 * pixels.changed_share)
        return
    before_fit = copy.deepcopy(model.colour.state_dict())
    groups = parameter_groups(model.colour, float(settings["colour_fit_lr"]), 0.0, float(settings["curve_lr_scale"]))

    def explains(error: float) -> Optional[float]:  # None where there is no identity to compare with
        return explained_share(pixels.source, pixels.target, error) if model.residual else None

    def give_up(error: float) -> bool:
        share = explains(error)
        return share is not None and share < KEEP_SHARE / 2

    fit = fit_colour_path(model.colour, pixels.source, pixels.target, groups, steps, seed, seconds, clock, give_up)
    log.info("train: colour path fitted alone on %d pixels: %d steps in %.1f s%s, squared error %.3g -> %.3g",
             pixels.source.shape[0], fit["steps"], fit["seconds"], " (ended early)" if fit["gave_up"] else "",
             fit["error_before"], fit["error_after"])
    explained = explains(fit["error_after"])
    if explained is not None and explained < KEEP_SHARE:
        hold_colour_path(model.colour, before_fit)
        log.info("train: the fit explains %.0f %% of the change (under %.0f %%): not a per-pixel colour fix, so "
                 "the colour path stays as it was and the encoder-decoder learns the whole fix",
                 100 * explained, 100 * KEEP_SHARE)
    ema.model.load_state_dict(model.state_dict())  # the average starts from the colour path kept


def clear_run_outputs(work_dir: Path) -> None:
    """Before a fresh start, remove an earlier run's curves and pictures so they cannot be mixed in.

    (Checkpoints are kept or superseded by ``checkpoint.find_start``; metrics.csv is rewritten.)
    """
    files = TrainFiles(work_dir)
    shutil.rmtree(files.tensorboard, ignore_errors=True)
    for path in files.contact_sheets() + [files.loss_plot, files.metrics]:
        path.unlink(missing_ok=True)
