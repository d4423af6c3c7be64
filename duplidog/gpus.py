"""Which GPUs a pipeline job uses: on a workstation, GPUs no other job holds.

Snakemake counts GPUs but does not hand them out: ``resources: gpu=N`` in ``profiles/local`` caps how
many GPU jobs run at once, yet every job sees every GPU and CUDA puts them all on the first, and
Snakemake 9 gives a job no slot number to pick one by. So each GPU job claims its GPUs itself
(``claim_gpus``): one lock file per device, taken with ``flock`` and held while the job runs (the kernel
releases it however the job ends, so nothing goes stale), and ``CUDA_VISIBLE_DEVICES`` narrowed to the
claimed devices before CUDA starts. Jobs of other Snakemake runs on the machine claim from the same
locks, so two shots run side by side on different GPUs too.

The devices to claim from are those ``CUDA_VISIBLE_DEVICES`` lists when it is set (so a run can be kept
to some of the GPUs), else every NVIDIA GPU the driver lists. Under SLURM (``SLURM_JOB_ID``) the job's
GPUs are SLURM's choice, already in ``CUDA_VISIBLE_DEVICES``: nothing is claimed. Without GPUs nothing is
claimed either, and the job runs on the CPU.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from duplidog.errors import DuplidogError

log = logging.getLogger(__name__)

#: Where the lock files live (one directory per user, shared by all of that user's runs on the machine).
LOCK_DIR_VARIABLE = "DUPLIDOG_GPU_LOCKS"
NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")
POLL_SECONDS = 2.0


@dataclass
class GpuClaim:
    """The devices a job holds (CUDA_VISIBLE_DEVICES entries) and the open lock files that hold them."""

    devices: List[str]
    _locks: list = field(default_factory=list, repr=False)

    def release(self) -> None:
        for handle in self._locks:
            handle.close()
        self._locks = []


def visible_devices(environ=os.environ) -> List[str]:
    """The devices this job may use: ``CUDA_VISIBLE_DEVICES``'s entries, else the driver's GPUs by index."""
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [entry.strip() for entry in listed.split(",") if entry.strip() and entry.strip() != "-1"]
    if NVIDIA_GPUS.is_dir():
        return [str(i) for i in range(len(list(NVIDIA_GPUS.iterdir())))]
    return []


def lock_dir(environ=os.environ) -> Path:
    return Path(environ.get(LOCK_DIR_VARIABLE) or Path(tempfile.gettempdir()) / f"duplidog-gpus-{os.getuid()}")


def _try_lock(path: Path):
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def claim_gpus(count: int, environ=os.environ, wait_seconds: Optional[float] = None) -> GpuClaim:
    """Claim ``count`` of the visible GPUs for this process and show it only those (``CUDA_VISIBLE_DEVICES``).

    Waits while other jobs hold them (up to ``wait_seconds``; None: as long as it takes), and claims no
    more GPUs than there are. Call before anything starts CUDA, and keep the claim for the job's life.
    """
    count = int(count or 0)
    devices = visible_devices(environ)
    if count <= 0 or not devices or environ.get("SLURM_JOB_ID"):
        return GpuClaim(devices[:count] if environ.get("SLURM_JOB_ID") else [])
    if count > len(devices):
        log.warning("gpus: the job asks for %d GPUs but %d are visible (%s); it takes them all", count,
                    len(devices), ",".join(devices))
        count = len(devices)
    directory = lock_dir(environ)
    directory.mkdir(parents=True, exist_ok=True)
    started, told = time.monotonic(), False
    while True:
        held = []
        for device in devices:
            handle = _try_lock(directory / f"gpu-{device}.lock")
            if handle is not None:
                held.append((device, handle))
                if len(held) == count:
                    break
        if len(held) == count:
            claim = GpuClaim([d for d, _ in held], [h for _, h in held])
            environ["CUDA_VISIBLE_DEVICES"] = ",".join(claim.devices)
            log.info("gpus: this job uses GPU %s (CUDA_VISIBLE_DEVICES)", ",".join(claim.devices))
            return claim
        for _, handle in held:  # all or nothing, so two jobs cannot each hold half of what both need
            handle.close()
        if wait_seconds is not None and time.monotonic() - started >= wait_seconds:
            raise DuplidogError(f"no {count} of GPUs {','.join(devices)} free within {wait_seconds:.0f} s "
                               f"(locks in {directory})")
        if not told:
            log.warning("gpus: waiting for %d of GPUs %s held by other jobs (locks in %s)", count,
                        ",".join(devices), directory)
            told = True
        time.sleep(POLL_SECONDS)
