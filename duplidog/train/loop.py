"""The training loop (stage 3): a tile pool and a plan in, a model directory out.

``train`` reads top to bottom like nanoGPT's ``train.py``: settings, data, how the run begins, network
and optimizer (``setup``), resume (``start``), then the ``Trainer`` runs the loop and finishes. Training
counts optimizer steps, not epochs; an epoch is only the unit in which a random subset of the pool is
drawn (``duplidog.train.data``). Each step (``step.StepRunner``):

1. ``accumulate`` micro-batches run forward under autocast (bf16 / fp16 on GPUs, bf16 on CPUs that run
   it natively, else fp32) and every pyramid level's output is scored against the target
   (``duplidog.train.losses``);
2. the gradients are unscaled (fp16), clipped to ``grad_clip``, and AdamW steps -- unless they are not
   finite, in which case the step is skipped (and a run of such steps stops training with an error);
3. the schedule advances (linear warm-up, cosine decay to ``min_lr``) and the weight average follows.

Around it: validation every ``validate_every`` steps on the held-out keyframes through production
inference, checkpoints every ``checkpoint_every`` steps, on SIGTERM/SIGINT/SIGHUP (the current step is
finished, a checkpoint written, then ``TrainingInterrupted`` is raised so the job exits non-zero;
``stop``) and at the end. A rerun resumes from the newest checkpoint when the settings and the pool are
the same. ``max_minutes`` ends the run early but cleanly: final validation, checkpoint and model as usual.

The saved model is the weight average (EMA), with a card that says how it was made (``finish``).
"""

from __future__ import annotations

import json
import logging
import signal
import time
from pathlib import Path
from typing import Any, Dict

import torch

from duplidog.atomic import atomic_write_json
from duplidog.core.card import configure_inference
from duplidog.core.layout import TrainFiles, checkpoint_path
from duplidog.core.modelstore import save_model
from duplidog.core.runtime import choose_device, choose_precision
from duplidog.errors import DuplidogError
from duplidog.train import checkpoint as ckpt
from duplidog.train.colour_fit import colour_path_held
from duplidog.train.data import make_batches
from duplidog.train.distributed import QuietMonitor, Ranks
from duplidog.train.finish import model_card, run_result, summary_line
from duplidog.train.monitor import ActivationStats, TrainingMonitor, read_metrics
from duplidog.train.setup import (Inputs, Parts, RunSettings, build_network, build_parts, changes_most_pixels,
                                  epoch_plan, network_overrides, open_inputs, resolve_batch_size, seed_everything)
from duplidog.train.start import (Progress, begin_fresh, choose_start, earlier_network, load_start_weights,
                                  resume)
from duplidog.train.step import StepRunner
from duplidog.train.stop import StopRequest, TrainingInterrupted
from duplidog.train.validate import load_validation_frames, validate, write_validation_sheet

log = logging.getLogger(__name__)

__all__ = ["train", "Trainer", "TrainingInterrupted"]

#: Consecutive steps with a non-finite loss or gradient after which training gives up.
MAX_NONFINITE_STEPS = 20


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
    called = time.monotonic()
    ranks = Ranks.current()  # one process, or one of several sharing each batch (``distributed``)
    clock = ranks.clock()  # the budget's clock: a resumed run continues the earlier runs' time
    run = RunSettings.from_config(config, work_dir, model_dir)
    run.work_dir.mkdir(parents=True, exist_ok=True)
    if ranks.first:
        TrainFiles(run.work_dir).result.unlink(missing_ok=True)  # written again when this run ends

    # -- data ------------------------------------------------------------------------------------------
    inputs = open_inputs(pool_path, plan_path, manifest_path, run.model_settings)
    whole_frame = changes_most_pixels(inputs.group, inputs.shape)
    run = run.with_batch_size(resolve_batch_size(run.settings, inputs.shape, whole_frame, ranks.world_size))
    settings = run.settings
    ranks.check_batch(int(settings["batch_size"]))
    device = ranks.place(choose_device(settings["device"], key="train.device"))
    precision = choose_precision(device, settings["precision"], key="train.precision", reduced_on_cpu=True)

    # -- how the run begins: resumed, trained further, fine-tuned or from scratch -----------------------
    start, init_from = choose_start(ranks, run, inputs.pool_hash)
    warm_from = init_from if start.kind == "fresh" else ""

    # -- network and optimizer --------------------------------------------------------------------------
    seed_everything(run.seed)
    overrides = network_overrides(run.model_settings, earlier_network(start, warm_from), inputs.group, whole_frame)
    model = build_network(run.model_settings, inputs.shape, overrides, pool_path)
    configure_inference(model, edge_context=inputs.shape.border)  # validation, like production, mirrors this much
    lr = load_start_weights(model, start, warm_from, settings)
    # Channels-last: the layout the CPU's (oneDNN) and the GPU's convolution kernels run fastest on.
    model.to(device=device, memory_format=torch.channels_last)
    parts = build_parts(model, settings, lr, precision, device, inputs.shape.border, run.length, clock)
    epochs = epoch_plan(inputs.shape.tiles, settings, run.seed)

    # -- resume, or begin afresh -------------------------------------------------------------------------
    progress = resume(parts, start, run)
    if progress.resumed_from is None:
        begin_fresh(parts, inputs.group, inputs.shape.border, run, ranks, clock)
    trainer = Trainer(run, inputs, parts, epochs, ranks, clock, start, init_from, progress)
    if start.kind == "fine-tune":
        trainer.write_checkpoint()  # the earlier run's checkpoints are superseded: a rerun resumes the fine-tune

    # -- the run, then the model --------------------------------------------------------------------------
    final_checkpoint = trainer.run()
    if not ranks.first:
        return {"steps": progress.step, "stopped_by": progress.stopped_by, "loss": progress.loss, "rank": ranks.rank}
    result = run_result(trainer, (time.monotonic() - called) / 60.0, final_checkpoint)
    atomic_write_json(TrainFiles(run.work_dir).result, result)
    log.info("%s", summary_line(result))
    return result


class Trainer:
    """A training run once built: its parts, where it stands (``progress``), and what it does at each
    step and between steps (validate, checkpoint, stop). ``run`` trains to the end and saves the model."""

    def __init__(self, run: RunSettings, inputs: Inputs, parts: Parts, epochs, ranks: Ranks, clock,
                 start: ckpt.Start, init_from: str, progress: Progress):
        self.run_settings, self.inputs, self.parts, self.epochs = run, inputs, parts, epochs
        self.ranks, self.clock, self.start, self.init_from, self.progress = ranks, clock, start, init_from, progress
        self.frames: list = []  # the validation keyframes (rank 0's)
        self.batches = self.data_choice = self.monitor = None  # opened by ``run``

    # -- checkpoints -------------------------------------------------------------------------------------
    def checkpoint_state(self) -> Dict[str, Any]:
        run, parts, progress, epochs = self.run_settings, self.parts, self.progress, self.epochs
        step, batch = progress.step, progress.step * run.accumulate
        return {
            "step": step,
            "model": parts.model.state_dict(),
            "ema": parts.ema.state_dict(),
            "optimizer": parts.optimizer.state_dict(),
            "scaler": parts.scaler.state_dict(),
            "scheduler": parts.scheduler.state_dict(),
            "rng": ckpt.capture_rng_state(),
            "data": {"seed": run.seed, "next_batch": batch, "epoch": epochs.epoch_of(batch),
                     "batches_per_epoch": epochs.batches_per_epoch},
            "config": json.dumps(run.config, sort_keys=True, default=str),
            "identity": json.dumps(ckpt.training_identity(run.config), sort_keys=True, default=str),
            "config_fingerprint": ckpt.config_fingerprint(run.config),
            "pool_fingerprint": self.inputs.pool_hash,
            "model_config": json.dumps(parts.model.config, default=str),
            "best_psnr": progress.best_psnr,
            "best_step": -1 if progress.best_step is None else progress.best_step,
            "validation": json.dumps(_scores_only(progress.validation), default=str),
            "colour_path_held": colour_path_held(parts.model),
        }

    def write_checkpoint(self) -> Path:
        """A checkpoint of the current step (rank 0 writes it); older ones are pruned."""
        checkpoints, settings = self.run_settings.checkpoints, self.run_settings.settings
        if not self.ranks.first:
            return checkpoint_path(checkpoints, self.progress.step)
        path = ckpt.save_checkpoint(checkpoints, self.checkpoint_state())
        ckpt.prune_checkpoints(checkpoints, int(settings["keep_checkpoints"]), self.progress.best_step)
        return path

    # -- the run -------------------------------------------------------------------------------------------
    def run(self) -> Path:
        """Train until the steps or the time budget end (or a signal stops it), then finish; returns the
        final checkpoint's path."""
        inputs, parts, settings = self.inputs, self.parts, self.run_settings.settings
        self.batches, self.data_choice = make_batches(str(inputs.pool_path), inputs.group, self.epochs, parts.device,
                                                      settings)
        forward = torch.compile(parts.model) if settings["compile"] else parts.model
        self.open_monitor()
        self.ranks.start_together(parts.model, parts.ema, parts.optimizer, parts.scheduler)
        run_step = StepRunner(parts, forward, settings, self.inputs.shape.tile_size, self.ranks)
        try:
            with StopRequest() as stop:
                self.loop(run_step, stop)
                return self.finish()
        finally:
            self.batches.close()
            self.monitor.close()

    def open_monitor(self) -> None:
        """Load the validation keyframes and open the monitor (rank 0), which first says what the run is."""
        run, inputs, parts, progress, ranks = self.run_settings, self.inputs, self.parts, self.progress, self.ranks
        settings, shape, model = run.settings, inputs.shape, parts.model
        if ranks.first:
            self.frames = load_validation_frames(inputs.plan, inputs.manifest_path,
                                                 int(settings["validation_frames_max"]))
            resumed = progress.resumed_from is not None
            earlier_rows = read_metrics(TrainFiles(run.work_dir).metrics) if resumed else None
            self.monitor = TrainingMonitor(run.work_dir, run.length.total_steps, progress.step, parts.loss_mix.names,
                                           settings, earlier_rows)
        else:
            self.monitor = QuietMonitor()
        self.monitor.write(
            f"train: {shape.tiles} tiles of {shape.tile_size} px (border {shape.border}), {self.data_choice.mode}; "
            f"{parts.device} {parts.precision.name}; {model.config.get('arch')} {model.config.get('preset')} "
            f"({sum(p.numel() for p in model.parameters())} parameters); steps {progress.step} -> "
            f"{run.length.total_steps or f'the end of {run.length.max_minutes} minutes'}"
            + (f"; {ranks.world_size} processes, {int(settings['batch_size']) // ranks.world_size} tiles "
               "of each batch apiece" if ranks.many else ""))

    def loop(self, run_step: StepRunner, stop: StopRequest) -> None:
        progress, total_steps = self.progress, self.run_settings.length.total_steps
        stream = self.ranks.share(self.batches.batches(progress.step * self.run_settings.accumulate))
        while total_steps is None or progress.step < total_steps:
            if self.out_of_time(stop):
                break
            self.take_step(run_step, stream)
            self.after_step()

    def out_of_time(self, stop: StopRequest) -> bool:
        """True when the time budget is spent. After a signal: a checkpoint, then ``TrainingInterrupted``."""
        progress, length = self.progress, self.run_settings.length
        # Every rank stops at the same step: a signal to any, the budget on rank 0's clock.
        signum, seconds = self.ranks.agree(stop.signum, self.clock)
        if signum is not None:  # checked here so a signal during validation counts too
            path = self.write_checkpoint()
            self.ranks.barrier()  # no rank exits (and has its launcher stop the rest) before it is written
            name = signal.Signals(signum).name
            raise TrainingInterrupted(
                f"{self.run_settings.work_dir}: training stopped by {name} at step {progress.step}; checkpoint "
                f"{path.name} written, rerun to resume", signum)
        if length.budget_seconds is not None and seconds >= length.budget_seconds:
            progress.stopped_by = "max_minutes"
            self.monitor.write(f"train: train.max_minutes ({length.max_minutes}) reached at step {progress.step}; "
                               "stopping")
            return True
        return False

    def take_step(self, run_step: StepRunner, stream) -> None:
        progress, settings = self.progress, self.run_settings.settings
        stats_every = int(settings["activation_stats_every"])
        watch = (stats_every > 0 and (progress.step + 1) % stats_every == 0 and not settings["compile"]
                 and self.ranks.first)
        stats = ActivationStats(self.parts.model) if watch else None
        loss, loss_parts, finite = run_step(stream, stats)
        if stats is not None:
            self.monitor.activations(progress.step + 1, stats.summary())
        progress.step += 1
        progress.nonfinite = 0 if finite else progress.nonfinite + 1
        if progress.nonfinite >= MAX_NONFINITE_STEPS:
            raise DuplidogError(
                f"{self.inputs.pool_path}: training diverged: {progress.nonfinite} steps in a row with a non-finite "
                f"loss or gradient up to step {progress.step} (lower train.lr or set train.precision: fp32)"
            )
        progress.loss = loss
        self.monitor.step(progress.step, loss, loss_parts, self.parts.scheduler.get_last_lr()[0])

    def after_step(self) -> None:
        """Validate every ``validate_every`` steps (a new best is checkpointed), checkpoint every
        ``checkpoint_every``."""
        progress, settings = self.progress, self.run_settings.settings
        step = progress.step
        validate_every, checkpoint_every = int(settings["validate_every"]), int(settings["checkpoint_every"])
        if validate_every > 0 and step % validate_every == 0 and step != self.run_settings.length.total_steps:
            previous_best = progress.best_step
            self.run_validation()
            progress.validated_at = step
            if progress.best_step != previous_best and progress.best_step == step:
                self.write_checkpoint()
                progress.checkpointed_at = step
        if checkpoint_every > 0 and step % checkpoint_every == 0 and progress.checkpointed_at != step:
            self.write_checkpoint()
            progress.checkpointed_at = step

    def run_validation(self) -> None:
        """Validate the weight average on the keyframes (rank 0); keep the scores and note a new best."""
        progress, step = self.progress, self.progress.step
        if not self.frames:
            return
        metrics = validate(self.parts.ema.model, self.frames, self.run_settings.config.get("infer", {}))
        progress.results = metrics["_results"]
        picture = write_validation_sheet(TrainFiles(self.run_settings.work_dir).contact_sheet(step), self.frames,
                                         progress.results, title=f"step {step}")
        self.monitor.image("validation/contact_sheet", picture, step)
        progress.validation = _scores_only(metrics)
        self.monitor.validation(step, {k: v for k, v in progress.validation.items() if k != "frames"})
        if metrics["psnr"] > progress.best_psnr:
            progress.best_psnr, progress.best_step = float(metrics["psnr"]), step

    def finish(self) -> Path:
        """Validate the final weights, checkpoint, and (rank 0) save the model; the checkpoint's path."""
        progress, work_dir = self.progress, self.run_settings.work_dir
        if progress.validated_at != progress.step or not progress.results:
            self.run_validation()
        if not self.frames and self.ranks.first:
            log.warning("train: the plan names no keyframes to validate on; the model is saved unvalidated")
        final_checkpoint = self.write_checkpoint()
        if not self.ranks.first:
            return final_checkpoint
        save_model(self.run_settings.model_dir, self.parts.ema.model, model_card(self))
        if progress.results:
            write_validation_sheet(TrainFiles(work_dir).final_contact_sheet, self.frames, progress.results,
                                   title=f"final model, step {progress.step}")
        return final_checkpoint


def _scores_only(metrics: Dict[str, Any]) -> Dict[str, Any]:
    """Validation metrics without the result tensors (for logs, checkpoints and the card)."""
    return {k: v for k, v in metrics.items() if not k.startswith("_")}
