"""The working space: an exact, monotonic round trip that never clamps, on numpy and torch alike."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from duplidog.colour import (
    WorkingSpace,
    decode,
    describe,
    encode,
    from_description,
    resolve_colorspace,
)
from duplidog.colour_module import WorkingSpaceModule
from duplidog.errors import DuplidogError
from duplidog.imageio import read_info
from shotdata import DEVICES, write_frame


def scene_values():
    """-10..10000 densely, with the values that matter spelled out (0, mid grey, 1, highlights)."""
    sweep = np.concatenate([-np.geomspace(1e-6, 10, 2000), np.geomspace(1e-6, 1e4, 6000),
                            np.linspace(-10, 10, 2001), [0.0, 0.18, 1.0, 1000.0, 10000.0]])
    return np.sort(sweep).astype(np.float32)


def test_numpy_round_trip_is_tight():
    x = scene_values()
    y = encode(x, "linear")
    assert y.dtype == np.float32
    back = decode(y, "linear")
    assert back.dtype == np.float32
    relative = np.abs(back - x) / np.maximum(np.abs(x), 1e-3)
    assert relative.max() < 1e-6, relative.max()


@pytest.mark.parametrize("device", DEVICES)
def test_torch_round_trip_matches_numpy(device):
    x = scene_values()
    y = encode(torch.from_numpy(x).to(device), "linear")
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32 and y.device.type == device
    assert np.allclose(y.cpu().numpy(), encode(x, "linear"), rtol=1e-6, atol=1e-6)
    back = decode(y, "linear").cpu().numpy()
    relative = np.abs(back - x) / np.maximum(np.abs(x), 1e-3)
    assert relative.max() < 1e-5, relative.max()


def test_monotonic_odd_and_anchored():
    x = scene_values()
    y = encode(x, "linear")
    assert np.all(np.diff(y) >= 0) and np.all(np.diff(y)[np.diff(x) > 1e-4] > 0)
    assert np.array_equal(encode(-x, "linear"), -y)
    assert encode(np.float32(0), "linear") == 0
    assert encode(np.float32(1), "linear") == pytest.approx(1.0, abs=1e-6)
    assert 0.4 < encode(np.float32(0.18), "linear") < 0.7, "mid grey lands mid range"
    assert 2 < encode(np.float32(1000), "linear") < 4, "highlights are compressed to modest values"


def test_values_above_one_and_below_zero_survive():
    x = np.array([-3.0, 1.5, 40.0, 2500.0, 60000.0], np.float32)
    back = decode(encode(x, "linear"), "linear")
    assert np.allclose(back, x, rtol=1e-6)
    half = torch.tensor(x, dtype=torch.float16)
    encoded = encode(half, "linear")
    assert encoded.dtype == torch.float16 and torch.isfinite(encoded).all(), "x / s must not overflow half"
    # Half keeps 11 significant bits of y (up to 4): 2**-10 * 3.69 = 0.36 % of x, plus the final cast.
    assert torch.allclose(decode(encoded, "linear").float(), half.float(), rtol=5e-3)


@pytest.mark.parametrize("space", ["log", "display"])
def test_log_and_display_are_identity(space):
    x = np.array([0.0, 0.5, 1.0, 1.2], np.float32)
    assert np.array_equal(encode(x, space), x) and np.array_equal(decode(x, space), x)
    t = torch.tensor(x)
    assert encode(t, space) is t


def test_description_rebuilds_the_same_transform():
    custom = WorkingSpace("linear", softness=0.1)
    card = describe(custom)
    assert card["name"] == "linear" and card["shaper"] == "asinh" and card["softness"] == 0.1
    x = scene_values()
    assert np.array_equal(encode(x, card), encode(x, custom))
    assert not np.array_equal(encode(x, card), encode(x, "linear")), "stored parameters win over defaults"
    assert from_description(describe("display")) == WorkingSpace("display")
    with pytest.raises(DuplidogError, match="unknown shaper"):
        from_description({"name": "linear", "shaper": "pq"})
    # an OpenColorIO name (here of the built-in config, case-insensitive) is a space of its kind
    assert from_description(describe("acescct")).name == "log" and np.array_equal(encode(x, "acescct"), x)
    with pytest.raises(DuplidogError, match="'acescct-ish' is not a colour space of the OpenColorIO config"):
        encode(x, "acescct-ish")


@pytest.mark.parametrize("device", DEVICES)
def test_scripted_module_matches(device):
    x = torch.from_numpy(scene_values()).to(device)
    to_working = torch.jit.script(WorkingSpaceModule(describe("linear"), "encode"))
    to_scene = torch.jit.script(WorkingSpaceModule("linear", "decode"))
    assert torch.equal(to_working(x), encode(x, "linear"))
    assert torch.allclose(to_scene(to_working(x)), x, rtol=1e-5, atol=1e-6)
    identity = torch.jit.script(WorkingSpaceModule("display", "encode"))
    assert torch.equal(identity(x), x)


def _file(path, pixel_type, **attributes):
    write_frame(path, np.zeros((2, 2, 3), np.float32), pixel_type, attributes=attributes)
    return read_info(path)


def test_resolve_colorspace_from_the_file(tmp_path):
    assert resolve_colorspace("auto", _file(tmp_path / "a.exr", "half")) == "linear"
    assert resolve_colorspace("auto", _file(tmp_path / "a.tif", "float")) == "linear"
    assert resolve_colorspace("auto", _file(tmp_path / "b.tif", "uint16")) == "display"
    # OpenImageIO tags a PNG sRGB: auto takes the tag, an OpenColorIO space of the display kind
    png = resolve_colorspace("auto", _file(tmp_path / "a.png", "uint8"))
    assert png["name"] == "display" and png["ocio"]["colorspace"] == "sRGB Encoded Rec.709 (sRGB)"
    assert resolve_colorspace("auto", _file(tmp_path / "a.dpx", "uint16", **{"oiio:BitsPerSample": 10})) == "display"
    scan = _file(tmp_path / "scan.dpx", "uint16", **{"oiio:BitsPerSample": 10, "dpx:Transfer": "Printing density"})
    assert resolve_colorspace("auto", scan) == "log"
    assert resolve_colorspace("display", _file(tmp_path / "c.exr", "float")) == "display"
    with pytest.raises(DuplidogError, match="colorspace setting 'srgb'"):
        resolve_colorspace("srgb", scan)


def test_a_matte_passes_the_shaper_unchanged_and_cards_from_before_keep_shaping_it():
    pixels = np.array([[[0.5, 4.0, 0.25, 0.5]]], dtype=np.float32)  # R, G, B, A
    names = ["R", "G", "B", "A"]
    working = encode(pixels, "linear", names)
    assert working[0, 0, 3] == 0.5 and working[0, 0, 1] < 2.0  # alpha as it is, colour shaped
    assert np.allclose(decode(working, "linear", names), pixels, atol=1e-6)
    assert encode(pixels[..., 3:], "linear", ["matte.A"])[0, 0, 0] == 0.5  # a layer's alpha too
    tensor = torch.from_numpy(pixels.transpose(2, 0, 1))[None]
    assert torch.allclose(encode(tensor, "linear", names)[0, :, 0, 0], torch.from_numpy(working[0, 0]))
    for direction, expected in (("encode", working), ("decode", decode(pixels, "linear", names))):
        module = torch.jit.script(WorkingSpaceModule(describe("linear"), direction, names))
        assert torch.allclose(module(tensor)[0, :, 0, 0], torch.from_numpy(np.asarray(expected)[0, 0]), atol=1e-6)
    old_card = {k: v for k, v in describe("linear").items() if k != "coverage"}
    assert np.allclose(encode(pixels, old_card, names), encode(pixels, "linear"))  # every channel, as it learnt
    assert describe("linear")["coverage"] == "unshaped"


def test_the_stages_without_a_network_do_not_import_torch():
    # Every Snakemake job is a fresh process, and torch takes seconds to import: ingest, the pool and
    # assembly read and write frames with numpy alone.
    import subprocess
    import sys

    code = ("import sys, duplidog.ingest, duplidog.pool, duplidog.assemble, duplidog.colour; "
            "print('torch' in sys.modules)")
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert found == "False"
