"""The training loop (stage 3): a tile pool and a plan in, a model directory out.

It reads top to bottom like nanoGPT's ``train.py``: settings, data, network, optimizer, resume, loop,
finish. Training counts optimizer steps, not epochs; an epoch is only the unit in which a random
subset of the pool is drawn (``duplidog.train.data``). Each step:

1. ``accumulate`` micro-batches run forward under autocast (bf16 / fp16 on GPUs, bf16 on CPUs that run
   it natively, else fp32) and every pyramid level's output is scored against the target
   (``duplidog.train.losses``);
2. the gradients are unscaled (fp16), clipped to ``grad_clip``, and AdamW steps -- unless they are not
   finite, in which case the step is skipped (and a run of such steps stops training with an error);
3. the schedule advances (linear warm-up, cosine decay to ``min_lr``) and the weight average follows.

Around it: validation every ``validate_every`` steps on the held-out keyframes through production
inference, checkpoints every ``checkpoint_every`` steps, on SIGTERM/SIGINT (the current step is
finished, a checkpoint written, then ``TrainingInterrupted`` is raised so the job exits non-zero) and
at the end. A rerun resumes from the newest checkpoint when the settings and the pool are the same.
``max_minutes`` ends the run early but cleanly: final validation, checkpoint and model as usual.

The saved model is the weight average (EMA), with a card that says how it was made.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import os
import random
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

from duplidog import temporal
from duplidog.atomic import atomic_write_json
from duplidog.core.card import ModelCard, configure_inference, read_card
from duplidog.core.modelstore import load_model, save_model
from duplidog.core.runtime import choose_device, choose_precision
from duplidog.errors import DuplidogError
from duplidog.train import checkpoint as ckpt
from duplidog.train.colour_fit import (BUDGET_SHARE, KEEP_SHARE, STEPS_PER_NETWORK_STEP, colour_path_held,
                                      explained_share, fit_colour_path, hold_colour_path, sample_pixels)
from duplidog.train.data import EpochPlan, make_batches, value_range
from duplidog.train.distributed import QuietMonitor, Ranks, StepForward
from duplidog.train.ema import WeightAverage
from duplidog.train.losses import LossMix
from duplidog.train.monitor import ActivationStats, TrainingMonitor, read_metrics
from duplidog.train.schedule import TrainingSchedule
from duplidog.train.validate import load_validation_frames, validate, write_validation_sheet

log = logging.getLogger(__name__)

#: Steps of a run given neither train.steps nor train.max_minutes (and the warm-up's measure with a budget alone).
DEFAULT_STEPS = 300
#: Consecutive steps with a non-finite loss or gradient after which training gives up.
MAX_NONFINITE_STEPS = 20


class TrainingInterrupted(DuplidogError):
    """SIGTERM, SIGINT or SIGHUP arrived: the step was finished and a checkpoint written; rerun to resume."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


class StopRequest:
    """SIGTERM/SIGINT/SIGHUP handlers that only raise a flag, so the loop can stop between steps.

    SIGHUP (the terminal that started the run closed) is a request to stop like the others, not a
    reason to lose the steps since the last checkpoint.

    A second signal while the first is being handled interrupts at once (KeyboardInterrupt), unless it
    comes within ``REPEAT_SECONDS`` of the first: a launcher (torchrun, srun) passes on the signal that
    its process group or job step has already delivered, and that copy is the same request. Handlers
    are installed only from the main thread (Python allows nothing else) and restored afterwards.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT) + ((signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ())
    REPEAT_SECONDS = 2.0

    def __init__(self):
        self.signum: Optional[int] = None
        self._received = 0.0
        self._previous: Dict[int, Any] = {}

    def _handle(self, signum, _frame) -> None:
        if self.signum is not None:
            if time.monotonic() - self._received < self.REPEAT_SECONDS:
                return
            raise KeyboardInterrupt
        self.signum, self._received = signum, time.monotonic()
        log.warning("%s received: finishing this step, writing a checkpoint, then stopping",
                    signal.Signals(signum).name)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def keyframe_fingerprint(manifest_path: str | os.PathLike, frames) -> str:
    """SHA-256 over the keyframes' source and target paths, sizes and modification times.

    Cheap (no pixels read) yet changes whenever a keyframe file is replaced or touched; the pool's
    own fingerprint covers the pixel content that training actually saw.
    """
    from duplidog.ingest import read_manifest

    manifest = read_manifest(manifest_path)
    digest = hashlib.sha256()
    wanted = {int(f) for f in frames}
    for _, row in manifest.sort_values("frame").iterrows():
        if int(row["frame"]) not in wanted:
            continue
        for column in ("source", "target"):
            path = str(row.get(column, ""))
            digest.update(f"{row['frame']}:{column}:{path}".encode())
            if path and os.path.exists(path):
                info = os.stat(path)
                digest.update(f":{info.st_size}:{info.st_mtime_ns}".encode())
    return digest.hexdigest()


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
    shutil.rmtree(work_dir / "tensorboard", ignore_errors=True)
    for path in list(work_dir.glob("contact_*.png")) + [work_dir / "loss.png", work_dir / "metrics.csv"]:
        path.unlink(missing_ok=True)


def _describe(config: dict) -> str:
    keys = ("arch", "preset", "in_channels", "out_channels", "levels", "width", "depth", "stages")
    return ", ".join(f"{k}={config[k]}" for k in keys if k in config) or "unknown"


def _scores_only(metrics: Dict[str, Any]) -> Dict[str, Any]:
    """Validation metrics without the result tensors (for logs, checkpoints and the card)."""
    return {k: v for k, v in metrics.items() if not k.startswith("_")}


class StepRunner:
    """One optimizer step: ``accumulate`` micro-batches forward and backward, then clip, AdamW, schedule
    and weight average. Shared by ``train`` and ``bench_train`` so the benchmark times the real step."""

    def __init__(self, model, forward, loss_mix, optimizer, scheduler, scaler, ema, precision, accumulate: int,
                 grad_clip: float, tile_size: int, ranks: Optional[Ranks] = None):
        self.model, self.loss_mix = model, loss_mix
        self.optimizer, self.scheduler, self.scaler, self.ema = optimizer, scheduler, scaler, ema
        self.precision, self.accumulate, self.grad_clip, self.tile_size = precision, accumulate, grad_clip, tile_size
        # The colour path trained on a loss of its own (train.colour_split), where the network has one.
        self.split_colour = loss_mix.colour_split and getattr(model, "colour", None) is not None
        # Several processes: DistributedDataParallel around the whole forward pass (``distributed``).
        self.ranks = ranks or Ranks()
        self.forward = self.ranks.data_parallel(StepForward(model, forward, self.split_colour))

    def __call__(self, stream, stats: Optional[ActivationStats] = None):
        """Returns (loss, {term: value}, finite) averaged over the micro-batches."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum, parts_sum = 0.0, {}
        for micro in range(self.accumulate):
            source, target = (t.contiguous(memory_format=torch.channels_last) for t in next(stream))
            with self.ranks.micro_batch(self.forward, last=micro == self.accumulate - 1):
                with self.precision.autocast(), (stats if stats is not None and micro == 0 else contextlib.nullcontext()):
                    outputs, colour_output = self.forward(source)
                # A temporal network's losses judge the change against the tile's own frame (its first channels).
                plate = temporal.centre(source, int(getattr(self.model, "in_channels", source.shape[1])))
                loss, parts = self.loss_mix(outputs, target, self.tile_size, plate, colour_output)
                self.scaler.scale(loss / self.accumulate).backward()
            loss_sum += loss.item() / self.accumulate
            for name, value in parts.items():
                parts_sum[name] = parts_sum.get(name, 0.0) + float(value.detach()) / self.accumulate
        loss_sum, parts_sum = self.ranks.mean(loss_sum, parts_sum)
        self.scaler.unscale_(self.optimizer)
        limit = self.grad_clip if self.grad_clip > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), limit)
        finite = math.isfinite(loss_sum) and bool(torch.isfinite(norm))
        if finite or self.scaler.is_enabled():
            self.scaler.step(self.optimizer)  # the scaler itself skips non-finite fp16 steps
        self.scaler.update()
        self.scheduler.step()
        self.ema.update(self.model)
        return loss_sum, parts_sum, finite


def train(pool_path, plan_path, manifest_path, model_dir, work_dir, config: dict) -> Dict[str, Any]:
    """Train a network on the pool, validate on the plan's keyframes, and save it to ``model_dir``.

    Args:
        pool_path: the Zarr tile pool (``duplidog.pool``).
        plan_path, manifest_path: ingest's plan.json and manifest.csv (channels, colour space,
            validation keyframes and their files).
        model_dir: where the finished model and its card go (``duplidog.core.modelstore``).
        work_dir: checkpoints, metrics.csv, tensorboard/, loss.png and contact sheets.
        config: the whole resolved shot config (``model``, ``train``, ``infer`` sections, ``seed``).

    Returns the run's metrics (steps, final loss, validation PSNR/SSIM, why it stopped...).
    Raises ``TrainingInterrupted`` (a DuplidogError) after SIGTERM/SIGINT, once a checkpoint is written.
    """
    from duplidog import colour
    from duplidog.ingest import read_plan
    from duplidog.model import build_model
    from duplidog.pool import open_pool, pool_fingerprint, pool_temporal_frames

    called = time.monotonic()
    ranks = Ranks.current()  # one process, or one of several sharing each batch (``distributed``)
    clock = ranks.clock()  # the budget's clock: a resumed run continues the earlier runs' time
    settings = config["train"]
    model_settings = config.get("model", {})
    seed = int(config.get("seed", 0))
    work_dir, model_dir = Path(work_dir), Path(model_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    checkpoints = work_dir / "checkpoints"
    if ranks.first:
        (work_dir / "result.json").unlink(missing_ok=True)  # written again when this run ends
    max_minutes = settings.get("max_minutes")
    budget_seconds = 60.0 * float(max_minutes) if max_minutes else None
    # Without a step count the budget alone ends the run (and the schedule); without either, DEFAULT_STEPS.
    total_steps = int(settings["steps"]) if settings.get("steps") else (None if budget_seconds else DEFAULT_STEPS)
    accumulate = max(1, int(settings["accumulate"]))
    ranks.check_batch(int(settings["batch_size"]))

    # -- data ------------------------------------------------------------------------------------------
    plan = read_plan(plan_path)
    group = open_pool(pool_path)
    pool_hash = pool_fingerprint(pool_path)
    border = int(group.attrs.get("border", 0))
    n_tiles, stacked_channels, tile_size, _ = group["source"].shape
    out_channels, target_size = group["target"].shape[1], group["target"].shape[-1]
    scale = int(model_settings.get("scale", 1))
    if target_size != scale * tile_size:
        raise DuplidogError(
            f"{pool_path}: pool target tiles are {target_size} px for {tile_size} px source tiles, but model.scale "
            f"is {scale} (rebuild the pool from an ingest with this scale)"
        )
    temporal_frames = int(model_settings.get("temporal_frames", 0) or 0)
    pool_temporal = pool_temporal_frames(group)
    if pool_temporal != temporal_frames:
        raise DuplidogError(
            f"{pool_path}: pool tiles carry {2 * pool_temporal + 1} frame(s) (temporal_frames {pool_temporal}), but "
            f"model.temporal_frames is {temporal_frames} (rebuild the pool from an ingest with this setting)"
        )
    in_channels = stacked_channels // (2 * temporal_frames + 1)  # each frame's; the centre frame's first
    if (in_channels * (2 * temporal_frames + 1) != stacked_channels or in_channels != len(plan["input_channels"])
            or out_channels != len(plan["output_channels"])):
        raise DuplidogError(
            f"{pool_path}: pool has {in_channels} -> {out_channels} channels but the plan {plan_path} says "
            f"{len(plan['input_channels'])} -> {len(plan['output_channels'])} (rebuild the pool)"
        )
    device = ranks.place(choose_device(settings["device"], key="train.device"))
    precision = choose_precision(device, settings["precision"], key="train.precision", reduced_on_cpu=True)

    # -- how the run begins: resumed, trained further, fine-tuned or from scratch -----------------------
    init_from = settings.get("init_from") or ""
    own_model = bool(init_from) and Path(init_from).resolve() == model_dir.resolve()
    start = ranks.first_decides(
        lambda: ckpt.find_start(checkpoints, config, pool_hash, bool(settings["start_over"]), own_model))
    log.info("train: %s", start.why)
    if own_model and start.kind == "fresh":
        # The shot's own model is what its checkpoints hold (Snakemake removes the model files before
        # the job); with none left the run starts afresh rather than failing.
        log.warning("train: train.init_from is this shot's own model, which has no checkpoint to start from")
        init_from = ""
    warm_from = init_from if start.kind == "fresh" else ""

    # -- network and optimizer --------------------------------------------------------------------------
    seed_everything(seed)
    overrides = dict(model_settings.get("overrides") or {})
    # The colour path's curves span the data's values; a run from earlier weights keeps the knots its
    # curves were learnt on, and what its output means, or its weights would mean other values.
    if start.state is not None:
        previous = json.loads(start.state.get("model_config") or "{}")
    else:
        previous = read_card(warm_from).network if warm_from else {}
    if "curve_range" not in overrides:
        overrides["curve_range"] = previous.get("curve_range") or value_range(group)
    if "output_activation" not in overrides and previous:
        overrides["output_activation"] = previous.get("output_activation", "none")
    model = build_model(model_settings.get("arch", "msrn"), model_settings.get("preset", "small"),
                        in_channels=in_channels, out_channels=out_channels,
                        **{**overrides, "scale": scale, "temporal_frames": temporal_frames})
    configure_inference(model, edge_context=border)  # validation, like production, mirrors this much
    if tile_size % model.size_multiple:
        raise DuplidogError(
            f"{pool_path}: pool tiles of {tile_size} px are not a multiple of the network's size_multiple "
            f"{model.size_multiple} (set pool.tile_size to a multiple of it)"
        )
    lr = float(settings["lr"])
    if start.kind == "fine-tune":
        model.load_state_dict(start.state["ema"]["model"])  # the weights the shot's model was saved with
    elif warm_from:
        warm_start(model, warm_from)
    if start.kind == "fine-tune" or warm_from:
        lr *= float(settings["finetune_lr_scale"])
        log.info("train: starting from %s, learning rate scaled to %.3g", start.source or warm_from, lr)
    # Channels-last: the layout the CPU's (oneDNN) and the GPU's convolution kernels run fastest on.
    model.to(device=device, memory_format=torch.channels_last)
    ema = WeightAverage(model, float(settings["ema_decay"]))
    optimizer = torch.optim.AdamW(parameter_groups(model, lr, float(settings["weight_decay"]),
                                                   float(settings["curve_lr_scale"])),
                                  betas=tuple(float(b) for b in settings["betas"]))
    warmup = int(round(float(settings["warmup_fraction"]) * (total_steps or DEFAULT_STEPS)))
    scheduler = TrainingSchedule(optimizer, total_steps, warmup, float(settings["min_lr"]), budget_seconds, clock)
    scaler = precision.scaler()
    loss_mix = LossMix(settings["losses"], border, float(settings["coarse_level_weight"]),
                       float(settings["charbonnier_eps"]), settings.get("vgg19_weights") or "",
                       autocast=precision.autocast, change_weight=float(settings["change_weight"]),
                       colour_split=bool(settings["colour_split"]),
                       logits=bool(getattr(model, "sigmoid_output", False)),
                       matte_edge_weight=float(settings["matte_edge_weight"])).to(device)
    epochs = EpochPlan(n_tiles, int(settings["batch_size"]), float(settings["epoch_fraction"]), seed,
                       bool(settings["augment_dihedral"]))

    # -- resume ------------------------------------------------------------------------------------------
    start_step, best_psnr, best_step, last_validation = 0, -math.inf, None, {}
    state = start.state if start.kind in ("resume", "continue") else None
    if state is not None:
        model.load_state_dict(state["model"])
        if state.get("colour_path_held"):
            hold_colour_path(model.colour)  # as the run that wrote the checkpoint decided
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        if state["scaler"] and scaler.is_enabled():
            scaler.load_state_dict(state["scaler"])
        scheduler.load_state_dict(state["scheduler"])
        ckpt.restore_rng_state(state["rng"])
        start_step = int(state["step"])
        best_psnr = float(state["best_psnr"])
        best_step = int(state["best_step"]) if int(state["best_step"]) >= 0 else None
        last_validation = json.loads(state.get("validation", "{}"))
    if start.kind == "continue":
        added = (total_steps or DEFAULT_STEPS) - start_step
        scheduler.continue_from_here(float(settings["finetune_lr_scale"]),
                                     int(round(float(settings["warmup_fraction"]) * max(1, added))))
    resumed_from = start_step if state is not None else None
    del state
    start.state = None  # the weights are in the model now; do not hold a second copy
    if resumed_from is None:
        if ranks.first:
            clear_run_outputs(work_dir)
        if getattr(model, "colour", None) is not None and int(settings["colour_fit_steps"]) > 0:
            fit_steps = int(settings["colour_fit_steps"])
            if total_steps:
                fit_steps = min(fit_steps, STEPS_PER_NETWORK_STEP * total_steps)
            fit_colour_path_first(model, ema, group, border, loss_mix, settings, fit_steps, seed,
                                  BUDGET_SHARE * budget_seconds if budget_seconds else None, clock)

    def checkpoint_state(step: int) -> Dict[str, Any]:
        return {
            "step": step,
            "model": model.state_dict(),
            "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": ckpt.capture_rng_state(),
            "data": {"seed": seed, "next_batch": step * accumulate, "epoch": epochs.epoch_of(step * accumulate),
                     "batches_per_epoch": epochs.batches_per_epoch},
            "config": json.dumps(config, sort_keys=True, default=str),
            "identity": json.dumps(ckpt.training_identity(config), sort_keys=True, default=str),
            "config_fingerprint": ckpt.config_fingerprint(config),
            "pool_fingerprint": pool_hash,
            "model_config": json.dumps(model.config, default=str),
            "best_psnr": best_psnr,
            "best_step": -1 if best_step is None else best_step,
            "validation": json.dumps(_scores_only(last_validation), default=str),
            "colour_path_held": colour_path_held(model),
        }

    def write_checkpoint(step: int) -> Path:
        if not ranks.first:  # rank 0 writes it
            return ckpt.checkpoint_path(checkpoints, step)
        path = ckpt.save_checkpoint(checkpoints, checkpoint_state(step))
        ckpt.prune_checkpoints(checkpoints, int(settings["keep_checkpoints"]), best_step)
        return path

    if start.kind == "fine-tune":
        write_checkpoint(0)  # the earlier run's checkpoints are superseded: a rerun resumes the fine-tune

    # -- the run ------------------------------------------------------------------------------------------
    batches, data_choice = make_batches(str(pool_path), group, epochs, device, settings)
    forward = torch.compile(model) if settings["compile"] else model
    frames = load_validation_frames(plan, manifest_path, int(settings["validation_frames_max"])) if ranks.first else []
    monitor = TrainingMonitor(work_dir, total_steps, start_step, loss_mix.names, settings,
                              read_metrics(work_dir / "metrics.csv") if resumed_from is not None else None
                              ) if ranks.first else QuietMonitor()
    monitor.write(f"train: {n_tiles} tiles of {tile_size} px (border {border}), {data_choice.mode}; "
                  f"{device} {precision.name}; {model.config.get('arch')} {model.config.get('preset')} "
                  f"({sum(p.numel() for p in model.parameters())} parameters); steps {start_step} -> "
                  f"{total_steps or f'the end of {max_minutes} minutes'}"
                  + (f"; {ranks.world_size} processes, {int(settings['batch_size']) // ranks.world_size} tiles "
                     "of each batch apiece" if ranks.many else ""))

    latest_results = []

    def run_validation(step: int) -> Dict[str, Any]:
        nonlocal best_psnr, best_step, last_validation, latest_results
        if not frames:
            return {}
        metrics = validate(ema.model, frames, config.get("infer", {}))
        latest_results = metrics["_results"]
        picture = write_validation_sheet(work_dir / f"contact_{step:08d}.png", frames, latest_results,
                                         title=f"step {step}")
        monitor.image("validation/contact_sheet", picture, step)
        last_validation = _scores_only(metrics)
        monitor.validation(step, {k: v for k, v in last_validation.items() if k != "frames"})
        improved = metrics["psnr"] > best_psnr
        if improved:
            best_psnr, best_step = float(metrics["psnr"]), step
        return metrics

    ranks.start_together(model, ema, optimizer, scheduler)
    run_step = StepRunner(model, forward, loss_mix, optimizer, scheduler, scaler, ema, precision, accumulate,
                          float(settings["grad_clip"]), tile_size, ranks)
    stats_every = int(settings["activation_stats_every"])
    validate_every, checkpoint_every = int(settings["validate_every"]), int(settings["checkpoint_every"])
    stopped_by, step, last_loss, nonfinite = "steps", start_step, float("nan"), 0
    validated_at = checkpointed_at = None
    try:
        with StopRequest() as stop:
            stream = ranks.share(batches.batches(start_step * accumulate))
            while total_steps is None or step < total_steps:
                # Every rank stops at the same step: a signal to any, the budget on rank 0's clock.
                signum, seconds = ranks.agree(stop.signum, clock)
                if signum is not None:  # checked here so a signal during validation counts too
                    path = write_checkpoint(step)
                    ranks.barrier()  # no rank exits (and has its launcher stop the rest) before it is written
                    name = signal.Signals(signum).name
                    raise TrainingInterrupted(
                        f"{work_dir}: training stopped by {name} at step {step}; checkpoint {path.name} written, "
                        f"rerun to resume", signum)
                if budget_seconds is not None and seconds >= budget_seconds:
                    stopped_by = "max_minutes"
                    monitor.write(f"train: train.max_minutes ({max_minutes}) reached at step {step}; stopping")
                    break
                watch = stats_every > 0 and (step + 1) % stats_every == 0 and not settings["compile"] and ranks.first
                stats = ActivationStats(model) if watch else None
                loss_sum, parts_sum, finite = run_step(stream, stats)
                if stats is not None:
                    monitor.activations(step + 1, stats.summary())
                step += 1
                nonfinite = 0 if finite else nonfinite + 1
                if nonfinite >= MAX_NONFINITE_STEPS:
                    raise DuplidogError(
                        f"{pool_path}: training diverged: {nonfinite} steps in a row with a non-finite loss or "
                        f"gradient up to step {step} (lower train.lr or set train.precision: fp32)"
                    )
                last_loss = loss_sum
                monitor.step(step, loss_sum, parts_sum, scheduler.get_last_lr()[0])

                if validate_every > 0 and step % validate_every == 0 and step != total_steps:
                    previous_best = best_step
                    run_validation(step)
                    validated_at = step
                    if best_step != previous_best and best_step == step:
                        write_checkpoint(step)
                        checkpointed_at = step
                if checkpoint_every > 0 and step % checkpoint_every == 0 and checkpointed_at != step:
                    write_checkpoint(step)
                    checkpointed_at = step

            # -- finish: validate the final weights, checkpoint, save the model ---------------------------
            if validated_at != step or not latest_results:
                run_validation(step)
            if not frames and ranks.first:
                log.warning("train: the plan names no keyframes to validate on; the model is saved unvalidated")
            final_checkpoint = write_checkpoint(step)
            if not ranks.first:
                return {"steps": step, "stopped_by": stopped_by, "loss": last_loss, "rank": ranks.rank}
            card = {
                "model": model.config,
                "input_channels": list(plan["input_channels"]),
                "output_channels": list(plan["output_channels"]),
                "passthrough_channels": list(plan.get("passthrough_channels") or []),
                "colorspace": colour.describe(plan["colorspace"]),
                "scale": int(getattr(model, "scale", 1)),
                "temporal_frames": int(getattr(model, "temporal_frames", 0)),
                "reach": int(model.reach),
                "size_multiple": int(model.size_multiple),
                "edge_context": border,
                "training": {
                    "shot": plan.get("shot"),
                    "steps": step,
                    "stopped_by": stopped_by,
                    "settings": {k: v for k, v in settings.items()},
                    "seed": seed,
                    "device": str(device),
                    "precision": precision.name,
                    "tile_size": int(tile_size),
                    "border": border,
                    "pool_tiles": int(n_tiles),
                    "pool_fingerprint": pool_hash,
                    "keyframe_fingerprint": keyframe_fingerprint(
                        manifest_path, list(plan.get("train_frames") or []) + list(plan.get("validation_frames") or [])),
                    "train_frames": list(plan.get("train_frames") or []),
                    "validation_frames": [f.frame for f in frames],
                    "init_from": init_from or None,
                    "start": start.kind,
                    "started_from": str(start.source) if start.source else None,
                },
                "metrics": {"loss": last_loss, "validation": last_validation,
                            "best_validation_psnr": best_psnr if best_step is not None else None,
                            "best_validation_step": best_step},
            }
            save_model(model_dir, ema.model, card)
            if latest_results:
                write_validation_sheet(work_dir / "contact_final.png", frames, latest_results,
                                       title=f"final model, step {step}")
    finally:
        batches.close()
        monitor.close()

    minutes = (time.monotonic() - called) / 60.0
    result = {
        "steps": step,
        "target_steps": total_steps,
        "stopped_by": stopped_by,
        "resumed_from": resumed_from,
        "start": start.kind,
        "loss": last_loss,
        "validation_psnr": last_validation.get("psnr"),
        "validation_ssim": last_validation.get("ssim"),
        "validation_psnr_identity": last_validation.get("psnr_identity"),
        "best_validation_psnr": best_psnr if best_step is not None else None,
        "best_validation_step": best_step,
        "minutes": round(minutes, 3),
        "device": str(device),
        "precision": precision.name,
        "data": data_choice.mode,
        "checkpoint": str(final_checkpoint),
        "model_dir": str(model_dir),
    }
    atomic_write_json(work_dir / "result.json", result)
    log.info("%s", summary_line(result))
    return result


def summary_line(result: Dict[str, Any]) -> str:
    """One line on how training ended, for the job's log and the command line."""
    how = {"continue": ", trained further", "fine-tune": ", fine-tuned", "resume": ", resumed"}.get(result["start"], "")
    line = (f"train: done: {result['steps']} steps in {result['minutes']:.1f} min (stopped by "
            f"{result['stopped_by']}{how}); ")
    if result.get("validation_psnr") is None:
        line += "not validated (no keyframe to validate on); "
    else:
        line += f"validation PSNR {result['validation_psnr']:.2f} dB"
        if result.get("validation_psnr_identity") is not None:
            line += f" against {result['validation_psnr_identity']:.2f} dB doing nothing"
        line += "; "
    return line + f"model {result['model_dir']}"
