"""Assemble: every expected frame checked (all faults in one error), checksums, contact sheet, summary."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import OpenImageIO as oiio
import pytest

from duplidog import imageio, settings
from duplidog.assemble import assemble, contact_frames
from duplidog.core.layout import ShotLayout
from duplidog.errors import DuplidogError
from duplidog.ingest import ingest
from shotdata import make_model, make_shot, write_frame

FRAMES = list(range(1001, 1007))


@pytest.fixture
def shot(tmp_path):
    """An ingested 6-frame shot (keyframes 1001, 1004, 1006) whose outputs are written like inference would."""
    shot_file = make_shot(tmp_path, frames=FRAMES, keyframes=(1001, 1004, 1006),
                          extra={"output": str(tmp_path / "results/t1/output/t1.%04d.exr")})
    plan = ingest(settings.load_shot_file(shot_file), tmp_path / "results/t1/ingest")
    for frame in FRAMES:
        source = imageio.read_info(tmp_path / f"plate/plate.{frame:04d}.exr")
        pixels = imageio.read_pixels(source.path) * 0.8 + 0.05 + (0.02 if frame == 1004 else 0.0)
        imageio.write_pixels(plan.output % frame if "%" in plan.output else None, pixels, like=source)
    make_model(tmp_path / "results/t1/model", ("R", "G", "B"), ("R", "G", "B"))  # its card gives the scale
    return tmp_path, plan


def run(root: Path, **kwargs):
    return assemble(ShotLayout(root / "results", "t1"), None, **kwargs)


def test_checksums_contact_sheet_and_summary(shot):
    root, plan = shot
    chunks = [{"frames": 3, "seconds": 1.5, "load_seconds": 0.5}, {"frames": 3, "seconds": 1.5, "load_seconds": 0.5}]
    summary = run(root, infer_summaries=chunks)
    out = root / "results/t1/assemble"

    lines = (out / "checksums.tsv").read_text().splitlines()
    assert lines[0] == "frame\tpath\tsha256" and len(lines) == 1 + len(FRAMES)
    for line in lines[1:]:
        frame, path, digest = line.split("\t")
        assert digest == hashlib.sha256(Path(path).read_bytes()).hexdigest()
        assert path == plan.output % int(frame)

    sheet = imageio.read_info(out / "contact_sheet.png")
    assert sheet.pixel_type == "uint8" and sheet.width > 4 * 100 and sheet.height > 3 * 50

    assert json.loads((out / "summary.json").read_text()) == summary
    assert summary["frames"] == 6 and summary["seconds"] == 3.0 and summary["frames_per_second"] == 2.0
    # The keyframe errors are measured against the artist's targets: 1004 was made off by 0.02.
    errors = summary["keyframe_error"]
    assert set(errors) == {"1001", "1004", "1006"}
    assert errors["1001"]["mean_abs"] < 1e-2 < errors["1004"]["mean_abs"]


def test_infer_summaries_are_found_beside_the_assemble_folder(shot):
    root, _ = shot
    (root / "results/t1/infer").mkdir(parents=True)
    (root / "results/t1/infer/chunk_001.json").write_text(json.dumps({"frames": 6, "seconds": 2.0}))
    summary = run(root)
    assert summary["chunks"] == 1 and summary["frames_per_second"] == 3.0


def test_a_shot_without_its_model_card_is_refused(shot):
    import shutil

    root, _ = shot
    shutil.rmtree(root / "results/t1/model")
    with pytest.raises(DuplidogError, match="model folder not found"):
        run(root)


def test_every_bad_frame_is_named_in_one_error(shot):
    root, plan = shot
    output = plan.output
    Path(output % 1002).unlink()                                              # missing
    data = Path(output % 1003).read_bytes()
    Path(output % 1003).write_bytes(data[: len(data) // 2])                   # cut short
    write_frame(Path(output % 1005), np.zeros((20, 48, 3), np.float32))      # wrong size
    write_frame(Path(output % 1006), np.zeros((40, 48, 3), np.float32), pixel_type="float")  # wrong type
    with pytest.raises(DuplidogError) as caught:
        run(root)
    message = str(caught.value)
    assert "\n" not in message and "4 of 6 output frames are bad" in message
    assert "1002 missing" in message and "1003" in message
    assert "1005 size 48x20, expected 48x40" in message and "1006 pixel type float, expected half" in message
    assert not (root / "results/t1/assemble/checksums.tsv").exists()


def test_nan_in_an_output_frame_is_a_fault(shot):
    root, plan = shot
    source = imageio.read_info(root / "plate/plate.1002.exr")
    pixels = imageio.read_pixels(source.path)
    pixels[3, 4, 1] = np.nan
    imageio.write_pixels(plan.output % 1002, pixels, like=source)
    with pytest.raises(DuplidogError, match="1002 1 NaN/inf values"):
        run(root)


def test_contact_frames_are_the_held_out_keyframe_the_frames_farthest_from_keyframes_and_named_ones():
    rows = contact_frames(list(range(1, 101)), [10, 50, 90], 4, held_out=[50], named=[42])
    assert rows == [(26, "unseen, 16 frames from a keyframe"), (42, "named"), (50, "held-out keyframe"),
                    (60, "unseen, 10 frames from a keyframe"), (70, "unseen, 20 frames from a keyframe")]
    assert contact_frames([1, 2], [1, 2], 4) == [(1, "keyframe"), (2, "keyframe")]
    assert [f for f, _ in contact_frames(list(range(1, 13)), [1, 4, 8, 12], 2)] == [6, 10]


def test_a_local_failure_is_warned_of_and_zoomed_on_although_the_whole_frame_is_good(shot):
    root, plan = shot
    source = imageio.read_info(root / "plate/plate.1004.exr")
    pixels = imageio.read_pixels(source.path) * 0.8 + 0.05
    pixels[8:12, 34:38] += 1.0  # a blemish left in
    imageio.write_pixels(plan.output % 1004, pixels, like=source)
    summary = run(root, settings={"contact_frames": 3, "contact_width": 200, "frames": [1002]})
    error = summary["keyframe_error"]["1004"]
    assert error["held_out"] is (1004 in plan.validation_frames)
    assert error["psnr"] > error["worst_block_psnr"] + 5 and error["worst_block_psnr"] < 25
    assert error["worst_block_at"] == [0, 32]
    assert len(summary["warnings"]) == 1 and summary["warnings"][0].startswith("frame 1004")
    written = json.loads((root / "results/t1/assemble/summary.json").read_text())
    assert written["keyframe_error"]["1001"]["worst_block_psnr"] > 60  # a good keyframe: half-float rounding only
    assert written["warnings"] == summary["warnings"]


def test_the_summary_has_a_flicker_figure_against_the_plates_own_change(shot):
    root, plan = shot

    def write_outputs(jump: float) -> None:  # a slight grade; frame 1004 ``jump`` brighter than the rest
        for frame in FRAMES:
            source = imageio.read_info(root / f"plate/plate.{frame:04d}.exr")
            pixels = imageio.read_pixels(source.path) * 0.98 + (jump if frame == 1004 else 0.0)
            imageio.write_pixels(plan.output % frame, pixels, like=source)

    write_outputs(0.0)
    steady = run(root)["temporal"]
    write_outputs(0.02)
    flickering = run(root)["temporal"]
    assert steady["pairs"] == flickering["pairs"] == len(FRAMES) - 1
    assert flickering["worst_pair"] in ([1003, 1004], [1004, 1005])
    assert steady["psnr"] > flickering["psnr"] + 6 and steady["worst_pair_psnr"] > flickering["worst_pair_psnr"] + 6


def test_inference_then_assembly_end_to_end(tmp_path):
    """The real chain on a tiny shot: a saved (untrained) model, infer_frames in two chunks, assemble."""
    import torch

    from duplidog import colour
    from duplidog.infer import infer_frames
    from duplidog.model import build_model
    from duplidog.core.modelstore import save_model

    shot_file = make_shot(tmp_path, frames=FRAMES, keyframes=(1001, 1006), channels=("R", "G", "B", "A"),
                          extra={"output": str(tmp_path / "results/t1/output/t1.%04d.exr")})
    # the targets must not carry the alpha, so it is passed through
    for frame in (1001, 1006):
        path = tmp_path / f"fixed/fixed.{frame:04d}.exr"
        write_frame(path, imageio.read_pixels(path, ["R", "G", "B"]))
    plan = ingest(settings.load_shot_file(shot_file), tmp_path / "results/t1/ingest")
    assert plan.passthrough_channels == ["A"]
    torch.manual_seed(0)
    net = build_model(preset="small", levels=2, stages=1, width=4, depth=1, block="res")
    save_model(tmp_path / "results/t1/model", net, {"input_channels": ["R", "G", "B"],
                                                     "output_channels": ["R", "G", "B"],
                                                     "colorspace": colour.describe(plan.colorspace)})
    for k, chunk in enumerate((FRAMES[:3], FRAMES[3:])):
        infer_frames(tmp_path / "results/t1/model", tmp_path / "results/t1/ingest/plan.json", chunk, None,
                     {"device": "cpu"}, summary_path=tmp_path / f"results/t1/infer/chunk_{k}.json")
    summary = run(tmp_path)
    assert summary["frames"] == 6 and summary["chunks"] == 2 and summary["frames_per_second"] > 0
    assert summary["channels"] == ["R", "G", "B", "A"]
    assert oiio.ImageInput.open(str(tmp_path / "results/t1/assemble/contact_sheet.png")) is not None


def test_a_zoom_on_a_block_at_the_frames_edge_shows_a_whole_window_inside_the_frame():
    from duplidog.assemble import _zoom

    frame = np.arange(270 * 480 * 3, dtype=np.float32).reshape(270, 480, 3)
    zoom = _zoom(frame, top=256, left=448, size=32, width=128)  # the last, 14-row block of the frame
    assert zoom.shape == (128, 128, 3)
    np.testing.assert_array_equal(zoom[::4, ::4], frame[238:270, 448:480])
