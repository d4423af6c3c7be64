"""Learning rate over the run: linear warm-up, then cosine decay down to a floor, over steps or time.

Warm-up keeps AdamW's first, badly estimated second moments from kicking freshly initialised (or
warm-started) weights too far; the cosine tail lets the weights settle, which matters more than usual
here because the model is judged on one shot's frames, not on a moving benchmark.

A run ends at ``train.steps`` or at ``train.max_minutes``, whichever comes first, so the decay follows
whichever of the two is further along: a budget that ends the run at a third of its steps still
anneals to the floor at the deadline instead of stopping at the peak learning rate. The time comes
from a ``TrainingClock`` that a resumed run continues, so the schedule is a pure function of the
steps done and the seconds spent, both of which a checkpoint keeps.
"""

from __future__ import annotations

import math
import time
from typing import List, Optional

import torch

DEFAULT_MIN_LR = 1e-7


def lr_factor(step: int, total_steps: Optional[int], warmup_steps: int, base_lr: float, min_lr: float = DEFAULT_MIN_LR,
              time_progress: float = 0.0) -> float:
    """Multiplier of ``base_lr`` at optimizer step ``step`` (0-based).

    Steps ``0 .. warmup_steps-1`` rise linearly to 1 (never exactly 0, so no step is wasted); then a
    half cosine falls from 1 to ``min_lr / base_lr``, at a progress that is the larger of the steps'
    (end of warm-up to ``total_steps``; None: a run that only a time budget ends) and ``time_progress``
    (the share of the time budget spent).
    """
    if base_lr <= 0:
        return 0.0
    floor = min(1.0, min_lr / base_lr)
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    step_progress = 0.0 if total_steps is None else (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(1.0, max(0.0, step_progress, float(time_progress)))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class TrainingClock:
    """Seconds of training so far: this run's wall clock plus what earlier runs of it spent."""

    def __init__(self, earlier_seconds: float = 0.0):
        self.started = time.monotonic()
        self.earlier = float(earlier_seconds)

    def __call__(self) -> float:
        return self.earlier + time.monotonic() - self.started

    def resume(self, earlier_seconds: float) -> None:
        self.earlier = float(earlier_seconds)


class TrainingSchedule:
    """Sets each parameter group's learning rate to its base times ``lr_factor`` after every step.

    Args:
        optimizer: its groups' ``lr`` at construction are the bases.
        total_steps, warmup_steps, min_lr: as ``lr_factor``.
        budget_seconds: the time budget (``train.max_minutes``); None decays over the steps alone.
        clock: the training clock the budget is measured on.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: Optional[int], warmup_steps: int,
                 min_lr: float = DEFAULT_MIN_LR, budget_seconds: Optional[float] = None,
                 clock: Optional[TrainingClock] = None):
        self.optimizer = optimizer
        self.bases = [float(group.get("initial_lr", group["lr"])) for group in optimizer.param_groups]
        for group, base in zip(optimizer.param_groups, self.bases):
            group["initial_lr"] = base
        self.total_steps = None if total_steps is None else int(total_steps)
        self.warmup_steps, self.min_lr = int(warmup_steps), float(min_lr)
        self.budget = float(budget_seconds) if budget_seconds else None
        self.clock = clock or TrainingClock()
        self.steps = 0
        # The schedule runs from a segment's start: (step, seconds, learning-rate scale); a run trained
        # further starts a new segment where the earlier one ended (``continue_from_here``).
        self.segment = (0, 0.0, 1.0)
        self._apply()

    def continue_from_here(self, lr_scale: float, warmup_steps: int) -> None:
        """Start a new warm-up and cosine from the current step and time to the (raised) end of the run,
        peaking at ``lr_scale`` times the base rate: the weights settled at the end of the earlier
        schedule are refined, not thrown back to the full rate."""
        self.segment = (self.steps, self.clock(), float(lr_scale))
        self.warmup_steps = int(warmup_steps)
        self._apply()

    def time_progress(self) -> float:
        if self.budget is None:
            return 0.0
        _, start, _ = self.segment
        return 1.0 if self.budget <= start else (self.clock() - start) / (self.budget - start)

    def _apply(self) -> None:
        progress = self.time_progress()
        start, _, scale = self.segment
        total = None if self.total_steps is None else self.total_steps - start
        for group, base in zip(self.optimizer.param_groups, self.bases):
            group["lr"] = base * scale * lr_factor(self.steps - start, total, self.warmup_steps, base * scale,
                                                   self.min_lr, progress)

    def step(self) -> None:
        self.steps += 1
        self._apply()

    def get_last_lr(self) -> List[float]:
        return [float(group["lr"]) for group in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"steps": self.steps, "seconds": self.clock(), "segment": list(self.segment),
                "warmup_steps": self.warmup_steps}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])
        self.clock.resume(float(state["seconds"]))
        if "segment" in state:  # checkpoints of runs never trained further have none
            step, seconds, scale = state["segment"]
            self.segment = (int(step), float(seconds), float(scale))
            self.warmup_steps = int(state["warmup_steps"])
        self._apply()
