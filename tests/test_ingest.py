"""Ingest: frames found, headers checked, manifest and plan written; each bad input one clear line."""

import json

import numpy as np
import pandas as pd
import pytest

from duplidog import settings
from duplidog.core.plan import read_plan
from duplidog.errors import DuplidogError
from duplidog.ingest import choose_validation_frames, ingest
from shotdata import make_shot, write_frame


def _config(shot_file, **overrides):
    config = settings.load_shot_file(shot_file)
    for key, value in overrides.items():
        config[key] = value
    return settings.resolve(config)


def test_manifest_and_plan(tmp_path):
    shot = make_shot(tmp_path, frames=range(1001, 1011), keyframes=(1001, 1005, 1010))
    plan = ingest(_config(shot), tmp_path / "out")
    manifest = pd.read_csv(tmp_path / "out/manifest.csv", keep_default_na=False)
    assert list(manifest["frame"]) == list(range(1001, 1011))
    assert set(manifest.columns) >= {"frame", "source", "target", "role", "width", "height", "nchannels",
                                     "channel_names", "pixel_type"}
    roles = dict(zip(manifest["frame"], manifest["role"]))
    assert roles[1005] == "validation" and roles[1001] == roles[1010] == "train" and roles[1002] == "infer"
    row = manifest.set_index("frame").loc[1001]
    assert (row["width"], row["height"], row["nchannels"], row["pixel_type"]) == (48, 40, 3, "half")
    written = json.loads((tmp_path / "out/plan.json").read_text())
    assert written == plan.to_dict() and read_plan(tmp_path / "out/plan.json") == plan
    assert list(written) == ["shot", "source", "target", "output", "frames", "keyframes", "train_frames",
                             "validation_frames", "colorspace", "plate_colorspace", "target_colorspace",
                             "convert_colorspace", "input_channels", "output_channels", "passthrough_channels",
                             "width", "height", "scale", "temporal_frames", "pixel_type", "format_name",
                             "channel_names", "nonfinite", "seed"]
    assert plan.colorspace == "linear" and plan.input_channels == ["R", "G", "B"]
    assert plan.output.endswith("results/t1/output/t1.%04d.exr") or plan.output == "results/t1/output/t1.%04d.exr"


def test_validation_keyframes_are_held_out_from_the_middle():
    assert choose_validation_frames([1, 5, 9], 1, 3) == [5]
    assert choose_validation_frames([1, 9], 1, 3) == []
    assert choose_validation_frames([1, 4, 7, 10, 13], 2, 3) == [4, 7] or choose_validation_frames([1, 4, 7, 10, 13], 2, 3) == [7, 10]
    assert choose_validation_frames([1, 4, 7], 0, 3) == []


def test_missing_source_frames_are_listed(tmp_path):
    shot = make_shot(tmp_path)
    (tmp_path / "plate/plate.1003.exr").unlink()
    (tmp_path / "plate/plate.1006.exr").unlink()
    with pytest.raises(DuplidogError, match=r"2 source frame\(s\) missing: 1003, 1006"):
        ingest(_config(shot), tmp_path / "out")


def test_frame_range_outside_what_exists(tmp_path):
    shot = make_shot(tmp_path)
    with pytest.raises(DuplidogError, match="frames 1009-1020 are outside the frames that exist"):
        ingest(_config(shot, frames="1001-1020"), tmp_path / "out")


def test_no_keyframes(tmp_path):
    shot = make_shot(tmp_path, keyframes=())
    with pytest.raises(DuplidogError, match="no keyframes found"):
        ingest(_config(shot), tmp_path / "out")


def test_keyframe_without_source_frame(tmp_path):
    shot = make_shot(tmp_path)
    write_frame(tmp_path / "fixed/fixed.1100.exr", np.zeros((40, 48, 3)))
    with pytest.raises(DuplidogError, match="keyframe\\(s\\) 1100 have no matching source frame"):
        ingest(_config(shot), tmp_path / "out")


def test_keyframe_size_differs(tmp_path):
    shot = make_shot(tmp_path)
    write_frame(tmp_path / "fixed/fixed.1004.exr", np.zeros((20, 48, 3)))
    with pytest.raises(DuplidogError, match=r"fixed.1004.exr: keyframe size 48x20 differs from the plate's 48x40"):
        ingest(_config(shot), tmp_path / "out")


def test_keyframe_channel_counts_disagree(tmp_path):
    shot = make_shot(tmp_path)
    write_frame(tmp_path / "fixed/fixed.1004.exr", np.zeros((40, 48, 4)), channels=("R", "G", "B", "A"))
    with pytest.raises(DuplidogError, match=r"fixed.1004.exr: keyframe has 4 channel\(s\)"):
        ingest(_config(shot), tmp_path / "out")


def test_a_plate_frame_of_another_pixel_type_or_file_format_is_refused_naming_it(tmp_path):
    import shutil

    shot = make_shot(tmp_path)
    write_frame(tmp_path / "plate/plate.1003.exr", np.zeros((40, 48, 3)), pixel_type="float")
    with pytest.raises(DuplidogError, match=r"plate.1003.exr: a openexr file of float pixels, but the plate's frames "
                                            r"are openexr files of half \(.*plate.1001.exr\)"):
        ingest(_config(shot), tmp_path / "out")
    write_frame(tmp_path / "plate/plate.1003.exr", np.zeros((40, 48, 3)))
    write_frame(tmp_path / "png.png", np.zeros((40, 48, 3)), pixel_type="uint8")
    shutil.move(tmp_path / "png.png", tmp_path / "plate/plate.1003.exr")  # an 8-bit PNG renamed .exr
    with pytest.raises(DuplidogError, match=r"plate.1003.exr: a png file of uint8 pixels"):
        ingest(_config(shot), tmp_path / "out")


def test_truncated_source_frame_is_named(tmp_path):
    shot = make_shot(tmp_path)
    (tmp_path / "plate/plate.1002.exr").write_bytes(b"v/1\x01\x02\x00\x00")
    with pytest.raises(DuplidogError, match="plate.1002.exr"):
        ingest(_config(shot), tmp_path / "out")


def test_output_that_would_overwrite_the_plates_is_refused(tmp_path):
    shot = make_shot(tmp_path)
    with pytest.raises(DuplidogError, match="output would overwrite the source"):
        ingest(_config(shot, output=str(tmp_path / "plate/plate.####.exr")), tmp_path / "out")


def test_output_folder_that_cannot_be_written(tmp_path):
    shot = make_shot(tmp_path)
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(DuplidogError, match="output folder cannot be created"):
        ingest(_config(shot, output=str(tmp_path / "a_file/out.%04d.exr")), tmp_path / "out")
