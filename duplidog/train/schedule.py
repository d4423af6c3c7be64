"""Learning rate over the run: linear warm-up, then cosine decay down to a floor.

Warm-up keeps AdamW's first, badly estimated second moments from kicking freshly initialised (or
warm-started) weights too far; the cosine tail lets the weights settle, which matters more than usual
here because the model is judged on one shot's frames, not on a moving benchmark. The schedule is a
pure function of the step, so resuming only needs the step count (which ``LambdaLR`` keeps).
"""

from __future__ import annotations

import math

import torch

DEFAULT_MIN_LR = 1e-7


def lr_factor(step: int, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float = DEFAULT_MIN_LR) -> float:
    """Multiplier of ``base_lr`` at optimizer step ``step`` (0-based).

    Steps ``0 .. warmup_steps-1`` rise linearly to 1 (never exactly 0, so no step is wasted); then a
    half cosine falls from 1 at the end of warm-up to ``min_lr / base_lr`` at ``total_steps``.
    """
    if base_lr <= 0:
        return 0.0
    floor = min(1.0, min_lr / base_lr)
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / decay_steps))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                  min_lr: float = DEFAULT_MIN_LR) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` applying ``lr_factor`` to each parameter group's own initial lr."""
    factors = []
    for group in optimizer.param_groups:
        base = float(group.get("initial_lr", group["lr"]))

        def factor(step: int, base: float = base) -> float:
            return lr_factor(step, total_steps, warmup_steps, base, min_lr)

        factors.append(factor)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factors)
