"""One optimizer step: the unit training counts, and what the speed bench times.

``accumulate`` micro-batches run forward under autocast and backward; the gradients are unscaled (fp16),
clipped to ``grad_clip``, and AdamW steps unless they are not finite; then the schedule advances and the
weight average follows.
"""

from __future__ import annotations

import contextlib
import math
from typing import Optional

import torch

from duplidog import temporal
from duplidog.train.distributed import Ranks, StepForward
from duplidog.train.monitor import ActivationStats
from duplidog.train.setup import Parts


class StepRunner:
    """One optimizer step over the ``parts`` a run is built of (``setup.build_parts``). Shared by
    ``loop.train`` and ``duplidog.bench.train`` so the bench times the real step."""

    def __init__(self, parts: Parts, forward, settings: dict, tile_size: int, ranks: Optional[Ranks] = None):
        self.model, self.loss_mix, self.precision = parts.model, parts.loss_mix, parts.precision
        self.optimizer, self.scheduler = parts.optimizer, parts.scheduler
        self.scaler, self.ema = parts.scaler, parts.ema
        self.accumulate = max(1, int(settings["accumulate"]))
        self.grad_clip, self.tile_size = float(settings["grad_clip"]), tile_size
        # The colour path trained on a loss of its own (train.colour_split), where the network has one.
        self.split_colour = self.loss_mix.colour_split and getattr(self.model, "colour", None) is not None
        # Several processes: DistributedDataParallel around the whole forward pass (``distributed``).
        self.ranks = ranks or Ranks()
        self.forward = self.ranks.data_parallel(StepForward(self.model, forward, self.split_colour))

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
