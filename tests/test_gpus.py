"""GPU jobs on a workstation each get their own GPU (``duplidog.gpus``), with no GPU needed to test it.

The devices come from ``CUDA_VISIBLE_DEVICES`` (here made-up ids), and the lock files live in the test's
own directory (``DUPLIDOG_GPU_LOCKS``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from duplidog.errors import DuplidogError
from duplidog.gpus import claim_gpus

SNAKEMAKE = Path(sys.executable).parent / "snakemake"


def test_claims_take_different_gpus_and_give_them_back(tmp_path):
    environ = {"CUDA_VISIBLE_DEVICES": "3,5", "DUPLIDOG_GPU_LOCKS": str(tmp_path)}
    first = claim_gpus(1, dict(environ))
    second_environ = dict(environ)
    second = claim_gpus(1, second_environ)
    assert first.devices == ["3"] and second.devices == ["5"]
    assert second_environ["CUDA_VISIBLE_DEVICES"] == "5"
    with pytest.raises(DuplidogError, match="no 1 of GPUs 3,5 free"):
        claim_gpus(1, dict(environ), wait_seconds=0)
    first.release()
    assert claim_gpus(1, dict(environ), wait_seconds=0).devices == ["3"]
    second.release()
    # Two at once, all or nothing; more than there are: all of them.
    assert claim_gpus(2, dict(environ), wait_seconds=0).devices == ["3", "5"]
    assert claim_gpus(4, {**environ, "DUPLIDOG_GPU_LOCKS": str(tmp_path / "other")}).devices == ["3", "5"]


def test_slurm_and_cpu_jobs_claim_nothing(tmp_path):
    slurm = {"CUDA_VISIBLE_DEVICES": "0,1", "SLURM_JOB_ID": "7", "DUPLIDOG_GPU_LOCKS": str(tmp_path)}
    assert claim_gpus(2, slurm).devices == ["0", "1"]  # SLURM chose them; no lock taken
    assert not list(tmp_path.iterdir())
    assert claim_gpus(1, {"CUDA_VISIBLE_DEVICES": "", "DUPLIDOG_GPU_LOCKS": str(tmp_path)}).devices == []
    assert claim_gpus(0, {"CUDA_VISIBLE_DEVICES": "0", "DUPLIDOG_GPU_LOCKS": str(tmp_path)}).devices == []


def test_two_concurrent_snakemake_jobs_get_different_gpus(tmp_path):
    """Two jobs of one run, each `resources: gpu=1` under `--resources gpu=2`, run at once (each waits
    until both have started) and claim as the pipeline's scripts do."""
    (tmp_path / "job.py").write_text(textwrap.dedent("""
        import os, time
        from pathlib import Path
        from duplidog.gpus import claim_gpus

        claim = claim_gpus(snakemake.resources.get("gpu", 0))
        Path(f"started.{snakemake.wildcards.i}").touch()
        deadline = time.monotonic() + 60
        while not all(Path(f"started.{i}").exists() for i in (1, 2)) and time.monotonic() < deadline:
            time.sleep(0.1)
        together = all(Path(f"started.{i}").exists() for i in (1, 2))
        Path(snakemake.output[0]).write_text(os.environ["CUDA_VISIBLE_DEVICES"] + (" together" if together else ""))
    """))
    (tmp_path / "Snakefile").write_text(textwrap.dedent("""
        rule all:
            input: expand("out/{i}.txt", i=[1, 2])

        rule job:
            output: "out/{i}.txt"
            resources: gpu=1
            script: "job.py"
    """))
    environ = {**os.environ, "CUDA_VISIBLE_DEVICES": "4,7", "DUPLIDOG_GPU_LOCKS": str(tmp_path / "locks")}
    run = subprocess.run([str(SNAKEMAKE), "--cores", "2", "--resources", "gpu=2", "--quiet"], cwd=tmp_path,
                         env=environ, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    got = sorted((tmp_path / f"out/{i}.txt").read_text() for i in (1, 2))
    assert got == ["4 together", "7 together"]
