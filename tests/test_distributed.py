"""Data-parallel training (``duplidog.train.distributed``, ``duplidog.train.launch``) on the CPU over gloo.

Two processes started the way a pipeline job with two GPUs starts them (torchrun) must train the weights
one process trains on the same global batches, to float32 rounding. The shot's fix is local (the
keyframes are graded on their left half), so the change-weighted loss terms weight pixels unevenly: a
slice that divided by its own weights instead of the whole batch's would differ by about 1e-2 here.
"""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path

import pytest
import torch

from duplidog.errors import DuplidogError
from duplidog.train.distributed import Launch, Ranks, launch_from_environment, process_group, whole_batch_sum

from trainshot import build_tiny_shot, final_state, with_train


@pytest.fixture(scope="module")
def shot(tmp_path_factory):
    return build_tiny_shot(tmp_path_factory.mktemp("ddpshot"), local_edit=True)


def arguments(shot, work: Path, config: dict) -> dict:
    return {"pool_path": shot["pool"], "plan_path": shot["plan"], "manifest_path": shot["manifest"],
            "model_dir": work / "model", "work_dir": work / "train", "config": config}


def largest_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def test_two_processes_train_the_weights_of_one_process(shot, tmp_path):
    from duplidog.train import train
    from duplidog.train.launch import train_in_processes

    # fp32: in bf16 each slice's rounding differs from the whole batch's, and AdamW's normalised steps
    # turn that into differences of the learning rate's size. Two micro-batches: gradients are averaged
    # over the processes only after the last.
    config = with_train(shot["config"], steps=6, accumulate=2, precision="fp32", validate_every=0,
                        checkpoint_every=0, activation_stats_every=0)
    # Plain blocks: batch norm normalises each process's half of the batch by its own statistics, which by
    # design differ from the whole batch's (``distributed``), so only a plain network gives equal weights.
    config["model"]["overrides"] = {**config["model"].get("overrides", {}), "norm": "none"}
    torch.set_num_threads(1)
    one = train(**arguments(shot, tmp_path / "one", config))
    two = train_in_processes(2, 2, **arguments(shot, tmp_path / "two", config))

    assert two["steps"] == one["steps"] == 6
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)  # rank 0 reports the whole batch's loss
    first, both = final_state(tmp_path / "one"), final_state(tmp_path / "two")
    start = largest_difference(first["model"], {k: torch.zeros_like(v) for k, v in first["model"].items()})
    assert start > 0.1
    assert largest_difference(first["model"], both["model"]) < 1e-5
    assert largest_difference(first["ema"]["model"], both["ema"]["model"]) < 1e-5
    # Rank 0 alone wrote the run's files: one model, one set of metrics, and the request file is gone.
    assert (tmp_path / "two/model/model.safetensors").exists()
    assert (tmp_path / "two/train/metrics.csv").exists()
    assert not (tmp_path / "two/train/launch.json").exists()


def test_the_launchers_environment_names_the_run():
    assert launch_from_environment({}) is None
    torchrun = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "gpu07", "MASTER_PORT": "29501"}
    assert launch_from_environment(torchrun) == Launch(3, 4, 1, "gpu07", 29501)
    srun = {"SLURM_PROCID": "2", "SLURM_STEP_NUM_TASKS": "4", "SLURM_LOCALID": "2", "SLURM_STEP_NODELIST": "gpu07",
            "SLURM_JOB_ID": "123456", "SLURM_NTASKS": "4"}
    assert launch_from_environment(srun) == Launch(2, 4, 2, "gpu07", 20000 + 123456 % 20000)
    # A batch script of a 4-task job runs once: it is not one of four processes.
    assert launch_from_environment({"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_JOB_ID": "1"}) is None


def test_a_batch_must_split_evenly_over_the_processes():
    Ranks(0, 4).check_batch(8)
    with pytest.raises(DuplidogError, match="batch_size 6 does not split evenly over 4"):
        Ranks(0, 4).check_batch(6)
    shares = list(Ranks(1, 2).share(iter([(torch.arange(4), torch.arange(4) + 10)])))
    assert [s.tolist() for s in shares[0]] == [[2, 3], [12, 13]]


def _agree(rank: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    with process_group():
        ranks = Ranks.current()
        clock = ranks.clock()
        clock.resume(100.0 if rank == 0 else 0.0)  # rank 0's clock is far ahead of rank 1's
        signum, seconds = ranks.agree(signal.SIGTERM if rank == 1 else None, clock)
        own = float(whole_batch_sum(torch.tensor(rank + 1.0)))
        with ranks.micro_batch(None, last=True):
            whole = float(whole_batch_sum(torch.tensor(rank + 1.0)))
        Path(out, f"{rank}.json").write_text(json.dumps(
            {"signum": signum, "seconds": seconds, "clock": clock(), "own": own, "whole": whole}))


def test_the_processes_agree_on_stopping_and_on_rank_0s_clock(tmp_path):
    """A signal to one rank stops both; the budget's seconds are rank 0's on both (the learning rate
    follows them); weighted means divide by the whole batch's weights only inside a step."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    torch.multiprocessing.spawn(_agree, args=(port, str(tmp_path)), nprocs=2)
    zero, one = (json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1))
    assert zero["signum"] == one["signum"] == signal.SIGTERM
    assert zero["seconds"] == one["seconds"] == zero["clock"] == one["clock"] >= 100.0
    assert (zero["own"], one["own"]) == (1.0, 2.0)
    assert zero["whole"] == one["whole"] == 1.5
