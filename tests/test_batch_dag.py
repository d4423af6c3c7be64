"""A TD's batch: 50 shots of 100 frames each, planned by Snakemake in one dry run (issue 14.6).

Every shot reads the same small plates (the DAG's size, not the pixels, is what is measured); each
has its own results and delivery folder. The seconds are printed for the notes, never asserted.
"""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
import yaml

from shotdata import ROOT, snakemake, write_frame

pytestmark = pytest.mark.pipeline

SHOTS, FRAMES, KEYFRAMES = 50, range(1001, 1101), (1001, 1034, 1067, 1100)
CHUNKS_PER_SHOT = -(-len(FRAMES) // 8)  # infer.chunk_size 8


def test_a_fifty_shot_batch_of_a_hundred_frames_each_plans_in_one_dry_run(tmp_path):
    rng = np.random.default_rng(0)
    for frame in FRAMES:
        plate = rng.random((16, 24, 3), dtype=np.float32)
        write_frame(tmp_path / f"plate/plate.{frame}.exr", plate)
        if frame in KEYFRAMES:
            write_frame(tmp_path / f"fixed/fixed.{frame}.exr", plate * 0.8)
    files = []
    for index in range(SHOTS):
        name = f"sh{index + 1:03d}0"
        path = tmp_path / f"shots/{name}.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(yaml.safe_dump({"shot": name, "source": "plate/plate.%04d.exr",
                                        "target": "fixed/fixed.%04d.exr"}), encoding="utf-8")
        files.append(f"shots/{name}.yaml")
    (tmp_path / "batch.yaml").write_text(yaml.safe_dump({"shots": files}), encoding="utf-8")

    started = time.perf_counter()
    result = snakemake("--profile", str(ROOT / "profiles/local"), "--cores", "2", "--configfile", "batch.yaml", "-n",
                       cwd=tmp_path)
    seconds = time.perf_counter() - started
    counts = {rule: int(count) for rule, count in
              re.findall(r"^(\w+)\s+(\d+)$", result.stdout + result.stderr, re.MULTILINE)}
    chunks = sum(count for rule, count in counts.items() if rule.startswith("infer_chunk__"))
    print(f"{SHOTS} shots x {len(FRAMES)} frames: {sum(counts.values()) - counts.get('total', 0)} jobs planned "
          f"(dry run, DAG built) in {seconds:.1f} s")
    assert {rule: counts.get(rule) for rule in ("ingest", "pool", "train", "assemble")} == dict.fromkeys(
        ("ingest", "pool", "train", "assemble"), SHOTS), counts
    assert chunks == SHOTS * CHUNKS_PER_SHOT
