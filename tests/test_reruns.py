"""Partial reruns through profiles/local: after a deletion, a change or a killed job, Snakemake redoes
only what is missing or stale, and a killed training resumes from its newest checkpoint.

One tiny shot is run once; each test works on its own copy of that finished run (data, results and
Snakemake's metadata, modification times kept), so the tests neither wait on nor disturb each other.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from safetensors.numpy import load_file

from shotdata import ROOT, TINY, jobs_in, make_shot, snakemake

pytestmark = pytest.mark.pipeline

LOCAL = ("--profile", str(ROOT / "profiles/local"), "--cores", "2")
FRAMES = range(1001, 1008)  # chunks of 3: 1001-1003, 1004-1006, 1007
KEYFRAMES = (1001, 1004, 1007)
CHUNKS = {"infer_chunk__t1__1001_1003", "infer_chunk__t1__1004_1006", "infer_chunk__t1__1007_1007"}
EVERYTHING_AFTER_INGEST = {"pool", "train", "assemble", "all", *CHUNKS}


def write_shot_file(root: Path, **changes) -> Path:
    """The shot file, with paths relative to the run folder (so a copied run is self-contained)."""
    shot = {"shot": "t1", "source": "data/plate/plate.%04d.exr", "target": "data/fixed/fixed.####.exr", **TINY}
    for section, values in changes.items():
        shot[section] = {**shot.get(section, {}), **values}
    path = root / "t1.yaml"
    path.write_text(yaml.safe_dump(shot), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("finished")
    make_shot(root / "data", frames=FRAMES, keyframes=KEYFRAMES)
    snakemake(*LOCAL, "--configfile", str(write_shot_file(root)), cwd=root)
    return root


@pytest.fixture
def run(finished_run, tmp_path) -> Path:
    """A private copy of the finished run."""
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy, symlinks=True)  # copy2: modification times kept
    return copy


def planned_jobs(root: Path, **changes) -> set[str]:
    """The rules a rerun would run (dry run), with the shot file changed as given."""
    result = snakemake(*LOCAL, "--configfile", str(write_shot_file(root, **changes)), "-n", cwd=root)
    return jobs_in(result)


def output(root: Path, frame: int) -> Path:
    return root / f"results/t1/output/t1.{frame}.exr"


def test_a_finished_run_has_nothing_to_do_and_its_status_says_delivered(run, capsys, monkeypatch):
    from duplidog.cli import main
    from duplidog.status import find_shots, summary_line

    assert planned_jobs(run) == set()
    (shot,) = find_shots(run / "results")
    assert (shot.shot, shot.stage, shot.delivered, shot.frames, shot.steps) == ("t1", "delivered", 7, 7, 6)
    monkeypatch.chdir(run)
    line = summary_line(shot)
    assert line.startswith("t1: delivered, 7 of 7 frames to results/t1/output/t1.%04d.exr; model ")
    assert "results/t1/model (6 steps in " in line and "validation PSNR" in line and "QC results/t1/assemble/" in line
    assert main(["status"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["shot", "stage", "steps", "validation", "PSNR", "frames"]
    assert table[1].split()[:3] == ["t1", "delivered", "6"] and table[1].split()[-1] == "7/7"


def test_two_deleted_frames_rerun_only_their_chunk(run):
    before = {frame: output(run, frame).stat().st_mtime_ns for frame in FRAMES}
    output(run, 1004).unlink()
    output(run, 1006).unlink()
    assert planned_jobs(run) == {"infer_chunk__t1__1004_1006", "assemble", "all"}
    result = snakemake(*LOCAL, "--configfile", str(write_shot_file(run)), cwd=run)
    ran = jobs_in(result)
    assert ran == {"infer_chunk__t1__1004_1006", "assemble", "all"}, ran
    for frame in FRAMES:
        rewritten = output(run, frame).stat().st_mtime_ns != before[frame]
        assert rewritten == (frame in (1004, 1005, 1006)), frame


def test_an_inference_setting_reruns_inference_only(run):
    assert planned_jobs(run, infer={"tile": "none"}) == {*CHUNKS, "assemble", "all"}
    assert planned_jobs(run, infer={"chunk_size": 4}) == {
        "infer_chunk__t1__1001_1004", "infer_chunk__t1__1005_1007", "assemble", "all"}


@pytest.mark.parametrize("setting", [{"tile": 16}, {"tile": 32, "overlap": 3}])
def test_a_tile_or_overlap_below_the_networks_reach_is_planned_not_refused(run, setting):
    # Issue 12.3 (issue 13.3 refused these when the DAG was built, before Snakemake deleted the delivered
    # frames): every tile and overlap the schema accepts now runs -- a tile too small for the overlap is
    # enlarged, an overlap below the reach raised (tests/test_infer.py runs them) -- so the DAG check
    # passes them and inference reruns. A dry run: the delivered frames stay as they are.
    before = {frame: output(run, frame).read_bytes() for frame in FRAMES}
    assert planned_jobs(run, infer=setting) == {*CHUNKS, "assemble", "all"}
    assert {frame: output(run, frame).read_bytes() for frame in FRAMES} == before


def test_an_assemble_setting_reruns_assemble_only_and_takes_effect(run):
    from duplidog import imageio

    sheet = run / "results/t1/assemble/contact_sheet.png"
    before = imageio.read_info(sheet)
    assert planned_jobs(run, assemble={"contact_width": 16}) == {"assemble", "all"}
    result = snakemake(*LOCAL, "--configfile", str(write_shot_file(run, assemble={"contact_width": 16})), cwd=run)
    assert jobs_in(result) == {"assemble", "all"}
    after = imageio.read_info(sheet)
    assert after.width < before.width and after.height < before.height, (before, after)


def test_a_pool_setting_reruns_pool_training_and_inference(run):
    assert planned_jobs(run, pool={"tiles_per_keyframe": 20}) == EVERYTHING_AFTER_INGEST


def test_a_training_setting_retrains_but_keeps_the_pool(run):
    assert planned_jobs(run, train={"steps": 7}) == EVERYTHING_AFTER_INGEST - {"pool"}


def test_starting_from_another_shots_model_under_results_plans_a_retraining(run):
    shutil.copytree(run / "results/t1/model", run / "results/other/model")
    assert planned_jobs(run, train={"init_from": "results/other/model"}) == EVERYTHING_AFTER_INGEST - {"pool"}


def train_result(root: Path) -> dict:
    return json.loads((root / "results/t1/train/result.json").read_text())


def test_more_steps_train_the_shots_model_further_and_its_own_model_can_be_the_start(run):
    # Issue 14.1: raising train.steps restarted from scratch; init_from the shot's own model was a
    # CyclicGraphException.
    ran = snakemake(*LOCAL, "--configfile", str(write_shot_file(run, train={"steps": 9})), "--until", "train",
                    cwd=run)
    # The run ends in one line per shot.
    assert "duplidog: t1: " in ran.stderr and "of 7 frames" in ran.stderr, ran.stderr[-2000:]
    result = train_result(run)
    assert result["start"] == "continue" and result["resumed_from"] == TINY["train"]["steps"]
    assert result["steps"] == 9
    own = {"steps": 9, "init_from": "results/t1/model", "lr": 0.002}
    assert planned_jobs(run, train=own) == EVERYTHING_AFTER_INGEST - {"pool"}
    snakemake(*LOCAL, "--configfile", str(write_shot_file(run, train=own)), "--until", "train", cwd=run)
    assert train_result(run)["start"] == "fine-tune"


def test_a_replaced_source_frame_reruns_its_chunk_and_a_replaced_keyframe_retrains(run):
    from shotdata import write_frame
    from duplidog import imageio

    plate = run / "data/plate/plate.1005.exr"
    write_frame(plate, imageio.read_pixels(plate) * 1.01)
    assert planned_jobs(run) == {"infer_chunk__t1__1004_1006", "assemble", "all"}
    fixed = run / "data/fixed/fixed.1004.exr"
    write_frame(fixed, imageio.read_pixels(fixed) * 1.01)
    assert planned_jobs(run) == {"ingest", *EVERYTHING_AFTER_INGEST}


def test_a_touched_source_frame_reruns_its_chunk(run):
    # Snakemake compares the content of inputs under --max-checksum-file-size (1 MB) and reruns
    # nothing for a touched file whose content is unchanged; plates are larger. 0 makes these so.
    os.utime(run / "data/plate/plate.1005.exr")
    result = snakemake(*LOCAL, "--configfile", str(write_shot_file(run)), "-n", "--max-checksum-file-size", "0",
                       cwd=run)
    assert jobs_in(result) == {"infer_chunk__t1__1004_1006", "assemble", "all"}


def test_a_truncated_plate_frame_is_one_line_and_the_chunks_good_frames_are_kept(run):
    # Issue 13.16: a chained queue.Empty traceback, and Snakemake deleted the frames written before it.
    plate = run / "data/plate/plate.1005.exr"
    whole = plate.read_bytes()
    plate.write_bytes(whole[: len(whole) * 2 // 3])
    before = {frame: output(run, frame).read_bytes() for frame in (1001, 1002, 1003, 1007)}
    result = snakemake(*LOCAL, "--configfile", str(write_shot_file(run)), cwd=run, check=False)
    assert result.returncode != 0
    log = (run / "logs/t1/infer/1004-1006.log").read_text()
    assert re.search(r"^duplidog: error: data/plate/plate.1005.exr: truncated or corrupt", log, re.MULTILINE), log
    assert "Traceback" not in log and "queue.Empty" not in log, log
    assert output(run, 1004).is_file() and not output(run, 1005).exists()
    assert {frame: output(run, frame).read_bytes() for frame in before} == before
    plate.write_bytes(whole)  # mended: the rerun delivers the rest
    snakemake(*LOCAL, "--configfile", str(write_shot_file(run)), cwd=run)
    assert all(output(run, frame).is_file() for frame in FRAMES)


def test_a_replaced_frame_of_another_size_is_a_clear_error(run):
    from shotdata import write_frame
    import numpy as np

    write_frame(run / "data/plate/plate.1005.exr", np.zeros((20, 30, 3), np.float32))
    result = snakemake(*LOCAL, "--configfile", str(write_shot_file(run)), cwd=run, check=False)
    assert result.returncode != 0
    log = (run / "logs/t1/infer/1004-1006.log").read_text()
    assert "plate.1005.exr: 30x20, but the plate is 48x40" in log, log[-2000:]


# -- a training job killed mid-way -----------------------------------------------------------------
LONG_TRAINING = {"steps": 160, "checkpoint_every": 20, "validate_every": 80}


def train_process(snakemake_process: subprocess.Popen) -> psutil.Process | None:
    """The Python process running the train rule's script, among Snakemake's descendants."""
    for child in psutil.Process(snakemake_process.pid).children(recursive=True):
        try:
            if any(".train.py" in part for part in child.cmdline()):
                return child
        except psutil.NoSuchProcess:
            continue
    return None


def kill_training_midway(root: Path, signum: int) -> int:
    """Start the run, wait for a checkpoint past step 20, send `signum` to training; the newest step."""
    shot_file = write_shot_file(root, train=LONG_TRAINING)
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(root),
               *LOCAL, "--configfile", str(shot_file), "--until", "train"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    process = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    checkpoints = root / "results/t1/train/checkpoints"
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if any(int(p.stem.split("_")[1]) >= 40 for p in checkpoints.glob("step_*.pt")):
                break
            time.sleep(0.05)
        trainer = train_process(process)
        assert trainer is not None, "training finished or never started before it could be killed"
        trainer.send_signal(signum)
        trainer.wait(60)
        process.wait(120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode != 0, "the interrupted run should fail"
    assert not (root / "results/t1/model/model.json").exists()
    steps = [int(p.stem.split("_")[1]) for p in checkpoints.glob("step_*.pt")]
    assert steps and max(steps) < LONG_TRAINING["steps"]
    return max(steps)


@pytest.fixture(scope="module")
def uninterrupted_weights(finished_run, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("uninterrupted")
    shutil.copytree(finished_run, root, dirs_exist_ok=True, symlinks=True)
    snakemake(*LOCAL, "--configfile", str(write_shot_file(root, train=LONG_TRAINING)), "--until", "train", cwd=root)
    return load_file(root / "results/t1/model/model.safetensors")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killed_training_resumes_from_its_newest_checkpoint(run, signum, uninterrupted_weights):
    newest = kill_training_midway(run, signum)
    snakemake(*LOCAL, "--configfile", str(write_shot_file(run, train=LONG_TRAINING)), "--until", "train", cwd=run)
    result = train_result(run)
    assert result["resumed_from"] == newest > 0, result
    assert result["steps"] == LONG_TRAINING["steps"]
    resumed = load_file(run / "results/t1/model/model.safetensors")
    assert resumed.keys() == uninterrupted_weights.keys()
    for name, values in uninterrupted_weights.items():
        assert (resumed[name] == values).all(), f"{name} differs from the uninterrupted run's"
