"""The Snakemake pipeline end to end on a tiny shot: dry run, lint, a real run, the report."""

import json
import re

import pytest
import zarr

from duplidog import imageio
from shotdata import ROOT, TINY, make_shot, snakemake

pytestmark = pytest.mark.pipeline


@pytest.fixture(scope="module")
def tiny_shot(tmp_path_factory):
    root = tmp_path_factory.mktemp("shot")
    return root, make_shot(root / "data", frames=range(1001, 1008), keyframes=(1001, 1004, 1007), extra=TINY)


def test_dry_run_lists_the_whole_dag_for_the_demo(tmp_path):
    result = snakemake("--profile", str(ROOT / "profiles/local"), "-n", cwd=tmp_path)
    for rule in ("demo_shot", "ingest", "pool", "train", "infer_chunk__demo__1001_1008", "assemble"):
        assert rule in result.stdout, result.stdout[-3000:]


@pytest.mark.parametrize("shot, fault", [
    ("trian: {steps: 3}\n", r"config: \(top level\): Additional properties are not allowed \('trian' was unexpected\)"),
    ("model: {presett: large}\n", r"config: model: Additional properties are not allowed \('presett' was unexpected\)"),
])
def test_a_typo_in_the_shot_file_is_one_short_message(tmp_path, shot, fault):
    (tmp_path / "typo.yaml").write_text(shot)
    result = snakemake("--profile", str(ROOT / "profiles/local"), "--configfile", "typo.yaml", "-n", cwd=tmp_path,
                       check=False)
    text = result.stdout + result.stderr
    assert result.returncode != 0 and re.search(fault, text), text[-3000:]
    assert len(text.splitlines()) < 20, text[-3000:]


def test_lint_is_clean(tmp_path):
    result = snakemake("--lint", cwd=ROOT)
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr


def test_a_real_run_writes_every_frame_and_the_report(tiny_shot):
    root, shot_file = tiny_shot
    snakemake("--profile", str(ROOT / "profiles/local"), "--cores", "2", "--configfile", str(shot_file), cwd=root)
    results = root / "results/t1"
    for frame in range(1001, 1008):
        out = imageio.read_info(results / f"output/t1.{frame}.exr")
        plate = imageio.read_info(root / f"data/plate/plate.{frame}.exr")
        assert (out.width, out.height, out.pixel_type, out.channel_names) == (plate.width, plate.height, "half", plate.channel_names)
    pool = zarr.open_group(str(results / "pool/pool.zarr"), mode="r")
    assert pool["source"].shape[0] == pool.attrs["statistics"]["tiles"] if "statistics" in pool.attrs else pool["source"].shape[0] > 0
    assert (results / "model/model.json").exists() and (results / "model/model.safetensors").exists()
    summary = json.loads((results / "assemble/summary.json").read_text())
    assert summary["frames"] == 7
    # Nothing left to do: a second run is a no-op.
    again = snakemake("--profile", str(ROOT / "profiles/local"), "--configfile", str(shot_file), "-n", cwd=root)
    assert "Nothing to be done" in again.stdout + again.stderr
    snakemake("--configfile", str(shot_file), "--report", str(root / "report.html"), cwd=root)
    report = (root / "report.html").read_text()
    assert len(report) > 10_000
    # The final model's training sheet is a result under Training/t1, with its caption.
    assert '"results/t1/train/contact_final.png"' in report
    assert "Validation contact sheet of the final model of shot t1" in report
    # The report opens on the shot's figures, as the run wrote them.
    trained = json.loads((results / "train/result.json").read_text())
    worst = min(summary["keyframe_error"].items(), key=lambda item: item[1]["worst_block_psnr"])
    assert "duplidog: shot summary" in report and "System Message" not in report  # no reStructuredText error
    for figure in (f"{trained['validation_psnr']:.2f} dB (doing nothing {trained['validation_psnr_identity']:.2f} dB",
                   f"{trained['steps']} of {trained['target_steps']}",
                   f"{worst[1]['worst_block_psnr']:.1f} dB (frame {worst[0]}", "7 of 7"):
        assert figure in report, figure
    assert ("No warnings." in report) == (not summary["warnings"])
