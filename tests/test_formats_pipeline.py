"""Frames come back through the whole pipeline as they went in: one shot per production format, run
together in one Snakemake command (a batch of shot files), each in its own results/<shot>/.

The identity run: the shots are trained (a few steps, so ingest, pool and train really run), then each
model's output convolution is zeroed and its colour path reset to the identity. A residual MSRN then
returns its input (to float32 rounding, far below every format's step), so the frames
that inference writes must hold the plate's stored values bit for bit: the reader, the working-space
transform and its inverse, the tiler and the writer may change nothing. A roto shot (RGB plate, `A`
keyframes) must come back as a one-channel matte.
"""

from __future__ import annotations

import json

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from duplidog import imageio
from duplidog.core.modelstore import CALLER_KEYS, load_model, save_model
from shotdata import ROOT, TINY, native, random_pixels, snakemake, write_frame

pytestmark = pytest.mark.pipeline

FRAMES = range(1001, 1005)
KEYFRAMES = (1001, 1004)
SIZE = (40, 48)  # height, width
# shot: (extension, pixel type, attributes, value range) -- every format the brief keeps exactly.
FORMATS = {
    "exr_half": ("exr", "half", {"compression": "piz", "studio:camera": "A017C003", "oiio:ColorSpace": "ACEScg"},
                 (-5, 5000)),
    "dpx_10": ("dpx", "uint16", {"oiio:BitsPerSample": 10}, (0, 1)),
    "dpx_16": ("dpx", "uint16", {}, (0, 1)),
    "tif_8": ("tif", "uint8", {"compression": "lzw"}, (0, 1)),
    "tif_16": ("tif", "uint16", {"compression": "zip"}, (0, 1)),
    "png_8": ("png", "uint8", {}, (0, 1)),
    "png_16": ("png", "uint16", {}, (0, 1)),
}


def write_format_shot(root: Path, shot: str, ext: str, pixel_type: str, attributes: dict, value_range) -> Path:
    rng = np.random.default_rng(len(shot))
    (root / shot).mkdir()
    for frame in FRAMES:
        plate = random_pixels(rng, (*SIZE, 3), *value_range)
        write_frame(root / f"{shot}/plate.{frame}.{ext}", plate, pixel_type, attributes=attributes)
        if frame in KEYFRAMES:
            write_frame(root / f"{shot}/fixed.{frame}.{ext}", plate * 0.5, pixel_type, attributes=attributes)
    return shot_file(root, shot, ext)


def write_roto_shot(root: Path) -> Path:
    rng = np.random.default_rng(9)
    (root / "roto").mkdir()
    for frame in FRAMES:
        plate = random_pixels(rng, (*SIZE, 3), -1, 50)
        write_frame(root / f"roto/plate.{frame}.exr", plate, "half", attributes={"compression": "zip"})
        if frame in KEYFRAMES:
            matte = (plate[:, :, 1:2] > 1).astype(np.float32)
            write_frame(root / f"roto/fixed.{frame}.exr", matte, "half", channels=["A"],
                        attributes={"compression": "zip"})
    return shot_file(root, "roto", "exr")


def shot_file(root: Path, shot: str, ext: str) -> Path:
    path = root / f"{shot}.yaml"
    path.write_text(yaml.safe_dump({"shot": shot, "source": f"{shot}/plate.%04d.{ext}",
                                    "target": f"{shot}/fixed.%04d.{ext}"}))
    return path


def zero_the_head(model_dir: Path) -> None:
    """Make the trained residual network the identity: its correction is the output convolution's, and
    its colour path goes back to where it starts (identity curves and matrix, a silent MLP)."""
    model, card = load_model(model_dir)
    assert model.residual
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
        path = model.colour
        channels = path.matrix.weight.shape[0]
        path.matrix.weight.copy_(torch.eye(channels).view(channels, channels, 1, 1))
        path.matrix.bias.zero_()
        knots = path.curves.knots
        path.curves.values.copy_(torch.linspace(path.curves.low, path.curves.high, knots).repeat(channels, 1))
        path.mlp[-1].weight.zero_()
        path.mlp[-1].bias.zero_()
    save_model(model_dir, model, {k: v for k, v in card.to_document().items() if k in CALLER_KEYS})


@pytest.fixture(scope="module")
def batch_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("formats")
    shots = [write_format_shot(root, shot, *spec) for shot, spec in FORMATS.items()] + [write_roto_shot(root)]
    batch = root / "batch.yaml"
    batch.write_text(yaml.safe_dump({"shots": [p.name for p in shots], **TINY, "train": {**TINY["train"], "steps": 2},
                                   "infer": {"chunk_size": len(FRAMES)}}))
    snakemake("--profile", str(ROOT / "profiles/local"), "--cores", "2", "--configfile", str(batch), cwd=root)
    for shot in FORMATS:
        zero_the_head(root / f"results/{shot}/model")
    # The models changed: every chunk of every format shot reruns (and only inference and assembly).
    rerun = snakemake("--profile", str(ROOT / "profiles/local"), "--cores", "2", "--configfile", str(batch), cwd=root)
    assert "rule train:" not in rerun.stdout + rerun.stderr
    return root


@pytest.mark.parametrize("shot", FORMATS)
def test_an_identity_run_gives_back_the_plate_bit_for_bit(batch_run, shot):
    ext = FORMATS[shot][0]
    for frame in FRAMES:
        plate = batch_run / f"{shot}/plate.{frame}.{ext}"
        out = batch_run / f"results/{shot}/output/{shot}.{frame}.{ext}"
        source, result = imageio.read_info(plate), imageio.read_info(out)
        assert (result.format_name, result.pixel_type, result.bits_per_sample, result.compression) == (
            source.format_name, source.pixel_type, source.bits_per_sample, source.compression)
        assert result.channel_names == source.channel_names and (result.width, result.height) == (48, 40)
        stored, back = native(plate), native(out)
        assert stored.dtype == back.dtype and np.array_equal(stored, back), f"{out.name}: values changed"


def test_half_exr_keeps_its_metadata_and_values_beyond_one(batch_run):
    plate = imageio.read_info(batch_run / "exr_half/plate.1002.exr")
    out = imageio.read_info(batch_run / "results/exr_half/output/exr_half.1002.exr")
    assert out.spec.getattribute("studio:camera") == "A017C003"
    assert out.spec.getattribute("oiio:ColorSpace") == plate.spec.getattribute("oiio:ColorSpace")
    assert out.spec.getattribute("duplidog:model_id")
    pixels = imageio.read_pixels(batch_run / "results/exr_half/output/exr_half.1002.exr")
    assert pixels.min() < 0 and pixels.max() > 1000, "scene-linear values are never clamped"


def test_ten_bit_dpx_comes_back_ten_bit(batch_run):
    for frame in FRAMES:
        assert imageio.read_info(batch_run / f"results/dpx_10/output/dpx_10.{frame}.dpx").bits_per_sample == 10


def test_a_roto_shot_comes_back_as_a_one_channel_matte(batch_run):
    for frame in FRAMES:
        info = imageio.read_info(batch_run / f"results/roto/output/roto.{frame}.exr")
        assert info.channel_names == ("A",) and info.pixel_type == "half" and (info.width, info.height) == (48, 40)
    card = json.loads((batch_run / "results/roto/model/model.json").read_text())
    assert card["colorspace"]["name"] == "linear" and card["colorspace"]["coverage"] == "unshaped"


def test_each_shot_of_the_batch_has_its_own_results(batch_run):
    for shot in [*FORMATS, "roto"]:
        results = batch_run / f"results/{shot}"
        assert (results / "assemble/summary.json").is_file() and (results / "model/model.json").is_file()
        assert (results / "pool/pool.zarr").is_dir()


@pytest.mark.parametrize("clash", ["plates", "outputs"])
def test_a_batch_refuses_a_shot_writing_over_another_shots_plates_or_output(tmp_path, clash):
    a = write_format_shot(tmp_path, "sa", *FORMATS["tif_16"])
    b = write_format_shot(tmp_path, "sb", *FORMATS["tif_16"])
    output = "sa/plate.%04d.tif" if clash == "plates" else "shared/out.%04d.tif"
    b.write_text(yaml.safe_dump({**yaml.safe_load(b.read_text()), "output": output}))
    if clash == "outputs":
        a.write_text(yaml.safe_dump({**yaml.safe_load(a.read_text()), "output": output}))
    batch = tmp_path / "batch.yaml"
    batch.write_text(yaml.safe_dump({"shots": [a.name, b.name], **TINY}))
    before = {path: path.read_bytes() for path in (tmp_path / "sa").iterdir()}
    result = snakemake("--profile", str(ROOT / "profiles/local"), "--configfile", str(batch), "-n", cwd=tmp_path,
                       check=False)
    text = result.stdout + result.stderr
    expected = (r"shot sb: sa/plate.%04d.tif: output would overwrite the source or target frame 1001 .* of shot sa"
                if clash == "plates" else r"shots sa and sb would both write shared/out.1001.tif")
    assert result.returncode != 0 and re.search(expected, text), text[-3000:]
    assert {path: path.read_bytes() for path in (tmp_path / "sa").iterdir()} == before
