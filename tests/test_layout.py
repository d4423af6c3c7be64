"""The results layout: one object names every file of a shot, and the workflow's jobs write exactly those."""

from __future__ import annotations

import re

from duplidog.core.layout import ShotLayout, checkpoint_path, list_checkpoints, shot_output_pattern
from shotdata import jobs_in, snakemake


def test_the_layout_names_the_contracts_paths():
    layout = ShotLayout("results", "sh010")
    assert {name: str(getattr(layout, name)) for name in (
        "manifest", "plan", "pool", "model_weights", "model_card", "checksums", "summary", "contact_sheet")} == {
        "manifest": "results/sh010/ingest/manifest.csv", "plan": "results/sh010/ingest/plan.json",
        "pool": "results/sh010/pool/pool.zarr", "model_weights": "results/sh010/model/model.safetensors",
        "model_card": "results/sh010/model/model.json",
        "checksums": "results/sh010/assemble/checksums.tsv", "summary": "results/sh010/assemble/summary.json",
        "contact_sheet": "results/sh010/assemble/contact_sheet.png"}
    train = layout.train
    assert {name: str(getattr(train, name)) for name in (
        "checkpoints", "result", "metrics", "loss_plot", "final_contact_sheet")} == {
        "checkpoints": "results/sh010/train/checkpoints", "result": "results/sh010/train/result.json",
        "metrics": "results/sh010/train/metrics.csv", "loss_plot": "results/sh010/train/loss.png",
        "final_contact_sheet": "results/sh010/train/contact_final.png"}
    assert str(train.contact_sheet(40)) == "results/sh010/train/contact_00000040.png"
    assert str(layout.chunk_summary("1001-1008")) == "results/sh010/infer/1001-1008.json"
    assert ShotLayout.of(layout.summary) == ShotLayout.of(layout.pool) == layout
    config = {"shot": "sh010", "source": "plates/p.%04d.dpx", "target": "f.%04d.dpx"}
    assert shot_output_pattern(config) == "results/sh010/output/sh010.%04d.dpx"
    assert shot_output_pattern({**config, "output": "out/o.%04d.exr"}) == "out/o.%04d.exr"


def test_checkpoints_are_found_by_their_names_oldest_first(tmp_path):
    for step in (20, 3, 100000000):
        checkpoint_path(tmp_path, step).write_bytes(b"")
    (tmp_path / "step_12.pt").write_bytes(b"")  # too few digits: not a checkpoint
    (tmp_path / "superseded").mkdir()
    assert [(step, path.name) for step, path in list_checkpoints(tmp_path)] == [
        (3, "step_00000003.pt"), (20, "step_00000020.pt"), (100000000, "step_100000000.pt")]
    assert list_checkpoints(tmp_path / "nothing") == []


def test_the_demo_runs_jobs_write_the_layouts_paths(tmp_path):
    result = snakemake("-n", "-c1", cwd=tmp_path)
    assert {"ingest", "pool", "train", "assemble"} <= jobs_in(result)
    outputs = {rule: set(paths.split(", ")) for rule, paths in
               re.findall(r"^(?:local)?rule (\w+):\n(?:    (?!output).*\n)*    output: (.*)$", result.stdout, re.MULTILINE)}
    layout = ShotLayout("results", "demo")
    assert outputs["ingest"] == {str(layout.manifest), str(layout.plan)}
    assert outputs["pool"] == {str(layout.pool)}
    assert outputs["train"] == {str(p) for p in (layout.model_weights, layout.model_card, layout.train.loss_plot,
                                                 layout.train.final_contact_sheet)}
    assert outputs["assemble"] == {str(p) for p in (layout.checksums, layout.summary, layout.contact_sheet)}
    chunk = next(rule for rule in outputs if rule.startswith("infer_chunk__demo__1001"))
    assert outputs[chunk] == {layout.default_output("exr") % frame for frame in range(1001, 1009)}
