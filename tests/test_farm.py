"""The farm profile on a real SLURM: jobs go through sbatch to the right partitions, and the frames are
the same as a local run's.

The cluster is the single-node SLURM of tests/slurm_cluster.py. Snakemake runs with the production
profile (profiles/farm) and the test cluster's overlay (profiles/farm-localtest) layered on top, inside
`timeout -s INT` so that a plugin waiting forever fails the test instead of stalling CI (SIGINT, not
SIGTERM: only SIGINT stops the plugin's wait and cancels its jobs).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FARM_PROFILES = ["--profile", str(ROOT / "profiles/farm"), "--profile", str(ROOT / "profiles/farm-localtest")]
RUN_TIMEOUT_S = 600
CPU_RULES = {"demo_shot", "ingest", "pool", "assemble"}
GPU_RULES = {"train", "infer_chunk"}

pytestmark = pytest.mark.farm


def snakemake(*args, cwd: Path, snakefile: Path = ROOT / "Snakefile") -> subprocess.CompletedProcess:
    """Run snakemake in `cwd`; a run that fails or hangs fails the test with the end of its output."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    command = [
        "timeout", "-s", "INT", "-k", "30", str(RUN_TIMEOUT_S),
        sys.executable, "-m", "snakemake", "--snakefile", str(snakefile), "--directory", str(cwd),
        "--workflow-profile", "none", *args,
    ]  # fmt: skip
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        what = "timed out" if result.returncode in (124, 130, 137) else f"failed ({result.returncode})"
        raise AssertionError(f"snakemake {' '.join(args)} {what}:\n{result.stdout[-3000:]}\n{result.stderr[-8000:]}")
    return result


def rule_of(job: dict) -> str:
    """The rule a SLURM job ran, from the comment the plugin gives it: rule_<rule>[_wildcards_<...>]."""
    comment = job.get("Comment", "")
    assert comment.startswith("rule_"), f"job {job['JobId']} has no rule comment: {comment!r}"
    return comment[len("rule_") :].split("_wildcards_")[0]


def family(rule: str) -> str:
    """infer_chunk__<shot>__<first>_<last> -> infer_chunk: the name profiles configure them by."""
    return rule.split("__")[0]


def jobs_run_in(cluster, workdir: Path) -> list[dict]:
    return [job for job in cluster.jobs() if job.get("WorkDir") == str(workdir)]


def test_the_test_cluster_runs_jobs_on_both_partitions(slurm_cluster, tmp_path):
    """The fixture itself: a CPU job, and a GPU job that sees its (fake) GPU and can start a job step."""
    out = tmp_path / "gpu.out"
    script = "echo CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES; srun --ntasks=1 echo step-ran"
    for partition, extra in (("cpu", []), ("gpu", ["--gpus=1"])):
        subprocess.run(
            ["sbatch", "--parsable", "--wait", "-p", partition, *extra, "-D", str(tmp_path), "-o", str(tmp_path / f"{partition}.out"), "--wrap", script],
            check=True, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert "CUDA_VISIBLE_DEVICES=0" in out.read_text() and "step-ran" in out.read_text()
    partitions = {job["Partition"] for job in jobs_run_in(slurm_cluster, tmp_path) if job["JobState"] == "COMPLETED"}
    assert partitions == {"cpu", "gpu"}


# A tiny demo shot: 8 of the demo's frames (2 keyframes), a few training steps, two inference chunks.
TINY_SETTINGS = """
frames: "1001-1008"
seed: 3
pool: {tiles_per_keyframe: 24, tile_size: 32, border: 4}
train: {steps: 6, batch_size: 4, validate_every: 3, checkpoint_every: 3}
model: {preset: small, overrides: {width: 8}}
infer: {chunk_size: 4}
"""
FRAMES = range(1001, 1009)


@pytest.fixture(scope="module")
def tiny_demo_shot(tmp_path_factory) -> list[str]:
    """`duplidog demo DIR` plus tiny settings: the --configfile arguments of the shot."""
    root = tmp_path_factory.mktemp("demo")
    subprocess.run([str(Path(sys.executable).parent / "duplidog"), "demo", str(root / "shot")], check=True, capture_output=True)
    (root / "tiny.yaml").write_text(TINY_SETTINGS)
    return ["--configfile", str(root / "shot/demo.yaml"), str(root / "tiny.yaml")]


def test_farm_run_goes_through_slurm_and_matches_a_local_run(slurm_cluster, tiny_demo_shot, tmp_path):
    from duplidog import imageio

    local, farm = tmp_path / "local", tmp_path / "farm"
    local.mkdir(), farm.mkdir()
    started = time.monotonic()
    # The same thread counts as the farm overlay's (max-threads), so CPU sums come out the same.
    snakemake("--profile", str(ROOT / "profiles/local"), "--max-threads", "2", *tiny_demo_shot, cwd=local)
    local_s = time.monotonic() - started
    started = time.monotonic()
    snakemake(*FARM_PROFILES, *tiny_demo_shot, cwd=farm)
    farm_s = time.monotonic() - started
    print(f"\ntiny demo shot: local run {local_s:.1f} s, farm run {farm_s:.1f} s (x{farm_s / local_s:.2f}); "
          f"SLURM install {slurm_cluster.timings['install_s']:.1f} s, start {slurm_cluster.timings['start_s']:.1f} s")

    # Every rule job went through sbatch, finished, and ran in the partition the profile names.
    jobs = jobs_run_in(slurm_cluster, farm)
    ran = [(family(rule_of(job)), job) for job in jobs]
    assert {name for name, _ in ran} == {"ingest", "pool", "train", "infer_chunk", "assemble"}, ran
    assert sum(name == "infer_chunk" for name, _ in ran) == 2
    for name, job in ran:
        assert job["JobState"] == "COMPLETED", (name, job["JobState"], job.get("Reason"))
        wanted = "gpu" if name in GPU_RULES else "cpu"
        assert job["Partition"] == wanted, f"{name} ran in partition {job['Partition']}, not {wanted}"
        assert (job.get("TresPerJob") == "gres:gpu:1") == (name in GPU_RULES), (name, job.get("TresPerJob"))
    # The plugin keeps SLURM's log of each job (slurm-keep-successful-logs), one folder per rule.
    logs = farm / ".snakemake/slurm_logs"
    assert {family(d.name.removeprefix("rule_")) for d in logs.iterdir()} == {"ingest", "pool", "train", "infer_chunk", "assemble"}

    # Same shot, same seed: the farm's frames are the local run's frames.
    for frame in FRAMES:
        name = f"results/demo/output/demo.{frame:04d}.exr"
        here, there = imageio.read_pixels(local / name), imageio.read_pixels(farm / name)
        assert here.shape == there.shape and (here == there).all(), f"{name}: farm and local frames differ"


STANDIN_SNAKEFILE = """
localrules: all
rule all:
    input: "gpu.txt"
rule ingest:
    output: "cpu.txt"
    shell: "echo $SLURM_JOB_PARTITION > {output}"
rule train:
    input: "cpu.txt"
    output: "gpu.txt"
    resources: gpu=1
    shell: "echo $SLURM_JOB_PARTITION $CUDA_VISIBLE_DEVICES > {output}"
"""


def test_profile_routes_a_standin_workflow(slurm_cluster, tmp_path):
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text(STANDIN_SNAKEFILE)
    started = time.monotonic()
    snakemake(*FARM_PROFILES, cwd=tmp_path, snakefile=snakefile)
    print(f"stand-in farm run: {time.monotonic() - started:.1f} s; cluster {slurm_cluster.timings}")
    assert (tmp_path / "cpu.txt").read_text().split() == ["cpu"]
    assert (tmp_path / "gpu.txt").read_text().split() == ["gpu", "0"]
    ran = {rule_of(job): job for job in jobs_run_in(slurm_cluster, tmp_path)}
    assert ran["ingest"]["Partition"] == "cpu" and ran["train"]["Partition"] == "gpu"
    assert ran["train"]["TresPerJob"] == "gres:gpu:1"
