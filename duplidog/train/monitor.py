"""Watching a training run: progress bar, convergence status, metrics table, TensorBoard, loss plot.

What a compositor wants to know while a shot trains is "is it still getting better, and when will it
be done"; a TD wants the numbers afterwards. So:

* on a terminal a tqdm progress bar with the step, the loss and its terms, the learning rate,
  steps/s, the ETA and a one-word convergence status; in a job's log (not a terminal) the same as
  a plain line every ``progress_every`` steps;
* the status -- ``converging``, ``plateauing`` or ``diverging`` -- comes from the slope of the
  log-loss over the last ``window`` steps (a least-squares line), which is insensitive to the loss
  scale and to single noisy batches;
* ``metrics.csv`` (one row per logged step; validation columns filled where validation ran),
  rewritten atomically so a reader never sees half a row;
* TensorBoard events (scalars, validation images' metrics, and per-block activation statistics
  from forward hooks every ``activation_stats_every`` steps -- dead or exploding blocks show there);
* ``loss.png``, the loss curve and validation PSNR, for ``snakemake --report``.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import sys
import time
from collections import deque
from pathlib import Path
from typing import Deque, Dict, List, Optional, Tuple

import torch
from torch import nn

from duplidog.atomic import atomic_path, atomic_write_text
from duplidog.core.layout import TrainFiles

log = logging.getLogger(__name__)

CONVERGING, PLATEAUING, DIVERGING, STARTING = "converging", "plateauing", "diverging", "starting"
#: Change of log-loss over the window (fitted line) beyond which the loss counts as falling / rising.
FALLING = -0.05
RISING = 0.10


class ConvergenceMeter:
    """Classifies the recent loss trend from the least-squares slope of log(loss) against step."""

    def __init__(self, window: int = 100):
        self.window = max(4, int(window))
        self.points: Deque[Tuple[int, float]] = deque(maxlen=self.window)

    def add(self, step: int, loss: float) -> None:
        self.points.append((step, loss))

    def log_change(self) -> Optional[float]:
        """Fitted change of ln(loss) across the window, or None with too few points."""
        if len(self.points) < max(4, self.window // 4):
            return None
        steps = [s for s, _ in self.points]
        values = [math.log(max(v, 1e-12)) for _, v in self.points]
        n = len(steps)
        mean_s, mean_v = sum(steps) / n, sum(values) / n
        var = sum((s - mean_s) ** 2 for s in steps)
        if var == 0:
            return 0.0
        slope = sum((s - mean_s) * (v - mean_v) for s, v in zip(steps, values)) / var
        return slope * (steps[-1] - steps[0])

    def status(self) -> str:
        if any(not math.isfinite(v) for _, v in self.points):
            return DIVERGING
        change = self.log_change()
        if change is None:
            return STARTING
        if change > RISING:
            return DIVERGING
        if change < FALLING:
            return CONVERGING
        return PLATEAUING


def watched_blocks(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """The network's blocks: its direct children, with containers (lists, sequences) opened one level."""
    blocks = []
    for name, child in model.named_children():
        if isinstance(child, (nn.Sequential, nn.ModuleList)):
            blocks += [(f"{name}.{sub}", module) for sub, module in child.named_children()]
        else:
            blocks.append((name, child))
    return blocks


class ActivationStats:
    """Forward hooks that record mean, std, max |x| and the zero fraction of each block's output.

    Use as a context manager around one forward pass; a block that runs several times (once per
    pyramid level) is averaged over its calls (max |x| is the maximum).
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.stats: Dict[str, List[Tuple[float, float, float, float]]] = {}
        self._handles = []

    def __enter__(self) -> "ActivationStats":
        for name, module in watched_blocks(self.model):
            self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def _hook(self, name: str):
        def record(_module, _inputs, output):
            tensor = output
            while isinstance(tensor, (tuple, list)) and tensor:
                tensor = tensor[0]
            if not isinstance(tensor, torch.Tensor):
                return
            x = tensor.detach().float()
            self.stats.setdefault(name, []).append(
                (x.mean().item(), x.std().item() if x.numel() > 1 else 0.0, x.abs().max().item(),
                 (x == 0).float().mean().item())
            )
        return record

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def summary(self) -> Dict[str, Dict[str, float]]:
        out = {}
        for name, calls in self.stats.items():
            n = len(calls)
            out[name] = {
                "mean": sum(c[0] for c in calls) / n,
                "std": sum(c[1] for c in calls) / n,
                "absmax": max(c[2] for c in calls),
                "zero_fraction": sum(c[3] for c in calls) / n,
            }
        return out


#: The smallest range of the loss plot's PSNR axis, in dB.
MIN_PSNR_SPAN = 3.0


def write_loss_plot(path: Path, rows: List[dict], loss_names: List[str]) -> None:
    """Loss (total and terms, log scale) and validation PSNR against step, with doing nothing's PSNR
    as a line, as a PNG (Agg, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    train_rows = [r for r in rows if r.get("loss") not in (None, "")]
    if train_rows:
        steps = [r["step"] for r in train_rows]
        axes.plot(steps, [float(r["loss"]) for r in train_rows], label="loss", color="black", linewidth=1.5)
        for name in loss_names:
            values = [r.get(f"loss_{name}") for r in train_rows]
            if len(loss_names) > 1 and all(v not in (None, "") for v in values):
                axes.plot(steps, [float(v) for v in values], label=name, linewidth=0.8, alpha=0.8)
        if all(float(r["loss"]) > 0 for r in train_rows):
            axes.set_yscale("log")
    axes.set_xlabel("step")
    axes.set_ylabel("training loss")
    axes.grid(True, alpha=0.3)
    handles, labels = axes.get_legend_handles_labels()
    val_rows = [r for r in rows if r.get("val_psnr") not in (None, "")]
    if val_rows:
        psnr_axes = axes.twinx()
        values = [float(r["val_psnr"]) for r in val_rows]
        line = psnr_axes.plot([r["step"] for r in val_rows], values, "o-", color="tab:red",
                              label="validation PSNR (dB)")
        handles += line
        labels += [line[0].get_label()]
        nothing = [float(r["val_psnr_identity"]) for r in val_rows if r.get("val_psnr_identity") not in (None, "")]
        if nothing:  # the plate itself against the target: what the fix has to beat
            level = psnr_axes.axhline(nothing[-1], color="tab:red", linestyle=":", linewidth=1.0,
                                      label=f"doing nothing ({nothing[-1]:.1f} dB)")
            handles.append(level)
            labels.append(level.get_label())
            values.append(nothing[-1])
        # At least MIN_PSNR_SPAN dB tall, so a wobble of hundredths of a dB does not fill the plot.
        finite = [v for v in values if math.isfinite(v)]
        if finite:
            low, high = min(finite), max(finite)
            middle, half = (low + high) / 2, max(high - low, MIN_PSNR_SPAN) / 2 * 1.1
            psnr_axes.set_ylim(middle - half, middle + half)
        psnr_axes.set_ylabel("validation PSNR (dB)")
    if handles:
        axes.legend(handles, labels, loc="upper right", fontsize="small")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")


class TrainingMonitor:
    """Everything a run reports, in one place: call ``step`` each step and ``validation`` after one."""

    def __init__(self, work_dir: Path, total_steps: int, start_step: int, loss_names: List[str], settings: dict,
                 previous_rows: Optional[List[dict]] = None):
        self.work_dir = Path(work_dir)
        self.total_steps = total_steps
        self.loss_names = list(loss_names)
        self.log_every = max(1, int(settings["log_every"]))
        self.convergence = ConvergenceMeter(int(settings["convergence_window"]))
        self.rows: Dict[int, dict] = {int(r["step"]): r for r in (previous_rows or []) if int(r["step"]) <= start_step}
        files = TrainFiles(self.work_dir)
        self.csv_path = files.metrics
        self.plot_path = files.loss_plot
        self.started = time.monotonic()
        self.start_step = start_step
        self._last_time = self.started
        self._last_step = start_step
        self.steps_per_second = 0.0
        self._pending: List[float] = []
        from torch.utils.tensorboard import SummaryWriter

        self.tensorboard = SummaryWriter(log_dir=str(files.tensorboard), purge_step=start_step or None)
        # A bar on a terminal; in a job's log file (Snakemake, SLURM) a plain line every progress_every steps,
        # since a bar there is carriage returns packed into a few unreadable lines.
        self.bar = None
        self.progress_every = 0
        self.budget_seconds = 60.0 * float(settings["max_minutes"]) if settings.get("max_minutes") else None
        if settings.get("progress", True) and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", file=sys.stderr, dynamic_ncols=True,
                            mininterval=0.5, smoothing=0.05, desc="train")
        elif settings.get("progress", True):
            self.progress_every = max(1, int(settings.get("progress_every", 50)))
        self._progress_losses: List[float] = []
        self._progress_mark = (self.started, start_step)

    @property
    def status(self) -> str:
        return self.convergence.status()

    def step(self, step: int, loss: float, parts: Dict[str, float], lr: float) -> None:
        """Record the loss after optimizer step ``step`` (1-based count of steps done)."""
        self.convergence.add(step, loss)
        self._pending.append(loss)
        if self.bar is not None:
            self.bar.update(1)
            terms = " ".join(f"{name} {value:.4g}" for name, value in parts.items()) if len(parts) > 1 else ""
            self.bar.set_postfix_str(
                f"loss {loss:.4g}" + (f" [{terms}]" if terms else "") + f" lr {lr:.2e} {self.status}", refresh=False
            )
        if self.progress_every:
            self._progress_losses.append(loss)
            if step % self.progress_every == 0 or step == self.total_steps:
                self.write(self.progress_line(step, lr))
        if step % self.log_every == 0 or step == self.total_steps:
            now = time.monotonic()
            self.steps_per_second = (step - self._last_step) / max(now - self._last_time, 1e-9)
            self._last_time, self._last_step = now, step
            mean_loss = sum(self._pending) / len(self._pending)
            self._pending = []
            row = self.rows.setdefault(step, {"step": step})
            row.update({"elapsed_s": round(now - self.started, 3), "lr": lr, "loss": mean_loss,
                        "steps_per_s": round(self.steps_per_second, 4), "status": self.status})
            for name, value in parts.items():
                row[f"loss_{name}"] = value
            self.tensorboard.add_scalar("loss/total", loss, step)
            for name, value in parts.items():
                self.tensorboard.add_scalar(f"loss/{name}", value, step)
            self.tensorboard.add_scalar("train/lr", lr, step)
            self.tensorboard.add_scalar("train/steps_per_s", self.steps_per_second, step)
            self.write_csv()

    def progress_line(self, step: int, lr: float) -> str:
        """``train: step 300/600 (50 %) loss 0.0123 lr 4.2e-04, 3.4 steps/s, 1.5 min left, converging``."""
        now = time.monotonic()
        since, since_step = self._progress_mark
        rate = (step - since_step) / max(now - since, 1e-9)
        self._progress_mark = (now, step)
        loss = sum(self._progress_losses) / max(1, len(self._progress_losses))
        self._progress_losses = []
        if self.total_steps:
            where = f"step {step}/{self.total_steps} ({100 * step // self.total_steps} %)"
            left = (self.total_steps - step) / rate if rate > 0 else None
        else:
            where, left = f"step {step}", None
        if self.budget_seconds is not None:  # a budget may end the run before the steps do
            budget_left = max(0.0, self.budget_seconds - (now - self.started))
            left = budget_left if left is None else min(left, budget_left)
        eta = "" if left is None else f", {left / 60:.1f} min left"
        return f"train: {where} loss {loss:.4g} lr {lr:.2e}, {rate:.2f} steps/s{eta}, {self.status}"

    def activations(self, step: int, stats: Dict[str, Dict[str, float]]) -> None:
        for block, values in stats.items():
            for key, value in values.items():
                self.tensorboard.add_scalar(f"activations/{block}/{key}", value, step)

    def validation(self, step: int, metrics: Dict[str, float]) -> None:
        row = self.rows.setdefault(step, {"step": step})
        for key, value in metrics.items():
            if isinstance(value, (int, float)):
                row[f"val_{key}"] = value
                self.tensorboard.add_scalar(f"validation/{key}", value, step)
        message = " ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float)))
        self.write(f"validation at step {step}: {message}")
        self.write_csv()
        self.write_plot()

    def image(self, name: str, picture, step: int) -> None:
        """A picture (H, W, 3 uint8) in TensorBoard, under ``name`` at ``step``."""
        self.tensorboard.add_image(name, picture, step, dataformats="HWC")

    def write(self, message: str) -> None:
        """A log line that does not break the progress bar."""
        if self.bar is not None:
            self.bar.clear()
        log.info(message)
        if self.bar is not None:
            self.bar.refresh()

    def write_csv(self) -> None:
        rows = [self.rows[s] for s in sorted(self.rows)]
        columns: List[str] = ["step", "elapsed_s", "lr", "loss"] + [f"loss_{n}" for n in self.loss_names]
        columns += ["steps_per_s", "status"]
        for row in rows:
            columns += [k for k in row if k not in columns]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.csv_path, buffer.getvalue())

    def write_plot(self) -> None:
        rows = [self.rows[s] for s in sorted(self.rows)]
        if rows:
            write_loss_plot(self.plot_path, rows, self.loss_names)

    def close(self) -> None:
        self.write_csv()
        self.write_plot()
        self.tensorboard.flush()
        self.tensorboard.close()
        if self.bar is not None:
            self.bar.close()


def read_metrics(path: Path) -> List[dict]:
    """The rows of an earlier run's metrics.csv (numbers parsed), to continue it on resume."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            parsed = {}
            for key, value in row.items():
                if value in ("", None):
                    continue
                try:
                    parsed[key] = int(value) if key == "step" else float(value)
                except ValueError:
                    parsed[key] = value
            if "step" in parsed:
                rows.append(parsed)
    return rows
