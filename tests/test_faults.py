"""The fault matrix (issue 13, "nothing lost, nothing silent"): bad inputs and faults tried as a user
meets them, each judged the same way, and the figure printed at the end:

    python -m pytest tests/test_faults.py      # ... "faults: N tried, N clear, N lost"

A fault is *clear* when what the user sees is one line naming the file, folder or setting (the
case's pattern) -- from Python no chained traceback, from a process no traceback at all. It is *lost*
when a file that was there before (a plate, a keyframe, a delivered frame, a checkpoint, a model) is
changed or gone afterwards. Every case must be clear and lose nothing.

Cases run on tiny shots in seconds: most call the functions the rules and the command line call; a
few run Snakemake itself, only as far as building the DAG. Faults of the machine (a full disk, a
folder turned read-only mid-run) are simulated by monkeypatching, never by filling a disk; a
read-only folder for a process is made real by dropping root's override of file modes (setpriv).
To add a case: write a function ``tmp_path, monkeypatch -> Outcome`` and decorate it with ``@case``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from duplidog.errors import DuplidogError
from shotdata import PLAN_FRAMES as FRAMES, ROOT, make_model, write_frame, write_plan_shot
from shotdata import make_shot as make_small_shot

CASES: dict = {}
OUTCOMES: dict[str, tuple[bool, bool]] = {}  # case -> (clear, lost), filled as the cases run


@dataclass
class Outcome:
    said: str | None  # what the user saw: an error's message, or a process's output; None if no error
    expect: str  # a pattern the one line must match (it names the file or setting)
    lost: list[str] = field(default_factory=list)  # files changed or gone that should not be
    chained: bool = False  # a Python error printed chained to another

    @property
    def clear(self) -> bool:
        if self.said is None or self.chained or "Traceback" in self.said:
            return False
        return any(re.search(self.expect, line) for line in self.said.splitlines()) and (
            "\n" not in self.said or self.said.startswith("<process>"))


def case(name: str):
    def register(function):
        CASES[name] = function
        return function

    return register


def fingerprint(*paths: Path) -> dict[str, str]:
    """The content of every file under ``paths``, as a digest per path."""
    found = {}
    for top in paths:
        for path in ([top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())):
            found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def lost_since(before: dict[str, str]) -> list[str]:
    return [path for path, digest in before.items()
            if not Path(path).is_file() or hashlib.sha256(Path(path).read_bytes()).hexdigest() != digest]


def said_by(call, expect: str, before: dict[str, str] | None = None) -> Outcome:
    """Run ``call`` and say what a user of the function (or the command line, which prints the same
    message) would have seen."""
    try:
        call()
    except DuplidogError as error:
        chained = error.__cause__ is not None or (error.__context__ is not None and not error.__suppress_context__)
        return Outcome(str(error), expect, lost_since(before or {}), chained)
    except Exception as error:  # anything but a DuplidogError is a traceback
        return Outcome(f"Traceback: {type(error).__name__}: {error}", expect, lost_since(before or {}))
    return Outcome(None, expect, lost_since(before or {}))


def said_by_process(command: list[str], expect: str, cwd: Path, before: dict[str, str] | None = None,
                    prefix: list[str] = ()) -> Outcome:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run([*prefix, *command], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    said = None if result.returncode == 0 else "<process>\n" + result.stdout + result.stderr
    return Outcome(said, expect, lost_since(before or {}))


def snakemake_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--profile",
            str(ROOT / "profiles/local"), "--cores", "1", *args]


def unprivileged() -> list[str] | None:
    """A command prefix under which file modes hold (root overrides them), or None where none exists."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv"):
        return ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    return None


@pytest.fixture
def shot(tmp_path):
    """A four-frame RGBA plate, its plan and a tiny model (shotdata.write_plan_shot)."""
    plan = write_plan_shot(tmp_path)
    make_model(tmp_path / "model", ("R", "G", "B"), ("R", "G", "B"))
    return tmp_path, plan


def infer_all(root: Path, plan: Path, **settings):
    from duplidog.infer import infer_frames

    infer_frames(root / "model", plan, FRAMES, str(root / "out/out.%04d.exr"), {"device": "cpu", **settings})


def fail_on(monkeypatch, name_part: str, error: OSError):
    """Make the rename of any file whose name holds ``name_part`` raise ``error`` (a full disk, a folder
    turned read-only after the job started): the last step of every atomic write."""
    real_replace = os.replace

    def replace(src, dst):
        if name_part in str(dst):
            raise type(error)(error.errno, os.strerror(error.errno), str(src))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)


# -- data lost ------------------------------------------------------------------------------------------

@case("duplidog infer --output over its --source")
def infer_over_source(tmp_path, monkeypatch):
    from duplidog.infer import infer_sequence

    write_plan_shot(tmp_path)
    make_model(tmp_path / "model", ("R", "G", "B"), ("R", "G", "B"))
    before = fingerprint(tmp_path / "plate")
    return said_by(lambda: infer_sequence(tmp_path / "model", str(tmp_path / "plate/plate.%04d.exr"),
                                          str(tmp_path / "plate/plate.####.exr"), device="cpu"),
                   r"output would overwrite the source or target frame", before)


# -- silently wrong ------------------------------------------------------------------------------------

@case("a float frame among the plate's half frames")
def other_pixel_type(tmp_path, monkeypatch):
    from duplidog import settings
    from duplidog.ingest import ingest
    from shotdata import write_frame

    shot_file = make_small_shot(tmp_path)
    write_frame(tmp_path / "plate/plate.1003.exr", np.zeros((40, 48, 3)), pixel_type="float")
    before = fingerprint(tmp_path / "plate", tmp_path / "fixed")
    return said_by(lambda: ingest(settings.load_shot_file(shot_file), tmp_path / "out"),
                   r"plate.1003.exr: a openexr file of float pixels", before)


@case("a plate frame replaced by RGB since ingest (its alpha gone)")
def replaced_since_ingest(tmp_path, monkeypatch):
    plan = write_plan_shot(tmp_path)
    make_model(tmp_path / "model", ("R", "G", "B"), ("R", "G", "B"))
    plan_data = json.loads(plan.read_text())
    plan.write_text(json.dumps({**plan_data, "channel_names": ["R", "G", "B", "A"]}))
    write_frame(tmp_path / "plate/plate.1003.exr", np.zeros((36, 52, 3), np.float32), attributes={"compression": "piz"})
    return said_by(lambda: infer_all(tmp_path, plan), r"plate.1003.exr: channels R,G,B, but the plate's were R,G,B,A")


@case("a typo inside a section (infer.chunksize)")
def typo_in_section(tmp_path, monkeypatch):
    from duplidog.settings import resolve

    return said_by(lambda: resolve({"infer": {"chunksize": 4}}, origin="sh010.yaml"),
                   r"sh010.yaml: infer: Additional properties are not allowed \('chunksize'")


@case("a model card without its weights checksum")
def card_without_checksum(tmp_path, monkeypatch):
    from duplidog.core.modelstore import load_model

    make_model(tmp_path / "model", ("R", "G", "B"), ("R", "G", "B"))
    card_path = tmp_path / "model/model.json"
    card = json.loads(card_path.read_text())
    card["weights"].pop("sha256")
    card_path.write_text(json.dumps(card))
    return said_by(lambda: load_model(tmp_path / "model"), r"model.json: the card has no weights checksum")


@case("NaN in a plate frame")
def nan_in_plate(tmp_path, monkeypatch):
    plan = write_plan_shot(tmp_path)
    make_model(tmp_path / "model", ("R", "G", "B"), ("R", "G", "B"))
    pixels = np.ones((36, 52, 4), np.float32)
    pixels[5, 5, 1] = np.nan
    write_frame(tmp_path / "plate/plate.1002.exr", pixels, channels=("R", "G", "B", "A"),
                attributes={"compression": "piz"})
    return said_by(lambda: infer_all(tmp_path, plan), r"plate.1002.exr: .*(NaN|non-finite)")


# -- unclear -------------------------------------------------------------------------------------------

@case("a shot file that is not YAML")
def not_yaml(tmp_path, monkeypatch):
    from duplidog.settings import read_shot_yaml

    (tmp_path / "sh010.yaml").write_text("shot: sh010\nsource: [unclosed\n")
    return said_by(lambda: read_shot_yaml(tmp_path / "sh010.yaml"), r"sh010.yaml: not valid YAML at line \d+")


@case("a read-only output folder, under duplidog infer")
def read_only_folder_cli(tmp_path, monkeypatch):
    prefix = unprivileged()
    if prefix is None:
        pytest.skip("root, and no setpriv to drop root's override of file modes")
    write_plan_shot(tmp_path)
    make_model(tmp_path / "model", ("R", "G", "B"), ("R", "G", "B"))
    (tmp_path / "delivery").mkdir()
    (tmp_path / "delivery").chmod(0o555)
    before = fingerprint(tmp_path / "plate")
    command = [sys.executable, "-m", "duplidog.cli", "infer", "--model", "model", "--source", "plate/plate.%04d.exr",
               "--output", "delivery/o.%04d.exr", "--device", "cpu"]
    return said_by_process(command, r"^duplidog: error: delivery: output folder is not writable", tmp_path, before,
                           prefix)


@case("a read-only output folder, under Snakemake")
def read_only_folder_snakemake(tmp_path, monkeypatch):
    prefix = unprivileged()
    if prefix is None:
        pytest.skip("root, and no setpriv to drop root's override of file modes")
    shot_file = make_small_shot(tmp_path, extra={"output": str(tmp_path / "delivery/sh.%04d.exr")})
    (tmp_path / "delivery").mkdir()
    (tmp_path / "delivery").chmod(0o555)
    before = fingerprint(tmp_path / "plate", tmp_path / "fixed")
    return said_by_process(snakemake_command("--configfile", str(shot_file), "-n"),
                           r"delivery: output folder is not writable \(frame 1001 is to be written there\)",
                           tmp_path, before, prefix)


@case("the output folder turned read-only mid-chunk")
def read_only_mid_chunk(tmp_path, monkeypatch):
    plan = write_plan_shot(tmp_path)
    make_model(tmp_path / "model", ("R", "G", "B"), ("R", "G", "B"))
    fail_on(monkeypatch, "out.1003", PermissionError(errno.EACCES, "Permission denied"))
    real_unlink = Path.unlink

    def unlink(self, missing_ok=False):  # removing the temporary fails too: it must not hide the error
        if ".tmp-" in self.name:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_unlink(self, missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    outcome = said_by(lambda: infer_all(tmp_path, plan), r"out: folder not writable \(permission denied\), so "
                                                         r"out.1003.exr cannot be written")
    outcome.lost += [f"out.{frame}.exr" for frame in (1001, 1002) if not (tmp_path / f"out/out.{frame}.exr").is_file()]
    return outcome


@case("disk full writing a frame")
def disk_full_frame(tmp_path, monkeypatch):
    plan = write_plan_shot(tmp_path)
    make_model(tmp_path / "model", ("R", "G", "B"), ("R", "G", "B"))
    fail_on(monkeypatch, "out.1003", OSError(errno.ENOSPC, ""))
    outcome = said_by(lambda: infer_all(tmp_path, plan), r"out.1003.exr: disk full \(no space left in .*out\)")
    outcome.lost += [f"out.{frame}.exr" for frame in (1001, 1002) if not (tmp_path / f"out/out.{frame}.exr").is_file()]
    return outcome


@case("disk full writing a training checkpoint (torch says only 'file write failed')")
def disk_full_checkpoint(tmp_path, monkeypatch):
    import torch

    from duplidog.core.layout import list_checkpoints
    from duplidog.train import checkpoint as ckpt

    folder = tmp_path / "checkpoints"
    ckpt.save_checkpoint(folder, {"step": 3, "weights": torch.zeros(4)})
    before = fingerprint(folder)

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10 << 30, 10 << 30, 0))
    outcome = said_by(lambda: ckpt.save_checkpoint(folder, {"step": 6, "weights": torch.ones(4)}),
                      r"step_00000006.pt: disk full", before)
    monkeypatch.undo()
    # Nothing half-written is left, so the rerun after space is freed resumes from step 3.
    if [step for step, _ in list_checkpoints(folder)] != [3] or len(list(folder.iterdir())) != 1:
        outcome.lost.append("the resumable checkpoint state")
    return outcome


@case("disk full writing the model")
def disk_full_model(tmp_path, monkeypatch):
    import safetensors.torch

    from duplidog.core.modelstore import load_model

    make_model(tmp_path / "model", ("R", "G", "B"), ("R", "G", "B"))
    before = fingerprint(tmp_path / "model")

    def full(tensors, filename, metadata=None):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    outcome = said_by(lambda: make_model(tmp_path / "model", ("R", "G", "B"), ("R", "G", "B")),
                      r"model: disk full", before)
    monkeypatch.undo()
    load_model(tmp_path / "model")  # the previous model is whole
    if sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".model")):
        outcome.lost.append("a temporary model folder left behind")
    return outcome


@case("disk full outside an atomic write (metrics appended to), under the command line")
def disk_full_append(tmp_path, monkeypatch):
    import io

    from duplidog import cli

    def train(args):  # what an appended metrics file meets on a full disk, chained as torch chains it
        try:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "train/metrics.csv"))
        except OSError as error:
            raise RuntimeError("write failed") from error

    monkeypatch.setattr(cli, "cmd_train", train)
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = cli.main(["train", "--shot", str(tmp_path / "sh.yaml")])
    said = stderr.getvalue().strip() if code else None
    return Outcome(said, r"^duplidog: error: \S+train/metrics.csv: disk full \(no space left in \S+train\)")


@case("a truncated EXR in the middle of a chunk")
def truncated_mid_chunk(tmp_path, monkeypatch):
    plan = write_plan_shot(tmp_path)
    make_model(tmp_path / "model", ("R", "G", "B"), ("R", "G", "B"))
    frame = tmp_path / "plate/plate.1003.exr"
    frame.write_bytes(frame.read_bytes()[: frame.stat().st_size * 2 // 3])
    outcome = said_by(lambda: infer_all(tmp_path, plan, read_ahead=3), r"plate.1003.exr: truncated or corrupt")
    outcome.lost += [f"out.{f}.exr" for f in (1001, 1002) if not (tmp_path / f"out/out.{f}.exr").is_file()]
    return outcome


@case("a stale Snakemake lock after kill -9")
def stale_lock(tmp_path, monkeypatch):
    shot_file = make_small_shot(tmp_path)
    locks = tmp_path / ".snakemake/locks"
    locks.mkdir(parents=True)
    (locks / "0.input.lock").write_text(str(tmp_path / "plate/plate.1001.exr") + "\n")
    (locks / "0.output.lock").write_text(str(tmp_path / "results/t1/ingest/plan.json") + "\n")
    before = fingerprint(tmp_path / "plate", tmp_path / "fixed")
    outcome = said_by_process(snakemake_command("--configfile", str(shot_file)),
                              r"^duplidog: \.snakemake/locks holds the lock of an earlier run that was killed .*"
                              r"unlock with: snakemake .*--configfile \S+t1.yaml --unlock$", tmp_path, before)
    if outcome.clear:  # and the command it gives does unlock
        unlock = re.search(r"unlock with: snakemake (.*)$", outcome.said, re.MULTILINE).group(1)
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        subprocess.run([sys.executable, "-m", "snakemake", *unlock.split()], cwd=tmp_path, env=env, check=True,
                       capture_output=True, timeout=300)
        assert not locks.exists() or not any(locks.iterdir())
    return outcome


# ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def figure(request):
    """Print the matrix's figure after its cases ran, past pytest's capture."""
    yield
    if not OUTCOMES:
        return
    tried = len(OUTCOMES)
    clear = sum(1 for is_clear, _ in OUTCOMES.values() if is_clear)
    lost = sum(1 for _, is_lost in OUTCOMES.values() if is_lost)
    line = f"faults: {tried} tried, {clear} clear, {lost} lost"
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        print(f"\n{line}", flush=True)


@pytest.mark.parametrize("name", list(CASES))
def test_the_fault_is_one_clear_line_and_loses_nothing(name, tmp_path, monkeypatch):
    outcome = CASES[name](tmp_path, monkeypatch)
    OUTCOMES[name] = (outcome.clear, bool(outcome.lost))
    assert outcome.said is not None, f"{name}: no error at all"
    assert outcome.clear, f"{name}: not one clear line matching {outcome.expect!r}:\n{outcome.said[-3000:]}"
    assert not outcome.lost, f"{name}: lost {outcome.lost}"


def test_a_killed_runs_temporaries_are_swept_and_nothing_else(tmp_path):
    # Issue 13.17: hidden `.<name>.tmp-*` files and folders stayed for good after kill -9; a run removes
    # them under results/ when it starts (onstart), before its first job.
    from duplidog.atomic import sweep_stale_temporaries, temporary_sibling

    stale = [temporary_sibling(tmp_path / "train/checkpoints/step_00000003.pt"),
             temporary_sibling(tmp_path / "ingest/plan.json"), temporary_sibling(tmp_path / "output/t1.1004.exr")]
    kept = [tmp_path / "train/checkpoints/step_00000006.pt", tmp_path / ".hidden.tmp-notmine.exr",
            tmp_path / "output/t1.1004.exr", tmp_path / "pool/pool.zarr/source/c/0/0/0/0"]
    for path in stale + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    zarr_tmp = temporary_sibling(tmp_path / "pool/pool.zarr")
    (zarr_tmp / "source").mkdir(parents=True)
    removed = sweep_stale_temporaries(tmp_path)
    assert sorted(removed) == sorted(stale + [zarr_tmp])
    assert all(path.exists() for path in kept) and not any(path.exists() for path in stale + [zarr_tmp])
