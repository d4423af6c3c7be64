"""Exports for Nuke (TorchScript) and Flame (ONNX + sidecar), checked against duplidog's own inference.

The model is a real MSRN cut down to a few hundred parameters, its weights nudged off the identity so
the network visibly changes the picture, saved with the real model store. The reference is what the
pipeline does: encode into the working space, ``apply_model`` whole-frame in fp32, decode.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from duplidog import colour
from duplidog.core.modelstore import load_model, save_model
from duplidog.errors import DuplidogError
from duplidog.export import check_frames, export, flame_layout, flame_sidecar
from duplidog.core.apply import apply_model
from duplidog.model import build_model
from shotdata import DEVICES, model_card

torch.set_num_threads(1)

TINY = dict(levels=3, stages=1, width=8, depth=1, block="res")  # size_multiple 8
#: Sizes unlike the exporter's own check frames: one smaller than size_multiple (padding folds back).
SIZES = ((29, 45), (5, 3), (64, 24))


def save_tiny_model(model_dir: Path, channels_in, channels_out, space="linear", seed=0) -> Path:
    torch.manual_seed(seed)
    network = build_model("msrn", "small", in_channels=len(channels_in), out_channels=len(channels_out), **TINY)
    with torch.no_grad():
        for name, parameter in network.named_parameters():
            if name.endswith("curves.values"):  # a tone curve, not noise: random knots would extend
                parameter.mul_(1.1).add_(0.02)  # to slopes that turn highlights into 1e8
            else:
                parameter.add_(torch.randn_like(parameter) * 0.05)
    card = {"input_channels": list(channels_in), "output_channels": list(channels_out),
            "colorspace": colour.describe(space), "edge_context": 6, "training": {"shot": "sh010", "steps": 7}}
    save_model(model_dir, network, card)
    return model_dir


def scene_frames(channels: int, seed: int = 5):
    """Scene-linear frames with highlights above 1 and grain below 0."""
    generator = torch.Generator().manual_seed(seed)
    frames = []
    for height, width in SIZES:
        frame = torch.exp(torch.randn(1, channels, height, width, generator=generator) * 1.5 - 1.0)
        frame = frame - 0.05 * torch.rand(1, channels, height, width, generator=generator)
        frames.append(frame)
    assert max(float(f.max()) for f in frames) > 4 and min(float(f.min()) for f in frames) < 0
    return frames


def scaled_difference(got, expected) -> float:
    """Largest difference, absolute below 1 and relative above (float32 keeps ~7 digits of a highlight)."""
    got, expected = torch.as_tensor(got).double(), torch.as_tensor(expected).double()
    return float(((got - expected).abs() / expected.abs().clamp(min=1.0)).max())


def duplidog_result(model_dir: Path, frame: torch.Tensor) -> torch.Tensor:
    network, card = load_model(model_dir)
    space = card.colorspace
    working = colour.encode(frame, space, list(card.input_channels))  # as inference: an alpha is not shaped
    return colour.decode(apply_model(network, working, tile="none", precision="fp32"), space,
                         list(card.output_channels))


@pytest.fixture(scope="module")
def rgb_model(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("models") / "rgb", ["R", "G", "B"], ["R", "G", "B"])


# -- Nuke ----------------------------------------------------------------------------------------------------

FRESH_PYTHON = """
import sys, torch
module = torch.jit.load(sys.argv[1], map_location="cpu")
frames = torch.load(sys.argv[2])
with torch.no_grad():
    results = [module(frame) for frame in frames]
assert not any(name == "duplidog" or name.startswith("duplidog.") for name in sys.modules), "duplidog was imported"
torch.save(results, sys.argv[3])
"""


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated, yet it is what Nuke reads
def test_nuke_export_runs_without_duplidog_and_matches_its_inference(rgb_model, tmp_path):
    result = export(rgb_model, "nuke", tmp_path / "sh010.pt")
    pt = tmp_path / "sh010.pt"
    nk = tmp_path / "sh010.nk"
    assert result["files"] == [str(pt), str(nk)] and result["sizes"][str(pt)] == pt.stat().st_size > 0
    assert result["max_difference"] <= 1e-4 and len(result["differences"]) == 2
    assert result["max_scaled_difference_half"] <= 0.05  # as Nuke's "Optimize for Speed and Memory" runs it
    # The Nuke script: CatFileCreator set up for this model, an Inference node reading its .cat, and
    # which Nuke can load the file.
    script = nk.read_text()
    assert f'torchScriptFile "{pt.resolve()}"' in script and f'catFile "{pt.resolve().with_suffix(".cat")}"' in script
    assert 'channelsIn "rgba.red, rgba.green, rgba.blue"' in script and "outputScale 1" in script
    assert f'modelFile "{pt.resolve().with_suffix(".cat")}"' in script and script.count("{") == script.count("}")
    version = torch.__version__.split("+")[0]
    assert f"saved by torch {version}" in script and f"saved by torch {version}" in result["nuke_versions"]

    frames = scene_frames(3)
    torch.save(frames, tmp_path / "frames.pt")
    # -I: no PYTHONPATH, no user site, no current folder on sys.path; run from elsewhere than the repo.
    command = [sys.executable, "-I", "-W", "ignore::FutureWarning", "-c", FRESH_PYTHON, str(pt),
               str(tmp_path / "frames.pt"), str(tmp_path / "results.pt")]
    subprocess.run(command, check=True, cwd=tmp_path, timeout=300)
    results = torch.load(tmp_path / "results.pt")
    for frame, got in zip(frames, results):
        expected = duplidog_result(rgb_model, frame)
        assert got.shape == frame.shape == expected.shape  # H, W not baked in: three sizes, one file
        difference = float((got - expected).abs().max())
        print(f"nuke export {tuple(frame.shape[-2:])}: max difference {difference:.3g} (in up to "
              f"{float(frame.max()):.1f}, out up to {float(expected.abs().max()):.1f})")
        assert difference <= 1e-4 and scaled_difference(got, expected) <= 1e-4
    # The model changes the picture (the comparison is not identity against identity).
    assert float((results[0] - frames[0]).abs().max()) > 1e-2
    extra = {"duplidog_card.json": ""}
    torch.jit.load(str(pt), _extra_files=extra)
    assert json.loads(extra["duplidog_card.json"])["id"] == result["model_id"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_nuke_export_on_each_device_in_full_and_half_precision(rgb_model, tmp_path, device):
    """Nuke's Inference moves the module to the GPU ("Use GPU if available") and, with "Optimize for
    Speed and Memory", casts it and the frame to half: tensors made inside must follow."""
    export(rgb_model, "nuke", tmp_path / "m.pt")
    module = torch.jit.load(str(tmp_path / "m.pt"), map_location=device)
    frame = scene_frames(3)[0]
    expected = duplidog_result(rgb_model, frame)
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        full = module(frame.to(device)).cpu()
        half = module.half()(frame.to(device).half())
    print(f"nuke export on {device}: fp32 scaled difference {scaled_difference(full, expected):.3g}, "
          f"fp16 {scaled_difference(half.float().cpu(), expected):.3g}")
    assert scaled_difference(full, expected) <= 1e-4
    assert half.dtype == torch.float16 and bool(torch.isfinite(half).all())
    assert scaled_difference(half.float().cpu(), expected) <= 0.05


def test_nuke_export_into_a_folder_uses_shot_and_id(rgb_model, tmp_path):
    result = export(rgb_model, "nuke", tmp_path)
    assert Path(result["files"][0]).name == f"sh010_{result['model_id']}.pt"


def test_cli_export_prints_what_was_written(rgb_model, tmp_path, capsys):
    from duplidog.cli import main

    assert main(["export", str(rgb_model), "--to", "nuke", str(tmp_path / "m.pt")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["files"] == [str(tmp_path / "m.pt"), str(tmp_path / "m.nk")] and printed["max_difference"] <= 1e-4


# -- Flame ---------------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")
def test_flame_export_has_dynamic_size_a_sidecar_and_matches_in_onnxruntime(tmp_path):
    import onnx
    import onnxruntime

    # The network's channels are A, R, G, B in and A, B, G, R out; Flame wants colour first, then alpha,
    # so the ONNX model takes and gives R, G, B, A and B, G, R, A and reorders inside.
    model_dir = save_tiny_model(tmp_path / "rgba", ["A", "R", "G", "B"], ["A", "B", "G", "R"])
    flame_order = [1, 2, 3, 0]
    result = export(model_dir, "flame", tmp_path / "out/sh010.onnx")
    onnx_path, sidecar_path = tmp_path / "out/sh010.onnx", tmp_path / "out/sh010.json"
    assert result["files"] == [str(onnx_path), str(sidecar_path)]
    assert result["max_scaled_difference"] <= 1e-3 and result["opset"] >= 17

    proto = onnx.load(str(onnx_path))
    onnx.checker.check_model(proto)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[:2]] == [1, 4] and dims[2].dim_param and dims[3].dim_param
    assert json.loads({p.key: p.value for p in proto.metadata_props}["duplidog_card"])["id"] == result["model_id"]

    sidecar = json.loads(sidecar_path.read_text())["ModelDescription"]
    assert sidecar["SupportsSceneLinear"] is True and sidecar["Padding"] == 1
    assert [(i["Name"], i["Type"], i["Channels"]) for i in sidecar["Inputs"]] == [
        ("input_image", "Front", "RGB"), ("input_image", "Matte", "A")]
    assert [(o["Name"], o["Type"], o["Channels"], o["ScalingFactor"]) for o in sidecar["Outputs"]] == [
        ("output_image", "Result", "BGR", 1.0), ("output_image", "OutMatte", "A", 1.0)]
    assert {i.name for i in proto.graph.input} == {"input_image"}
    assert {o.name for o in proto.graph.output} == {"output_image"}

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    for frame in scene_frames(4):
        got = session.run(None, {"input_image": frame[:, flame_order].numpy()})[0]
        expected = duplidog_result(model_dir, frame)[:, flame_order].numpy()
        assert got.shape == expected.shape
        difference = float(np.abs(got - expected).max())
        print(f"flame export {tuple(frame.shape[-2:])}: max difference {difference:.3g}, scaled "
              f"{scaled_difference(got, expected):.3g} (out up to {float(np.abs(expected).max()):.1f})")
        assert scaled_difference(got, expected) <= 1e-3


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_a_matte_export_averages_the_copies_the_pipeline_averages(tmp_path):
    import onnxruntime

    model_dir = save_tiny_model(tmp_path / "matte", ["R", "G", "B"], ["A"])
    nuke = export(model_dir, "nuke", tmp_path / "matte.pt")
    flame = export(model_dir, "flame", tmp_path / "matte.onnx")
    assert nuke["ensemble"] == flame["ensemble"] == 8  # infer.ensemble auto, for a matte
    assert 'channelsIn "rgba.red, rgba.green, rgba.blue"\n channelsOut "rgba.alpha"' in (tmp_path / "matte.nk").read_text()
    single = export(model_dir, "nuke", tmp_path / "single.pt", ensemble=1)
    assert single["ensemble"] == 1
    loaded, plain = torch.jit.load(str(tmp_path / "matte.pt")), torch.jit.load(str(tmp_path / "single.pt"))
    session = onnxruntime.InferenceSession(str(tmp_path / "matte.onnx"), providers=["CPUExecutionProvider"])
    for frame in scene_frames(3):
        expected = duplidog_result(model_dir, frame)
        with torch.inference_mode():
            assert float((loaded(frame) - expected).abs().max()) <= 1e-4
            assert float((plain(frame) - expected).abs().max()) > 1e-4
        assert scaled_difference(session.run(None, {"input_image": frame.numpy()})[0], expected) <= 1e-3


#: Autodesk's "Inference Builder" page (Flame 2025): the sidecar's fields, and those of each input and output.
FLAME_FIELDS = {"MinimumVersion", "Name", "Description", "SupportsSceneLinear", "KeepAspectRatio", "Padding",
                "Inputs", "Outputs"}
FLAME_INPUT_FIELDS = {"Name", "Description", "Type", "Gain", "Channels"}
FLAME_OUTPUT_FIELDS = {"Name", "Description", "Type", "InverseGain", "ScalingFactor", "Channels"}


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_the_flame_sidecar_has_every_documented_field_and_no_other(tmp_path):
    from duplidog.export import FLAME_MINIMUM_VERSION

    model_dir = save_tiny_model(tmp_path / "rgb", ["R", "G", "B"], ["R", "G", "B"])
    export(model_dir, "flame", tmp_path / "sh010.onnx")
    sidecar = json.loads((tmp_path / "sh010.json").read_text())
    assert set(sidecar) == {"ModelDescription"}
    description = sidecar["ModelDescription"]
    assert set(description) == FLAME_FIELDS and description["MinimumVersion"] == FLAME_MINIMUM_VERSION
    assert all(set(entry) == FLAME_INPUT_FIELDS for entry in description["Inputs"])
    assert all(set(entry) == FLAME_OUTPUT_FIELDS for entry in description["Outputs"])
    assert {entry["Type"] for entry in description["Inputs"]} <= {"Front", "Back", "Matte", "Aux"}
    assert {entry["Type"] for entry in description["Outputs"]} <= {"Result", "OutMatte"}


def test_flame_layout_puts_colour_before_alpha_and_names_a_matte():
    card_path = Path("model.json")
    assert flame_layout(["rgba.R", "rgba.G", "rgba.B"], "input", card_path) == ("RGB", False, [0, 1, 2])
    assert flame_layout(["A", "R", "G", "B"], "input", card_path) == ("RGB", True, [1, 2, 3, 0])
    assert flame_layout(["matte"], "output", card_path) == ("", True, [0])
    with pytest.raises(DuplidogError, match="R, G, B and A.*Z"):
        flame_layout(["R", "G", "Z"], "input", card_path)
    sidecar = flame_sidecar(model_card(colorspace=colour.describe("display")), ("RGB", False),
                            ("", True))["ModelDescription"]
    assert sidecar["SupportsSceneLinear"] is False
    assert [o["Type"] for o in sidecar["Outputs"]] == ["OutMatte"]


# -- errors --------------------------------------------------------------------------------------------------


def test_bad_targets_paths_and_models_are_clear_errors(rgb_model, tmp_path):
    with pytest.raises(DuplidogError, match="not one of nuke, flame"):
        export(rgb_model, "maya", tmp_path / "m.pt")
    with pytest.raises(DuplidogError, match=r"\.pt file"):
        export(rgb_model, "nuke", tmp_path / "m.onnx")
    with pytest.raises(DuplidogError, match="model folder not found"):
        export(tmp_path / "nowhere", "nuke", tmp_path / "m.pt")

    broken = save_tiny_model(tmp_path / "broken", ["R", "G", "B"], ["R", "G", "B"])
    card = json.loads((broken / "model.json").read_text())
    del card["colorspace"]
    (broken / "model.json").write_text(json.dumps(card))
    with pytest.raises(DuplidogError, match="colorspace"):
        export(broken, "nuke", tmp_path / "m.pt")

    damaged = save_tiny_model(tmp_path / "damaged", ["R", "G", "B"], ["R", "G", "B"])
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(DuplidogError, match="damaged"):
        export(damaged, "nuke", tmp_path / "m.pt")
    assert not (tmp_path / "m.pt").exists()


def test_check_frames_cover_highlights_and_negatives():
    frames = check_frames(3)
    assert max(float(f.max()) for f in frames) >= 30 and min(float(f.min()) for f in frames) < 0
