"""``duplidog bench shot``: a tiny shot through the real Snakemake workflow, every stage timed."""

import json
import re

import pytest

from duplidog import imageio
from duplidog.cli import main
from duplidog.errors import DuplidogError
from duplidog.bench.shot import SHOT, spread_keyframes

pytestmark = pytest.mark.pipeline

# Settings that make the shot train and infer in seconds on two CPU cores (as tests/test_pipeline.py). The
# steps end training; the budget (--minutes) is set far above them so a loaded machine cannot end it first.
TINY = ["pool.tiles_per_keyframe=24", "pool.tile_size=32", "pool.border=4", "train.steps=3", "train.batch_size=4",
        "train.validate_every=3", "train.checkpoint_every=3", "train.colour_fit_steps=0", "model.overrides.width=8",
        "infer.chunk_size=3"]


def test_keyframes_are_spread_over_the_shot_first_and_last_included():
    assert spread_keyframes(100, 4) == [1001, 1034, 1067, 1100]
    assert spread_keyframes(5, 1) == [1001]
    with pytest.raises(DuplidogError, match="--keyframes 6: give 1 to 5"):
        spread_keyframes(5, 6)


def test_the_bench_runs_every_stage_and_prints_its_seconds(tmp_path, capsys):
    sets = [a for s in TINY for a in ("--set", s)]
    code = main(["bench", "shot", "--width", "96", "--height", "64", "--frames", "5", "--keyframes", "3",
                 "--minutes", "60", "--device", "cpu", "--out", str(tmp_path), *sets])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "5 frames 96x64, keyframes [1001, 1003, 1005]" in printed and "device cpu" in printed
    shares = 0.0
    for stage in ("ingest", "pool", "train", r"infer \(2 jobs\)", "assemble", r"snakemake \(start, DAG, between jobs\)"):
        match = re.search(rf"^{stage} +(\d+\.\d) +(\d+\.\d)%$", printed, re.M)
        assert match, (stage, printed)
        shares += float(match[2])
    assert abs(shares - 100) < 0.5, printed
    assert re.search(r"^train: 3 steps, [\d.]+ steps/s in the loop .*device cpu", printed, re.M), printed
    assert re.search(r"^infer: 5 frames, [\d.]+ frames/s over its jobs, .*device cpu$", printed, re.M), printed
    assert re.search(r"^validation PSNR [\d.]+ dB against [\d.]+ dB doing nothing", printed, re.M), printed
    # The shot: EXR half plates on every frame, the fix on the keyframes only; and the pipeline's outputs.
    shot = tmp_path / "shot"
    assert imageio.read_info(shot / "plate/plate.1002.exr").pixel_type == "half"
    assert sorted(p.name for p in (shot / "fixed").iterdir()) == [f"fixed.{f}.exr" for f in (1001, 1003, 1005)]
    results = tmp_path / "run/results" / SHOT
    for frame in range(1001, 1006):
        assert imageio.read_info(results / f"output/{SHOT}.{frame}.exr").width == 96
    assert (results / "assemble/summary.json").is_file()
    figures = json.loads((tmp_path / "bench_shot.json").read_text())
    assert figures["train"]["steps"] == 3 and figures["infer"]["frames"] == 5
    assert set(figures["stages"]) == {"ingest", "pool", "train", "infer", "assemble"}


def test_a_cuda_device_that_is_not_here_fails_before_any_frame_is_written(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is here")
    code = main(["bench", "shot", "--width", "96", "--height", "64", "--frames", "3", "--device", "cuda",
                 "--out", str(tmp_path)])
    assert code == 2
    assert capsys.readouterr().err == "duplidog: error: --device cuda: no CUDA GPU is available here\n"
    assert not (tmp_path / "shot").exists()
