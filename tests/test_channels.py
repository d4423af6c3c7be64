"""Channel choice: network inputs, outputs, and what is carried through untouched."""

from __future__ import annotations

import numpy as np
import pytest

from duplidog.channels import choose_channels, default_input_channels
from duplidog.errors import DuplidogError
from duplidog.imageio import ImageInfo, read_info
from shotdata import write_frame


def frame(tmp_path, name, channels):
    """A tiny real EXR with these channels, and its header."""
    path = tmp_path / name
    write_frame(path, np.zeros((2, 2, len(channels)), np.float32), "half", channels=channels)
    return read_info(path)


def test_rgba_plate_rgb_fix_passes_alpha_through(tmp_path):
    source = frame(tmp_path, "plate.exr", ["R", "G", "B", "A"])
    target = frame(tmp_path, "fixed.exr", ["R", "G", "B"])
    assert choose_channels(source, target, None, None) == (["R", "G", "B"], ["R", "G", "B"], ["A"])


def test_matte_from_rgb_plate(tmp_path):
    source = frame(tmp_path, "plate.exr", ["R", "G", "B", "Z"])
    target = frame(tmp_path, "matte.exr", ["A"])
    assert choose_channels(source, target, None, None) == (["R", "G", "B"], ["A"], ["Z"])


def test_extra_aovs_pass_through_and_settings_win(tmp_path):
    source = frame(tmp_path, "plate.exr", ["R", "G", "B", "A", "N.x", "depth.Z"])
    target = frame(tmp_path, "fixed.exr", ["R", "G", "B", "A"])
    inputs, outputs, passthrough = choose_channels(source, target, None, None)
    assert (inputs, outputs) == (["R", "G", "B"], ["R", "G", "B", "A"])
    assert passthrough == ["N.x", "depth.Z"], "OpenEXR orders channels by name; order follows the file"
    assert choose_channels(source, target, ["R", "G", "B", "A"], ["N.x"]) == (
        ["R", "G", "B", "A"], ["R", "G", "B", "A"], ["N.x"])


def test_default_inputs_without_rgb():
    assert default_input_channels(["Y", "A"]) == ["Y"]
    assert default_input_channels(["diffuse.R", "diffuse.A", "Z"]) == ["diffuse.R"]
    assert default_input_channels(["A"]) == ["A"]


def test_named_channel_must_exist(tmp_path):
    source = frame(tmp_path, "plate.exr", ["R", "G", "B"])
    target = frame(tmp_path, "fixed.exr", ["R", "G", "B"])
    with pytest.raises(DuplidogError, match=r"plate\.exr: input channel Q not found \(the file has"):
        choose_channels(source, target, ["R", "Q"], None)
    with pytest.raises(DuplidogError, match=r"plate\.exr: passthrough channel A not found"):
        choose_channels(source, target, None, ["A"])
    with pytest.raises(DuplidogError, match="also an output channel"):
        choose_channels(source, target, None, ["R"])
    with pytest.raises(DuplidogError, match="named more than once"):
        choose_channels(source, target, ["R", "R"], None)


def test_works_on_plain_imageinfo():
    """ImageInfo made by hand (no file) is enough: only names and path are used."""
    fields = dict(width=1, height=1, x=0, y=0, full_width=1, full_height=1, full_x=0, full_y=0,
                  pixel_type="half", bits_per_sample=16, format_name="openexr", compression=None)
    source = ImageInfo(path="p.exr", nchannels=2, channel_names=("Y", "A"), **fields)
    target = ImageInfo(path="t.exr", nchannels=1, channel_names=("Y",), **fields)
    assert choose_channels(source, target, None, None) == (["Y"], ["Y"], ["A"])
