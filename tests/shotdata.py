"""Helpers the test modules share: frames written with OpenImageIO, small shots, plans and models, and a
Snakemake runner for the pipeline tests.

Every test file that writes an image writes it with ``write_frame`` (OpenImageIO directly, never through
the code under test).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import OpenImageIO as oiio
import yaml

ROOT = Path(__file__).resolve().parents[1]

# Settings that make a shot train and infer in seconds on two CPU cores (the pipeline tests).
TINY = {
    "pool": {"tiles_per_keyframe": 24, "tile_size": 32, "border": 4},
    "train": {"steps": 6, "batch_size": 4, "validate_every": 3, "checkpoint_every": 3},
    "model": {"preset": "small", "overrides": {"width": 8}},
    "infer": {"chunk_size": 3},
}


def write_frame(path: Path, pixels: np.ndarray, pixel_type: str = "half", channels=("R", "G", "B"),
                attributes: dict | None = None, window=None, channel_types=None) -> Path:
    """Write ``pixels`` (height, width, channels) to ``path`` with OpenImageIO; returns ``path``.

    ``channels``: the channel names, or None for OpenImageIO's defaults. ``attributes``: header attributes
    (``compression``, ``oiio:BitsPerSample``, ...); a value ``(TypeDesc, value)`` is set with that type.
    ``window``: ``(x, y, full_width, full_height)``, a data window inside a display window at 0, 0.
    ``channel_types``: a TypeDesc per channel, where they differ.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width, nchannels = pixels.shape
    spec = oiio.ImageSpec(width, height, nchannels, pixel_type)
    if channels:
        spec.channelnames = tuple(channels)
    if channel_types:
        spec.channelformats = tuple(channel_types)
    if window:
        spec.x, spec.y, spec.full_width, spec.full_height = window
    for key, value in (attributes or {}).items():
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], oiio.TypeDesc):
            spec.attribute(key, *value)
        else:
            spec.attribute(key, value)
    out = oiio.ImageOutput.create(str(path))
    assert out is not None and out.open(str(path), spec), oiio.geterror()
    assert out.write_image(np.ascontiguousarray(pixels, np.float32)), out.geterror()
    assert out.close()
    return path


def native(path):
    """The stored values at the file's own type (uint8 codes, uint16 codes, half, float)."""
    image_input = oiio.ImageInput.open(str(path))
    spec = image_input.spec()
    pixels = image_input.read_image(0, 0, 0, spec.nchannels, spec.format)
    image_input.close()
    return pixels


def random_pixels(rng, shape, low=0.0, high=1.0):
    """Uniform values; for a range reaching below 0 or above 1, spread over decades like a real plate."""
    if low >= 0 and high <= 1:
        return rng.uniform(low, high, shape).astype(np.float32)
    magnitude = 10.0 ** rng.uniform(-4, np.log10(high), shape)
    sign = np.where(rng.random(shape) < 0.2, -1.0, 1.0)
    return np.clip(sign * magnitude, low, high).astype(np.float32)


def make_shot(root: Path, frames=range(1001, 1009), keyframes=(1001, 1004, 1008), size=(48, 40),
              name: str = "t1", channels=("R", "G", "B"), extra: dict | None = None) -> Path:
    """A plate of a drifting gradient-and-noise pattern and graded keyframes; returns the shot file."""
    width, height = size
    rng = np.random.default_rng(3)
    canvas = rng.random((height + 40, width + 40, len(channels)), dtype=np.float32) * 1.5
    for frame in frames:
        offset = frame - frames[0]
        plate = canvas[offset % 20: offset % 20 + height, offset: offset + width]
        write_frame(root / "plate" / f"plate.{frame:04d}.exr", plate, channels=channels)
        if frame in keyframes:
            write_frame(root / "fixed" / f"fixed.{frame:04d}.exr", plate * 0.8 + 0.05, channels=channels)
    shot = {"shot": name, "source": str(root / "plate/plate.%04d.exr"),
            "target": str(root / "fixed/fixed.####.exr"), **(extra or {})}
    shot_file = root / f"{name}.yaml"
    shot_file.write_text(yaml.safe_dump(shot), encoding="utf-8")
    return shot_file


# A four-frame plate with its plan (no ingest), and a tiny saved model: for the inference tests.
PLAN_FRAMES = [1001, 1002, 1003, 1004]


def write_plan_shot(root: Path, channels=("R", "G", "B", "A"), inputs=("R", "G", "B"), outputs=("R", "G", "B"),
                    passthrough=("A",), size=(52, 36)) -> Path:
    """Random piz-compressed plate frames (a 250 highlight in each) and their ``plan.json``; returns the plan."""
    width, height = size
    rng = np.random.default_rng(7)
    for frame in PLAN_FRAMES:
        pixels = rng.normal(0.4, 1.5, (height, width, len(channels))).astype(np.float32)
        pixels[0, 0, 0] = 250.0  # a highlight: must not be clamped on the way through
        write_frame(root / "plate" / f"plate.{frame}.exr", pixels, channels=channels,
                    attributes={"compression": "piz", "studio:camera": "A cam"})
    plan = {"shot": "t", "source": str(root / "plate/plate.%04d.exr"), "target": str(root / "fixed/fixed.%04d.exr"),
            "output": str(root / "out/out.%04d.exr"), "frames": PLAN_FRAMES, "keyframes": [1001],
            "colorspace": "linear", "input_channels": list(inputs), "output_channels": list(outputs),
            "passthrough_channels": list(passthrough), "width": width, "height": height, "pixel_type": "half",
            "nonfinite": "error"}
    (root / "plan.json").write_text(json.dumps(plan))
    return root / "plan.json"


def make_model(model_dir: Path, in_names, out_names, space="linear"):
    """A tiny MSRN (2 levels, width 4) saved with its card under ``model_dir``."""
    import torch

    from duplidog import colour
    from duplidog.model import build_model
    from duplidog.core.modelstore import save_model

    torch.manual_seed(1)
    net = build_model(preset="small", in_channels=len(in_names), out_channels=len(out_names),
                      levels=2, stages=1, width=4, depth=1, block="res")
    return save_model(model_dir, net, {"input_channels": list(in_names), "output_channels": list(out_names),
                                       "colorspace": colour.describe(space)})


def model_card(**fields):
    """A ``ModelCard`` with stand-in values for every field a test does not give (no folder behind it)."""
    from duplidog import colour
    from duplidog.core.card import ModelCard, Weights

    values = dict(network={"arch": "msrn", "preset": "small"}, input_channels=("R", "G", "B"),
                  output_channels=("R", "G", "B"), colorspace=colour.describe("linear"), id="abc",
                  created="2026-12-03T10:00:00+00:00", versions={},
                  weights=Weights("model.safetensors", "0" * 64, tensors=0, parameters=0))
    return ModelCard(**{**values, **fields})


def snakemake(*args, cwd, check=True):
    """Run the repository's Snakefile in ``cwd`` with this interpreter's Snakemake; fails loudly unless told."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
               "--directory", str(cwd), *args]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


def jobs_in(result: subprocess.CompletedProcess) -> set[str]:
    """The rules of the jobs Snakemake printed (run or, in a dry run, planned)."""
    text = result.stdout + result.stderr
    jobs = set(re.findall(r"^(?:local)?rule (\S+?):$", text, re.MULTILINE))
    assert jobs or "Nothing to be done" in text, text[-3000:]
    return jobs


def _devices() -> list[str]:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) + (
        ["mps"] if mps is not None and mps.is_available() else [])


DEVICES = _devices()  # the devices a test parametrised over devices runs on here


def nudged(network, seed: int = 0):
    """Weights moved off their start, so the correction the head adds is not nearly zero."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in network.named_parameters():
            if not name.endswith("curves.values"):
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return network
