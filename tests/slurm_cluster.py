"""A real single-node SLURM on localhost, so the farm profile is tested against SLURM itself.

Why a real one: the farm profile is only worth something if SLURM accepts what it asks for (partitions,
GPU requests, memory, time) and the plugin follows the jobs to the end. A mock of sbatch would test
neither. SLURM 22.05 from Debian installs in about 10 s and starts in a few seconds, so the test suite
installs it with apt (as root), starts munged, slurmctld and slurmd without systemd, and stops them by
the PIDs in their pidfiles at the end.

The node has two partitions, `cpu` (default) and `gpu`, so routing is visible; the `gpu` partition's
node has one fake GPU (a character device standing in for /dev/nvidia0), so `--gpus=1` is accepted and
jobs see CUDA_VISIBLE_DEVICES=0 while running on the CPU. There are no cgroups here: memory is not
enforced, so the node claims more memory than it has (SlurmdParameters=config_overrides) and the
production profile's memory requests are accepted unchanged. Time limits are enforced.

The configuration lives in /etc/slurm, not behind SLURM_CONF: the plugin's job step strips every
SLURM_* variable before its inner `srun`, which then finds no configuration. One test cluster per
machine at a time therefore: a lock file serialises test sessions, and a slurm.conf this module did
not write is never touched.

Outside Linux, without root, or without apt (and SLURM not installed) the fixture skips with the
reason; with DUPLIDOG_REQUIRE_FARM=1 (set it in CI) it fails instead, so a farm test cannot vanish.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PACKAGES = ["munge", "slurmctld", "slurmd", "slurm-client"]
CONF_DIR = Path("/etc/slurm")
STATE_ROOT = Path("/run/duplidog-test-slurm")
LOCK_PATH = Path("/run/lock/duplidog-test-slurm.lock")
MARKER = "# Written by duplidog tests/slurm_cluster.py for its test cluster; removed when it stops."
LOCK_WAIT_S = 900  # another session's farm tests take a few minutes
START_TIMEOUT_S = 60
# More than any job of the production profile asks for; not enforced without cgroups (see above).
CLAIMED_MEMORY_MB = 262144
DAEMONS = {"munged": "munged", "slurmctld": "slurmctld", "slurmd": "slurmd"}  # pidfile stem -> exe


class ClusterUnavailable(Exception):
    """This machine cannot host the test cluster; the message says why (a skip, not a failure)."""


def unavailable_reason() -> str | None:
    """Why this machine cannot start the test cluster, or None when it can."""
    if not sys.platform.startswith("linux"):
        return f"the test SLURM needs Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "the test SLURM needs root (to install packages and start munged, slurmctld, slurmd)"
    if not slurm_installed() and shutil.which("apt-get") is None:
        return "SLURM is not installed and there is no apt-get to install it"
    existing = CONF_DIR / "slurm.conf"
    if existing.exists() and MARKER not in existing.read_text(errors="replace"):
        return f"{existing} exists and was not written by these tests; refusing to replace a real SLURM"
    return None


def slurm_installed() -> bool:
    return all(Path(p).exists() for p in ("/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd")) and all(
        shutil.which(tool) for tool in ("sbatch", "squeue", "sinfo", "scontrol", "srun")
    )


def install_slurm() -> float:
    """Install the Debian packages if missing (apt-get update only when the first try fails); seconds taken."""
    if slurm_installed():
        return 0.0
    started = time.monotonic()
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]
    result = subprocess.run(install, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        update = subprocess.run(["apt-get", "update"], env=env, capture_output=True, text=True)
        if update.returncode != 0:
            raise ClusterUnavailable(f"apt-get update failed: {update.stderr.strip()[-500:]}")
        result = subprocess.run(install, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0 or not slurm_installed():
        raise ClusterUnavailable(f"apt-get install {' '.join(PACKAGES)} failed: {result.stderr.strip()[-500:]}")
    return time.monotonic() - started


def wait_for(condition, timeout: float, what: str, logs: tuple[Path, ...] = ()) -> None:
    """Poll `condition` until it is true; on timeout raise with the tails of the daemons' logs."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p}:\n{_tail(p)}" for p in logs)
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}\n{tails}")
        time.sleep(0.2)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as error:
        return f"(unreadable: {error})"


def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (no init reaps daemons in some containers)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _exe_name(pid: int) -> str:
    try:
        return Path(os.readlink(f"/proc/{pid}/exe")).name
    except OSError:
        return ""


def stop_pid(pid: int, timeout: float = 20.0) -> None:
    """SIGTERM, wait for the process to go, SIGKILL if it will not."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


def run_quiet(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, **kwargs)


@dataclass
class SlurmCluster:
    """The running test cluster: its node name, state directory, and how long it took to get here."""

    node: str
    cpus: int
    state: Path
    timings: dict = field(default_factory=dict)
    pids: dict = field(default_factory=dict)

    # -- starting and stopping ---------------------------------------------------------------------

    def start(self) -> None:
        started = time.monotonic()
        self._stop_leftovers()
        shutil.rmtree(self.state, ignore_errors=True)
        for sub in ("ctld", "slurmd", "log", "gpu"):
            (self.state / sub).mkdir(parents=True)
        self.state.chmod(0o755)
        self._start_munged()
        self._write_config()
        logs = (self.state / "log/slurmctld.log", self.state / "log/slurmd.log")
        self._daemon(["/usr/sbin/slurmctld", "-i"], "slurmctld")
        self._daemon(["/usr/sbin/slurmd", "-N", self.node], "slurmd")
        wait_for(self.node_idle, START_TIMEOUT_S, f"node {self.node} idle in partitions cpu and gpu", logs)
        self.timings["start_s"] = time.monotonic() - started

    def stop(self) -> None:
        """Cancel what is left, stop the daemons by PID, remove the configuration this module wrote."""
        if "slurmctld" in self.pids:
            run_quiet(["scancel", "--full", f"--user={os.getuid()}"], timeout=30)
        for name in ("slurmd", "slurmctld", "munged"):
            if name in self.pids:
                stop_pid(self.pids.pop(name))
        for conf in ("slurm.conf", "gres.conf"):
            path = CONF_DIR / conf
            if path.exists() and MARKER in path.read_text(errors="replace"):
                path.unlink()

    def _stop_leftovers(self) -> None:
        """Daemons a crashed session left (we hold the lock, so nobody else owns them): stop them."""
        for stem, exe in DAEMONS.items():
            pidfile = self.state / f"{stem}.pid"
            if not pidfile.exists():
                pidfile = self.state / "munge" / f"{stem}.pid"
            try:
                pid = int(pidfile.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            if _alive(pid) and _exe_name(pid).startswith(exe):
                stop_pid(pid)

    def _daemon(self, cmd: list[str], name: str, pidfile: Path | None = None) -> None:
        """Start a daemon that forks itself; stdio to /dev/null so it holds no pipe of ours or CI's."""
        subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        pidfile = pidfile or self.state / f"{name}.pid"
        wait_for(lambda: pidfile.exists() and pidfile.read_text().strip().isdigit(), 20, f"{pidfile}")
        self.pids[name] = int(pidfile.read_text().strip())

    def _start_munged(self) -> None:
        """A private munged (own key, socket and pidfile), so a system munge is neither needed nor touched."""
        munge = self.state / "munge"
        munge.mkdir(mode=0o755)
        shutil.chown(munge, "munge", "munge")
        key = munge / "munge.key"
        as_munge = ["runuser", "-u", "munge", "--"]
        subprocess.run([*as_munge, "/usr/sbin/mungekey", "--create", f"--keyfile={key}"], check=True, capture_output=True)
        self._daemon(
            [
                *as_munge,
                "/usr/sbin/munged",
                f"--socket={self.munge_socket}",
                f"--key-file={key}",
                f"--pid-file={munge / 'munged.pid'}",
                f"--log-file={munge / 'munged.log'}",
                f"--seed-file={munge / 'munged.seed'}",
            ],
            "munged",
            pidfile=munge / "munged.pid",
        )
        wait_for(
            lambda: run_quiet(["munge", "-n", "-S", str(self.munge_socket)]).returncode == 0,
            20,
            "munged to answer",
            (munge / "munged.log",),
        )

    @property
    def munge_socket(self) -> Path:
        return self.state / "munge" / "munge.socket"

    def _write_config(self) -> None:
        fake_gpu = self.state / "gpu" / "gpu0"
        os.mknod(fake_gpu, 0o666 | 0o020000, os.makedev(1, 3))  # a character device, like /dev/null
        fake_gpu.chmod(0o666)
        s = self.state
        slurm_conf = f"""{MARKER}
ClusterName=duplidogtest
SlurmctldHost={self.node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
CredType=cred/munge
StateSaveLocation={s / "ctld"}
SlurmdSpoolDir={s / "slurmd"}
SlurmctldPidFile={s / "slurmctld.pid"}
SlurmdPidFile={s / "slurmd.pid"}
SlurmctldLogFile={s / "log/slurmctld.log"}
SlurmdLogFile={s / "log/slurmd.log"}
# No cgroups in containers and CI runners: track processes by parent id, account nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={s / "log/jobcomp.txt"}
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
# Finished jobs stay visible to squeue/scontrol for 10 minutes: the plugin's squeue status needs it,
# and the tests read which partition each job ran in.
MinJobAge=600
# Without it the first job takes all the node's memory and jobs run one at a time.
DefMemPerCPU=1000
# The node line below is believed as written (memory beyond the real one; see the module docstring).
SlurmdParameters=config_overrides
GresTypes=gpu
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={CLAIMED_MEMORY_MB} Gres=gpu:1 State=UNKNOWN
PartitionName=cpu Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes={self.node} MaxTime=INFINITE State=UP
"""
        gres_conf = f"""{MARKER}
AutoDetect=off
NodeName={self.node} Name=gpu File={fake_gpu}
"""
        CONF_DIR.mkdir(parents=True, exist_ok=True)
        (CONF_DIR / "slurm.conf").write_text(slurm_conf)
        (CONF_DIR / "gres.conf").write_text(gres_conf)

    # -- looking at it -----------------------------------------------------------------------------

    def node_idle(self) -> bool:
        out = run_quiet(["sinfo", "-h", "-N", "-o", "%P %t"])
        states = dict(line.split() for line in out.stdout.splitlines() if line.strip()) if out.returncode == 0 else {}
        return states.get("cpu*") == "idle" and states.get("gpu") == "idle"

    def jobs(self) -> list[dict]:
        """Every job slurmctld still remembers (finished ones for MinJobAge), as scontrol's key=value fields."""
        out = run_quiet(["scontrol", "show", "job", "--oneliner"], check=True)
        records = []
        for line in out.stdout.splitlines():
            if "JobId=" in line:
                records.append(dict(re.findall(r"(\S+?)=(\S*)", line)))
        return records


def _acquire_lock(timeout: float):
    LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
    handle = open(LOCK_PATH, "a+")
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if time.monotonic() > deadline:
                handle.close()
                raise ClusterUnavailable(f"another test session has held {LOCK_PATH} for {timeout:.0f} s")
            time.sleep(1.0)


def _skip_or_fail(reason: str):
    if os.environ.get("DUPLIDOG_REQUIRE_FARM") == "1":
        pytest.fail(f"DUPLIDOG_REQUIRE_FARM=1 but the test SLURM is unavailable: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running single-node SLURM (partitions cpu and gpu, one fake GPU) for the whole test session."""
    reason = unavailable_reason()
    if reason:
        _skip_or_fail(reason)
    try:
        lock = _acquire_lock(LOCK_WAIT_S)
    except ClusterUnavailable as error:
        _skip_or_fail(str(error))
    cluster = SlurmCluster(node=socket.gethostname().split(".")[0], cpus=max(os.cpu_count() or 1, 2), state=STATE_ROOT)
    try:
        try:
            cluster.timings["install_s"] = install_slurm()
        except ClusterUnavailable as error:
            _skip_or_fail(str(error))
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        lock.close()
