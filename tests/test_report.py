"""The report's opening page: each shot's figures, read from its results when the report is made."""

import json
from pathlib import Path

from duplidog.status import ReportFigures
from shotdata import model_card

ROOT = Path(__file__).resolve().parents[1]


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def delivered_shot(results: Path) -> None:
    shot = results / "sh_010"
    _write(shot / "ingest/plan.json", {"shot": "sh_010", "frames": [1001, 1002], "source": "plate.%04d.exr",
                                      "output": str(shot / "output/sh_010.%04d.exr")})
    card = model_card(training={"steps": 40}, metrics={"validation": {"psnr": 31.234, "psnr_identity": 24.1}})
    (shot / "model").mkdir()
    (shot / "model/model.json").write_text(card.to_json())
    _write(shot / "train/result.json", {"steps": 40, "target_steps": 400, "stopped_by": "max_minutes", "minutes": 2.04})
    (shot / "output").mkdir()
    for frame in (1001, 1002):
        (shot / f"output/sh_010.{frame}.exr").write_text("a frame")
    _write(shot / "assemble/summary.json", {
        "frames": 2, "warnings": ["frame 1002 (held out): its worst 32x32 block is 12.0 dB *here*"],
        "keyframe_error": {"1001": {"worst_block_psnr": 41.0, "held_out": False},
                           "1002": {"worst_block_psnr": 12.04, "held_out": True}}})


def test_figures_of_a_delivered_shot_and_of_one_not_run_yet(tmp_path):
    delivered_shot(tmp_path)
    done, new = ReportFigures(["sh_010", "sh020"], tmp_path)
    assert done["psnr"] == "31.23 dB (doing nothing 24.10 dB, +7.13 dB)"
    assert done["steps"] == "40 of 400 (stopped by max_minutes)" and done["minutes"] == "2.0"
    assert done["worst_block"] == "12.0 dB (frame 1002, held out)" and done["frames"] == "2 of 2"
    assert done["note"] == "delivered" and len(done["warnings"]) == 1
    assert new["note"] == "not run yet (nothing under results/sh020)"
    assert {new[k] for k in ("psnr", "steps", "minutes", "worst_block", "frames")} == {"-"}


def render_opening_page(shots: ReportFigures) -> str:
    """report/workflow.rst as Snakemake renders it (Jinja with trim_blocks and lstrip_blocks, then docutils)."""
    from docutils.core import publish_parts
    from jinja2 import Environment

    class Snakemake:
        config = {"_report_shots": shots}

    text = (ROOT / "report/workflow.rst").read_text()
    text = Environment(trim_blocks=True, lstrip_blocks=True).from_string(text).render(
        snakemake=Snakemake, categories={}, files=[])
    return publish_parts(text, writer="html", settings_overrides={"report_level": 1})["html_body"]


def test_the_opening_page_renders_every_shot_without_a_restructuredtext_error(tmp_path):
    delivered_shot(tmp_path)
    page = render_opening_page(ReportFigures(["sh_010", "sh020"], tmp_path))
    assert "system-message" not in page, page
    assert "<td>sh_010</td>" in page and "<td>31.23 dB (doing nothing 24.10 dB, +7.13 dB)</td>" in page
    assert "<td>not run yet (nothing under results/sh020)</td>" in page
    assert "<td>-</td>" in page and "<ul" in page  # a missing figure is a dash; the warning is listed
    assert "sh_010: frame 1002 (held out): its worst 32x32 block is 12.0 dB *here*" in page


def test_a_dry_run_with_no_results_renders_the_not_run_line(tmp_path):
    page = render_opening_page(ReportFigures(["sh010"], tmp_path))
    assert "system-message" not in page and "not run yet" in page and "No warnings." in page
