"""Start a data-parallel training run on this machine: torchrun with one process per device.

A pipeline job that holds several GPUs (``resources: gpu`` above 1, ``duplidog.gpus``) trains on all of
them: its script calls ``train_in_processes``, which writes the run's arguments to a file in the work
directory, starts ``python -m torch.distributed.run --standalone --nproc-per-node N -m
duplidog.train.launch <file>`` and waits. Each process joins the group torchrun describes
(``distributed.process_group``) and runs ``duplidog.train.train``; rank 0 writes the model and
``result.json``, which is what this returns.

Signals sent to the job reach torchrun, which passes them on to the processes; each finishes its step,
rank 0 writes a checkpoint, and the job fails so that a rerun resumes (``stop.StopRequest``).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

from duplidog.atomic import atomic_write_json
from duplidog.core.layout import TrainFiles
from duplidog.errors import DuplidogError

log = logging.getLogger(__name__)

REQUEST = "launch.json"


def train_in_processes(processes: int, threads: int, pool_path, plan_path, manifest_path, model_dir, work_dir,
                       config: dict) -> Dict[str, Any]:
    """``duplidog.train.train`` in ``processes`` processes sharing each batch; the run's result (rank 0's).

    ``threads``: the CPU threads the job holds, shared out among the processes.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    request = work_dir / REQUEST
    arguments = {"pool_path": str(pool_path), "plan_path": str(plan_path), "manifest_path": str(manifest_path),
                 "model_dir": str(model_dir), "work_dir": str(work_dir), "config": config}
    atomic_write_json(request, {"arguments": arguments, "threads": max(1, threads // processes)})
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               "-m", "duplidog.train.launch", str(request)]
    environment = {**os.environ, "OMP_NUM_THREADS": str(max(1, threads // processes))}
    log.info("train: data-parallel over %d processes: %s", processes, " ".join(command))
    sys.stderr.flush()
    # The processes write to this job's log, where the caller sent stderr.
    child = subprocess.Popen(command, env=environment, stdout=sys.stderr, stderr=sys.stderr)
    previous = {}

    def pass_on(signum, _frame):
        if child.poll() is None:
            child.send_signal(signum)

    if _main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            previous[signum] = signal.signal(signum, pass_on)
    try:
        code = child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    result_path = TrainFiles(work_dir).result
    if code != 0 or not result_path.exists():
        raise DuplidogError(f"{work_dir}: data-parallel training over {processes} processes failed (torchrun exit "
                            f"status {code}; the log above says why); rerun to resume from the last checkpoint")
    request.unlink(missing_ok=True)
    return json.loads(result_path.read_text())


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def main(argv=None) -> int:
    """One process of the run: ``duplidog.train.launch <request.json>`` under torchrun."""
    import torch

    from duplidog.logs import log_to
    from duplidog.train import TrainingInterrupted, train
    from duplidog.train.distributed import process_group

    argv = sys.argv[1:] if argv is None else argv
    request = json.loads(Path(argv[0]).read_text())
    log_to(None)  # stderr: the job's log (rank 0 reports the run, the others only what goes wrong)
    torch.set_num_threads(int(request["threads"]))
    try:
        with process_group():
            train(**request["arguments"])
    except TrainingInterrupted as exc:
        print(f"duplidog: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except DuplidogError as exc:
        print(f"duplidog: error: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
