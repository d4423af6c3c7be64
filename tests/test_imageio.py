"""Frames come back as they went in: formats, bit depths, windows, metadata, errors, atomic writes."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import OpenImageIO as oiio
import pytest

from duplidog.errors import DuplidogError
from duplidog.imageio import check_finite, provenance, read_info, read_pixels, write_pixels
from shotdata import native, random_pixels, write_frame

REPO = Path(__file__).resolve().parents[1]


# (file name, pixel type, attributes, value range): every format the brief promises to keep exactly.
ROUND_TRIPS = [
    ("u8.png", "uint8", {}, (0, 1)),
    ("u16.png", "uint16", {}, (0, 1)),
    ("u8.tif", "uint8", {"compression": "lzw"}, (0, 1)),
    ("u16.tif", "uint16", {"compression": "zip"}, (0, 1)),
    ("f32.tif", "float", {"compression": "zip"}, (-2, 500)),
    ("d10.dpx", "uint16", {"oiio:BitsPerSample": 10}, (0, 1)),
    ("d16.dpx", "uint16", {}, (0, 1)),
    ("h.exr", "half", {"compression": "piz"}, (-5, 5000)),
    ("f.exr", "float", {"compression": "zip"}, (-5, 5000)),
    ("f_none.exr", "float", {"compression": "none"}, (-5, 5000)),
]


@pytest.mark.parametrize("name,pixel_type,attributes,value_range", ROUND_TRIPS, ids=[r[0] for r in ROUND_TRIPS])
def test_round_trip_is_bit_exact(tmp_path, name, pixel_type, attributes, value_range):
    rng = np.random.default_rng(1)
    src = write_frame(tmp_path / name, random_pixels(rng, (12, 16, 3), *value_range), pixel_type,
                      attributes=attributes)
    info = read_info(src)
    pixels = read_pixels(src)
    assert pixels.dtype == np.float32 and pixels.shape == (12, 16, 3)
    out = tmp_path / f"out_{name}"
    write_pixels(out, pixels, like=info)

    assert np.array_equal(native(out), native(src)), "stored values changed on the way through"
    back = read_info(out)
    assert (back.pixel_type, back.bits_per_sample, back.compression, back.format_name) == (
        info.pixel_type, info.bits_per_sample, info.compression, info.format_name)
    assert back.channel_names == ("R", "G", "B")
    if pixel_type in ("half", "float"):
        assert pixels.min() < 0 and pixels.max() > 1, "float values must not be clamped"


@pytest.mark.parametrize("name,pixel_type,top", [("q.png", "uint8", 255), ("q.tif", "uint16", 65535),
                                                 ("q.dpx", "uint16", 1023)])
def test_integer_files_round_to_the_nearest_code(tmp_path, name, pixel_type, top):
    attributes = {"oiio:BitsPerSample": 10} if name.endswith(".dpx") else {}
    like = read_info(write_frame(tmp_path / f"like_{name}", np.zeros((1, 6, 1)), pixel_type, channels=None,
                                 attributes=attributes))
    wanted = np.array([[[0.0], [0.3], [0.7], [100.4], [-5.0], [top + 9.0]]], np.float64) / top
    write_pixels(tmp_path / name, wanted, like=like)
    codes = np.round(read_pixels(tmp_path / name) * top).astype(int).ravel().tolist()
    assert codes == [0, 0, 1, 100, 0, top], "round to nearest; integer formats clip to their range"


@pytest.mark.parametrize("ext,bits", [("dpx", 8), ("dpx", 10), ("dpx", 12), ("dpx", 16), ("png", 8), ("png", 16),
                                      ("tif", 8), ("tif", 16)])
def test_every_integer_depth_rounds_to_nearest(tmp_path, ext, bits):
    top = 2**bits - 1
    container = "uint8" if bits == 8 else "uint16"
    like = read_info(write_frame(tmp_path / f"like.{ext}", np.zeros((64, 64, 3)), container,
                                 attributes={"oiio:BitsPerSample": bits} if ext == "dpx" else {}))
    values = np.random.default_rng(7).uniform(-0.01, 1.01, (64, 64, 3))
    write_pixels(tmp_path / f"out.{ext}", values, like=like)
    assert read_info(tmp_path / f"out.{ext}").bits_per_sample == bits
    codes = np.round(read_pixels(tmp_path / f"out.{ext}").astype(np.float64) * top)
    assert np.array_equal(codes, np.rint(np.clip(values.astype(np.float32), 0, 1) * top))


def test_info_describes_the_header(tmp_path):
    src = write_frame(tmp_path / "a.exr", np.zeros((6, 10, 4), np.float32), "half",
                      channels=["R", "G", "B", "A"], attributes={"compression": "dwaa"})
    info = read_info(src)
    assert (info.width, info.height, info.nchannels) == (10, 6, 4)
    assert info.channel_names == ("R", "G", "B", "A")
    assert (info.pixel_type, info.bits_per_sample, info.format_name, info.compression) == (
        "half", 16, "openexr", "dwaa")
    assert info.alpha_channel == 3 and info.is_float and info.shape == (6, 10, 4)
    assert info == read_info(src) and hash(info) == hash(read_info(src))


def test_metadata_and_compression_survive(tmp_path):
    rng = np.random.default_rng(2)
    src = write_frame(tmp_path / "plate.exr", random_pixels(rng, (8, 8, 3), 0, 100), "half",
                      attributes={"compression": "dwab", "Artist": "plate dept", "studio:shot": "sh010",
                                  "studio:take": 7, "FramesPerSecond": 24.0})
    info = read_info(src)
    out = tmp_path / "fixed.exr"
    write_pixels(out, read_pixels(src), like=info, attributes={"duplidog:model_id": "abc123", "duplidog:step": 40})
    back = read_info(out)
    assert back.compression == "dwab"
    assert back.attributes["Artist"] == "plate dept"
    assert back.attributes["studio:shot"] == "sh010" and back.attributes["studio:take"] == 7
    assert back.attributes["duplidog:model_id"] == "abc123"
    assert provenance(back) == {"model_id": "abc123", "step": 40}


@pytest.mark.parametrize("name,pixel_type,bits", [("p.tif", "uint16", None), ("p.dpx", "uint16", 10)])
def test_provenance_kept_where_the_format_has_no_free_metadata(tmp_path, name, pixel_type, bits):
    attributes = {"ImageDescription": "from the scanner"}
    if bits:
        attributes["oiio:BitsPerSample"] = bits
    src = write_frame(tmp_path / name, np.full((4, 4, 3), 0.5, np.float32), pixel_type, attributes=attributes)
    out = tmp_path / f"out_{name}"
    write_pixels(out, read_pixels(src), like=read_info(src), attributes={"duplidog:model_id": "m1"})
    again = tmp_path / f"again_{name}"
    write_pixels(again, read_pixels(out), like=read_info(out), attributes={"duplidog:model_id": "m2"})
    back = read_info(again)
    assert provenance(back) == {"model_id": "m2"}, "an earlier duplidog line is replaced"
    assert back.attributes["ImageDescription"].startswith("from the scanner")


def test_dpx_user_data_of_the_plate_is_never_overwritten(tmp_path):
    src = tmp_path / "scan.dpx"
    theirs = np.frombuffer(b"scanner calibration 7", np.uint8)
    write_frame(src, np.zeros((4, 4, 3), np.float32), "uint16", attributes={
        "oiio:BitsPerSample": 10, "dpx:UserData": (oiio.TypeDesc(f"uint8[{theirs.size}]"), theirs)})
    out = tmp_path / "out.dpx"
    write_pixels(out, read_pixels(src), like=read_info(src), attributes={"duplidog:model_id": "m1"})
    assert bytes(read_info(out).attributes["dpx:UserData"]) == b"scanner calibration 7"


def test_another_output_format_takes_its_own_defaults(tmp_path):
    rng = np.random.default_rng(6)
    exr = write_frame(tmp_path / "plate.exr", random_pixels(rng, (6, 8, 3), -1, 50), "half",
                      attributes={"compression": "dwaa"})
    write_pixels(tmp_path / "review.png", read_pixels(exr), like=read_info(exr))
    png = read_info(tmp_path / "review.png")
    assert png.pixel_type == "uint16", "float goes to a 16-bit PNG, not an 8-bit one"
    dpx = write_frame(tmp_path / "scan.dpx", random_pixels(rng, (6, 8, 3)), "uint16",
                      attributes={"oiio:BitsPerSample": 10})
    write_pixels(tmp_path / "scan.tif", read_pixels(dpx), like=read_info(dpx))
    tif = read_info(tmp_path / "scan.tif")
    assert tif.bits_per_sample == 16 and not any(k.startswith("dpx:") for k in tif.attributes)
    write_pixels(tmp_path / "scan.exr", read_pixels(dpx), like=read_info(dpx))
    assert read_info(tmp_path / "scan.exr").compression != "none"
    codes = np.round(read_pixels(dpx) * 1023)
    assert np.array_equal(np.round(read_pixels(tmp_path / "scan.exr") * 1023), codes), "10-bit codes fit in half"


def test_data_window_differs_from_display_window(tmp_path):
    rng = np.random.default_rng(3)
    # 20x14 pixels stored from (-2, -1): 2 px of overscan around a 16x12 picture.
    src = write_frame(tmp_path / "over.exr", random_pixels(rng, (14, 20, 3)), "half", window=(-2, -1, 16, 12))
    info = read_info(src)
    assert (info.x, info.y, info.width, info.height) == (-2, -1, 20, 14)
    assert (info.full_x, info.full_y, info.full_width, info.full_height) == (0, 0, 16, 12)
    pixels = read_pixels(src)
    assert pixels.shape == (14, 20, 3)
    out = tmp_path / "over_out.exr"
    write_pixels(out, pixels, like=info)
    back = read_info(out)
    assert (back.x, back.y, back.width, back.height, back.full_width, back.full_height) == (-2, -1, 20, 14, 16, 12)
    assert np.array_equal(native(out), native(src))

    # A 2x model's output: both windows scale with the pixels.
    write_pixels(tmp_path / "over_2x.exr", np.repeat(np.repeat(pixels, 2, 0), 2, 1), like=info)
    big = read_info(tmp_path / "over_2x.exr")
    assert (big.x, big.y, big.width, big.height, big.full_width, big.full_height) == (-4, -2, 40, 28, 32, 24)
    with pytest.raises(DuplidogError, match="over_bad.exr"):
        write_pixels(tmp_path / "over_bad.exr", pixels[:, :-1], like=info)


def test_ten_bit_dpx_stays_ten_bit(tmp_path):
    codes = np.arange(12 * 16 * 3).reshape(12, 16, 3) * 5 % 1024
    src = write_frame(tmp_path / "scan.dpx", codes / 1023.0, "uint16", attributes={"oiio:BitsPerSample": 10})
    info = read_info(src)
    assert info.bits_per_sample == 10 and info.format_name == "dpx"
    pixels = read_pixels(src)
    assert np.array_equal(np.round(pixels * 1023).astype(int), codes)
    out = tmp_path / "scan_out.dpx"
    write_pixels(out, pixels, like=info)
    assert read_info(out).bits_per_sample == 10
    # 10-bit RGB packs 3 samples per 32-bit word (768 bytes of pixels here, 1152 at 16 bits): the
    # file size says which depth was actually written.
    sixteen = write_frame(tmp_path / "scan16.dpx", codes / 1023.0, "uint16")
    assert os.path.getsize(out) == os.path.getsize(src) == os.path.getsize(sixteen) - (1152 - 768)
    assert np.array_equal(np.round(read_pixels(out) * 1023).astype(int), codes)


def test_one_channel_matte_from_rgb_like(tmp_path):
    rng = np.random.default_rng(4)
    plate = write_frame(tmp_path / "plate.exr", random_pixels(rng, (8, 10, 3)), "half",
                        attributes={"compression": "zip"})
    matte = random_pixels(rng, (8, 10, 1))
    out = tmp_path / "matte.exr"
    write_pixels(out, matte, like=read_info(plate), channel_names=["A"])
    info = read_info(out)
    assert info.channel_names == ("A",) and info.nchannels == 1 and info.alpha_channel == 0
    assert info.spec.alpha_channel == 0 and info.compression == "zip" and info.pixel_type == "half"
    assert np.array_equal(read_pixels(out), matte.astype(np.float16).astype(np.float32))

    # A 2D array is taken as one channel; a wrong number of names is refused before writing.
    write_pixels(tmp_path / "matte2.exr", matte[:, :, 0], like=read_info(plate), channel_names=["A"])
    assert read_info(tmp_path / "matte2.exr").nchannels == 1
    with pytest.raises(DuplidogError, match="matte3.exr"):
        write_pixels(tmp_path / "matte3.exr", matte, like=read_info(plate))
    assert not (tmp_path / "matte3.exr").exists()


def test_per_channel_types_follow_the_channel_names(tmp_path):
    path = tmp_path / "mixed.exr"
    write_frame(path, np.full((4, 4, 4), 1234.567, np.float32), "half", channels=("R", "G", "B", "Z"),
                channel_types=(oiio.TypeHalf, oiio.TypeHalf, oiio.TypeHalf, oiio.TypeFloat))
    write_pixels(tmp_path / "z.exr", read_pixels(path, ["Z", "R"]), like=read_info(path), channel_names=["Z", "R"])
    back = read_info(tmp_path / "z.exr")
    # EXR stores channels sorted by name, so compare by name, not position.
    types = dict(zip(back.channel_names, (str(t) for t in back.spec.channelformats)))
    assert types == {"Z": "float", "R": "half"}
    assert back.spec.z_channel == back.channel_names.index("Z")
    assert read_pixels(tmp_path / "z.exr", ["Z"])[0, 0, 0] == np.float32(1234.567)


def test_read_named_channels_in_order(tmp_path):
    pixels = np.stack([np.full((3, 5), v, np.float32) for v in (1, 2, 3, 4, 5)], axis=-1)
    src = write_frame(tmp_path / "aov.exr", pixels, "float", channels=["R", "G", "B", "A", "spec.R"])
    assert read_pixels(src, ["A", "R"])[0, 0].tolist() == [4, 1]
    assert read_pixels(src, ["spec.R"]).shape == (3, 5, 1)
    assert read_pixels(src, ["G", "B"])[0, 0].tolist() == [2, 3]
    with pytest.raises(DuplidogError, match=r"aov\.exr: no channel Q \(the file has R, G, B, A, spec\.R\)"):
        read_pixels(src, ["R", "Q"])


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DuplidogError, match=r"frame\.1001\.exr: no such file"):
        read_info(tmp_path / "frame.1001.exr")
    with pytest.raises(DuplidogError, match=r"frame\.1001\.exr: no such file"):
        read_pixels(tmp_path / "frame.1001.exr")


@pytest.mark.parametrize("name,keep", [("frame.1012.exr", 0.5), ("frame.1012.exr", 0.99), ("frame.1012.exr", 0.01),
                                       ("frame.1012.png", 0.5), ("frame.1012.tif", 0.5), ("frame.1012.dpx", 0.5),
                                       ("frame.1012.jpg", 0.9)])
def test_truncated_file_is_named(tmp_path, name, keep):
    rng = np.random.default_rng(5)
    pixel_type = {".exr": "half", ".jpg": "uint8"}.get(Path(name).suffix, "uint16")
    good = write_frame(tmp_path / f"good_{name}", random_pixels(rng, (64, 64, 3)), pixel_type)
    assert read_pixels(good).shape == (64, 64, 3), "the intact file reads cleanly"
    data = good.read_bytes()
    bad = tmp_path / name
    bad.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(DuplidogError) as caught:
        read_info(bad)
        read_pixels(bad)
    message = str(caught.value)
    assert message.startswith(f"{bad}: truncated or corrupt (") and "\n" not in message


def test_garbage_file_is_named(tmp_path):
    bad = tmp_path / "frame.1013.exr"
    bad.write_bytes(b"not an image at all " * 20)
    with pytest.raises(DuplidogError, match=r"frame\.1013\.exr: truncated or corrupt \(.*not an OpenEXR file"):
        read_pixels(bad)


def test_check_finite_policies(tmp_path, caplog):
    pixels = np.ones((4, 4, 3), np.float32)
    pixels[0, 0, 0] = np.nan
    pixels[1, 1, 1] = np.inf
    pixels[2, 2, 2] = -np.inf
    with pytest.raises(DuplidogError, match=r"frame\.1005\.exr: 3 non-finite values \(1 NaN, 2 inf\)"):
        check_finite(pixels, "shot/frame.1005.exr")
    with caplog.at_level(logging.WARNING):
        fixed = check_finite(pixels, "shot/frame.1005.exr", policy="replace")
    assert "frame.1005.exr: 3 non-finite values" in caplog.text
    assert np.isfinite(fixed).all() and fixed.sum() == 48 - 3
    assert np.isnan(pixels[0, 0, 0]), "the caller's array is not changed behind its back"
    clean = np.zeros((2, 2, 1), np.float32)
    assert check_finite(clean, "x.exr") is clean
    with pytest.raises(DuplidogError, match="unknown non-finite policy"):
        check_finite(clean, "x.exr", policy="ignore")


def test_failed_write_leaves_no_file(tmp_path):
    src = write_frame(tmp_path / "a.exr", np.zeros((4, 4, 3), np.float32), "half")
    target = tmp_path / "out" / "frame.1001.unknownext"
    with pytest.raises(DuplidogError, match=r"frame\.1001\.unknownext"):
        write_pixels(target, np.zeros((4, 4, 3), np.float32), like=read_info(src))
    assert not target.exists() and list(target.parent.iterdir()) == []


KILLED_WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    import OpenImageIO as oiio
    from duplidog.imageio import read_info, write_pixels

    like, out = sys.argv[1], sys.argv[2]
    pixels = np.random.default_rng(0).uniform(0, 100, (1200, 1600, 4)).astype(np.float32)
    write_pixels(out, pixels, like=read_info(like))
    print("finished", flush=True)
    """
)


def test_write_killed_midway_leaves_nothing_under_the_final_name(tmp_path):
    like = tmp_path / "like.exr"
    write_frame(like, np.zeros((1200, 1600, 4), np.float32), "float", channels=None, attributes={"compression": "zip"})
    final = tmp_path / "frame.1001.exr"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(like), str(final)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # Kill the writer the moment its temporary file exists (OpenImageIO is part-way through it).
    deadline = time.monotonic() + 60
    temporaries = []
    while writer.poll() is None and time.monotonic() < deadline:
        temporaries = list(tmp_path.glob(".frame.1001.tmp-*.exr"))
        if temporaries:
            os.kill(writer.pid, signal.SIGKILL)
            break
        time.sleep(0.0005)
    writer.wait(timeout=60)
    stdout, stderr = writer.communicate()
    assert temporaries, f"the writer finished before it could be killed: {stdout!r} {stderr!r}"
    assert writer.returncode == -signal.SIGKILL
    assert not final.exists(), "a killed write left a file under the final name"
    assert temporaries[0].suffix == ".exr", "the temporary keeps the extension so OIIO picks the format"
