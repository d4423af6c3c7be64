"""An exponential moving average of the weights: what validation sees and what is saved.

Small-batch training on a few keyframes is noisy step to step; the average of recent weights is a
smoother, usually better model than the last step's. The decay warms up (``(1 + n) / (10 + n)``, as
in TensorFlow's ExponentialMovingAverage with ``num_updates``) so that a short run is not dominated by
the random initial weights. ``torch.optim.swa_utils.AveragedModel`` (with ``get_ema_multi_avg_fn``)
averages with a fixed decay, without that warm-up, so this small class stays ours.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverage:
    """A frozen copy of ``model`` whose parameters follow the live ones with ``decay``.

    Buffers (the blocks' batch-norm running statistics) are copied from the live model, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        weight = 1.0 - self.current_decay()
        averaged = [p for p in self.model.parameters()]
        live = [p.detach() for p in model.parameters()]
        if averaged:
            torch._foreach_lerp_(averaged, live, weight)
        for mine, theirs in zip(self.model.buffers(), model.buffers()):
            mine.copy_(theirs)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])
