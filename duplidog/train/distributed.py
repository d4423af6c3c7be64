"""Data-parallel training: several processes (one per GPU), each training on its share of every batch.

Every process (a *rank*) builds the same network from the same seed and draws the same global batch of
``train.batch_size`` tiles (batches are pure functions of the seed and the batch number,
``duplidog.train.data``); it then trains on its own slice of that batch. DistributedDataParallel averages
the gradients, so every rank takes the same AdamW step and the weights stay the same everywhere: the step
one process would take on the whole batch, to rounding. Loss terms that weight pixels divide by the whole
batch's sum of weights, not the slice's (``whole_batch_sum``), for the same reason.

Rank 0 alone writes: checkpoints, metrics, TensorBoard, contact sheets and the model. A decision that
depends on what one process sees is made once and shared: how the run starts (rank 0 reads the
checkpoints), the weights the run starts from (rank 0's, after its colour fit), and when to stop (a
signal on any rank; the time budget on rank 0's clock, which also drives every rank's learning rate).

The process group comes from the launcher's environment: torchrun (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) or srun with one task per GPU (``SLURM_PROCID``,
``SLURM_STEP_NUM_TASKS``, ``SLURM_LOCALID``). CUDA tensors travel over NCCL, CPU tensors over gloo.
Without either environment a run is one process and everything here does nothing.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import subprocess
from dataclasses import dataclass
from typing import Dict, Iterator, Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn

from duplidog.errors import DuplidogError
from duplidog.train.schedule import TrainingClock

log = logging.getLogger(__name__)

#: How long a rank waits for the others at a collective. Rank 0 validates between steps while the
#: others wait; a rank that fails is ended sooner by the launcher, which stops the rest.
TIMEOUT = datetime.timedelta(minutes=30)


@dataclass(frozen=True)
class Launch:
    """Where this process stands in a multi-process run, as its launcher's environment says."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int


def launch_from_environment(env=os.environ) -> Optional[Launch]:
    """torchrun's variables, else those of an srun step of several tasks, else None (one process).

    SLURM's job-level ``SLURM_NTASKS`` is not enough: a batch script of an ``--ntasks=4`` job runs once,
    not four times. ``SLURM_STEP_NUM_TASKS`` is set by srun for the tasks it starts.
    """
    if "WORLD_SIZE" in env and "RANK" in env:
        return Launch(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", env["RANK"])),
                      env.get("MASTER_ADDR", "127.0.0.1"), int(env.get("MASTER_PORT", 29500)))
    if int(env.get("SLURM_STEP_NUM_TASKS", "1")) > 1 and "SLURM_PROCID" in env:
        nodes = env.get("SLURM_STEP_NODELIST", env.get("SLURM_NODELIST", "localhost"))
        job = int(env.get("SLURM_JOB_ID", "0"))
        return Launch(int(env["SLURM_PROCID"]), int(env["SLURM_STEP_NUM_TASKS"]), int(env.get("SLURM_LOCALID", 0)),
                      first_host(nodes), 20000 + job % 20000)
    return None


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list (``gpu07`` or ``gpu[07-09,12]``): rank 0 runs there."""
    if not any(c in nodelist for c in "[,"):
        return nodelist
    try:
        hosts = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                               check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError) as exc:
        raise DuplidogError(f"SLURM_STEP_NODELIST {nodelist!r}: cannot list its hosts with scontrol ({exc})") from None
    return hosts[0]


@contextlib.contextmanager
def process_group(env=os.environ) -> Iterator[Optional[Launch]]:
    """Join the run the environment describes for the duration of the block (nothing for one process)."""
    launch = launch_from_environment(env)
    if launch is None or launch.world_size < 2 or dist.is_initialized():
        yield launch
        return
    os.environ.setdefault("MASTER_ADDR", launch.master_addr)
    os.environ.setdefault("MASTER_PORT", str(launch.master_port))
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
    dist.init_process_group(backend, init_method="env://", rank=launch.rank, world_size=launch.world_size,
                            timeout=TIMEOUT)
    log.info("data-parallel: rank %d of %d (local rank %d, %s)", launch.rank, launch.world_size,
             launch.local_rank, backend)
    package = logging.getLogger("duplidog")
    level = package.level
    if launch.rank != 0:
        package.setLevel(logging.WARNING)  # rank 0 reports the run; the others only what goes wrong
    try:
        yield launch
    finally:
        package.setLevel(level)
        dist.destroy_process_group()


class SharedClock(TrainingClock):
    """The training clock of a data-parallel run: rank 0's seconds as last agreed (``Ranks.agree``).

    The learning rate follows the time budget, so every rank must read the same seconds, or their
    learning rates, and then their weights, would drift apart. Until the first agreement each rank
    reads its own clock (the colour fit's budget before training; its result is rank 0's anyway).
    """

    def __init__(self):
        super().__init__()
        self.agreed: Optional[float] = None

    def own(self) -> float:
        return super().__call__()

    def __call__(self) -> float:
        return self.own() if self.agreed is None else self.agreed


class StepForward(nn.Module):
    """A training step's forward pass as one module call, so DistributedDataParallel sees all of it:
    every level's output, and the colour path's own output where it learns on its own loss."""

    def __init__(self, model: nn.Module, forward, split_colour: bool):
        super().__init__()
        self.model = model
        self.split_colour = split_colour
        self._forward = [forward]  # a list: a compiled copy must not be registered as a second submodule

    def forward(self, source: torch.Tensor):
        if self.split_colour:
            return self.model.training_outputs(source)
        return self._forward[0](source, all_levels=True, logits=True), None


_whole_batch = False  # inside a multi-process step's loss (``Ranks.micro_batch``)


def whole_batch_sum(total: torch.Tensor) -> torch.Tensor:
    """A loss's sum of pixel weights over the whole batch, per rank's share (its mean over the ranks).

    A weighted mean divides by it: each rank's loss is then its slice's weighted sum over the batch's
    weights (times the ranks, whose gradients are averaged), and the average step is the whole batch's.
    Outside a multi-process step it is ``total`` itself.
    """
    if not _whole_batch:
        return total
    total = total.detach().clone()
    dist.all_reduce(total)
    return total / dist.get_world_size()


class Ranks:
    """The processes of a training run, as the training loop uses them; one process by default."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0):
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank

    @classmethod
    def current(cls) -> "Ranks":
        """The run this process joined (``process_group``), or one process."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return cls()
        launch = launch_from_environment()
        local_rank = launch.local_rank if launch is not None else dist.get_rank()
        return cls(dist.get_rank(), dist.get_world_size(), local_rank)

    @property
    def many(self) -> bool:
        return self.world_size > 1

    @property
    def first(self) -> bool:
        """Rank 0: the one that writes."""
        return self.rank == 0

    def place(self, device: torch.device) -> torch.device:
        """This rank's device: its own GPU (by local rank) where training runs on CUDA."""
        if not self.many:
            return device
        if device.type == "cuda":
            if device.index is not None:
                raise DuplidogError(f"train.device: {device} names one GPU, but this run has {self.world_size} "
                                    "processes, one per GPU (use auto or cuda)")
            visible = torch.cuda.device_count()
            # One visible GPU: the launcher gave each process its own (srun --gpus-per-task=1).
            index = 0 if visible == 1 else self.local_rank
            if index >= visible:
                raise DuplidogError(f"data-parallel rank {self.rank} has local rank {self.local_rank} but only "
                                    f"{visible} GPU(s) are visible to it")
            torch.cuda.set_device(index)
            return torch.device("cuda", index)
        if device.type != "cpu":
            raise DuplidogError(f"train.device: data-parallel training runs on CUDA GPUs or the CPU, not {device}")
        return device

    def check_batch(self, batch_size: int) -> None:
        if batch_size % self.world_size:
            raise DuplidogError(f"train.batch_size {batch_size} does not split evenly over {self.world_size} "
                                f"processes (one per GPU): make it a multiple of {self.world_size}")

    def share(self, stream: Iterator[Tuple[torch.Tensor, torch.Tensor]]) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """This rank's slice of every global batch ``stream`` yields (all ranks draw the same batches)."""
        if not self.many:
            yield from stream
            return
        for source, target in stream:
            part = source.shape[0] // self.world_size
            rows = slice(self.rank * part, (self.rank + 1) * part)
            yield source[rows], target[rows]

    def first_decides(self, decide):
        """``decide()`` on rank 0, its answer on every rank (pickled: a checkpoint's tensors included)."""
        if not self.many:
            return decide()
        answer = [decide() if self.first else None]
        dist.broadcast_object_list(answer, src=0)
        return answer[0]

    def data_parallel(self, module: nn.Module) -> nn.Module:
        """``module`` wrapped in DistributedDataParallel (gradients averaged over the ranks in backward)."""
        if not self.many:
            return module
        device = next(module.parameters()).device
        return nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None,
            # Rank 0's weights and buffers are shared by ``start_together``. The only buffers that change in
            # training are the blocks' batch-norm running statistics; each rank keeps its own, and rank
            # 0's, the ones validated and saved, follow its own batches.
            init_sync=False, forward_sync_buffers=False)

    @contextlib.contextmanager
    def micro_batch(self, module: nn.Module, last: bool):
        """Forward, loss and backward of one micro-batch: weighted means over the whole batch, and the
        gradients averaged over the ranks only after the step's last micro-batch (``no_sync`` before)."""
        global _whole_batch
        if not self.many:
            yield
            return
        syncing = contextlib.nullcontext() if last else module.no_sync()
        _whole_batch = True
        try:
            with syncing:
                yield
        finally:
            _whole_batch = False

    def mean(self, loss: float, parts: Dict[str, float]) -> Tuple[float, Dict[str, float]]:
        """The step's loss and terms averaged over the ranks: the whole batch's, the same on every rank
        (so a non-finite loss stops every rank alike)."""
        if not self.many:
            return loss, parts
        names = sorted(parts)
        values = torch.tensor([loss] + [parts[n] for n in names], dtype=torch.float64)
        dist.all_reduce(values)
        values /= self.world_size
        return float(values[0]), {n: float(v) for n, v in zip(names, values[1:])}

    def clock(self) -> TrainingClock:
        return SharedClock() if self.many else TrainingClock()

    def agree(self, signum: Optional[int], clock: TrainingClock) -> Tuple[Optional[int], float]:
        """Before each step: the stop signal any rank received, and rank 0's training seconds, which
        become every rank's clock reading (``SharedClock``) until the next agreement."""
        if not self.many:
            return signum, clock()
        values = torch.tensor([float(signum or 0), clock.own() if self.first else 0.0], dtype=torch.float64)
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
        clock.agreed = float(values[1])
        return (int(values[0]) or None), clock.agreed

    def start_together(self, model: nn.Module, ema, optimizer, scheduler) -> None:
        """Before the first step, every rank takes rank 0's weights (network, weight average, which
        parameters learn) and schedule: anything a rank decided alone (the colour fit's budget) is rank 0's."""
        if not self.many:
            return
        learning = self.first_decides(lambda: [p.requires_grad for p in model.parameters()])
        for parameter, flag in zip(model.parameters(), learning):
            parameter.requires_grad_(flag)
        for tensor in list(model.state_dict().values()) + list(ema.model.state_dict().values()):
            source = tensor.detach()
            shared = source.contiguous()
            dist.broadcast(shared, src=0)
            if shared is not source:
                source.copy_(shared)
        segment, rates = self.first_decides(lambda: (scheduler.segment, [g["lr"] for g in optimizer.param_groups]))
        scheduler.segment = tuple(segment)
        for group, rate in zip(optimizer.param_groups, rates):
            group["lr"] = rate

    def barrier(self) -> None:
        if self.many:
            dist.barrier()


class QuietMonitor:
    """What ranks other than 0 record: nothing (rank 0's ``TrainingMonitor`` reports the run)."""

    status = ""

    def step(self, *args) -> None:
        pass

    def activations(self, *args) -> None:
        pass

    def validation(self, *args) -> None:
        pass

    def image(self, *args) -> None:
        pass

    def write(self, *args) -> None:
        pass

    def close(self) -> None:
        pass
