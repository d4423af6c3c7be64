"""Colour management through OpenColorIO: names, $OCIO, the plate's tag, refusal or conversion, the
model card, and QC pictures through a display/view. Every test makes its own small frames."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from duplidog import colour, imageio, ocio, settings
from duplidog.core.layout import ShotLayout
from duplidog.core.plan import write_plan
from duplidog.errors import DuplidogError
from duplidog.ingest import ingest
from shotdata import make_model, model_card, write_frame

FRAMES = [1001, 1002, 1003]

TINY_CONFIG = """\
ocio_profile_version: 2
name: tiny-studio
description: A two-space studio config for the tests
roles:
  default: plate_lin
  scene_linear: plate_lin
  data: raw
displays:
  monitor:
    - !<View> {name: film, colorspace: monitor_g22}
active_displays: []
active_views: []
colorspaces:
  - !<ColorSpace>
    name: plate_lin
    aliases: [studio_linear]
    encoding: scene-linear
  - !<ColorSpace>
    name: plate_log
    encoding: log
    from_scene_reference: !<LogTransform> {base: 2}
  - !<ColorSpace>
    name: monitor_g22
    encoding: sdr-video
    from_scene_reference: !<ExponentTransform> {value: 2.2, direction: inverse}
  - !<ColorSpace>
    name: raw
    encoding: data
    isdata: true
"""


@pytest.fixture(autouse=True)
def builtin_config(monkeypatch):
    """Every test starts from OCIO's built-in config, whatever the machine's $OCIO says."""
    monkeypatch.delenv("OCIO", raising=False)


def write_tagged(path: Path, pixels: np.ndarray, tag: str | None, channels=("R", "G", "B")) -> Path:
    return write_frame(path, pixels, "float", channels, attributes={"oiio:ColorSpace": tag} if tag else None)


def plate_pixels(frame: int, size=(24, 16)) -> np.ndarray:
    width, height = size
    rng = np.random.default_rng(frame)
    pixels = rng.random((height, width, 3), dtype=np.float32) * 1.2
    pixels[0, 0] = (40.0, 0.5, -0.02)  # a highlight and a negative: never clamped
    return pixels


def make_tagged_shot(root: Path, plate_tag: str | None, target_tag: str | None = "same", **extra) -> dict:
    """A 3-frame shot (keyframes 1001, 1003) whose files carry ``oiio:ColorSpace`` tags; the config."""
    target_tag = plate_tag if target_tag == "same" else target_tag
    for frame in FRAMES:
        write_tagged(root / f"plate/plate.{frame}.exr", plate_pixels(frame), plate_tag)
        if frame in (1001, 1003):
            write_tagged(root / f"fixed/fixed.{frame}.exr", plate_pixels(frame) * 0.8 + 0.05, target_tag)
    user = {"shot": "oc", "source": str(root / "plate/plate.%04d.exr"), "target": str(root / "fixed/fixed.%04d.exr"),
            "output": str(root / "out/out.%04d.exr"), **extra}
    return settings.resolve(user)


# -- names -------------------------------------------------------------------------------------------

def test_ocio_names_aliases_and_roles_are_accepted_and_mapped_to_working_kinds():
    for name, kind, canonical in (("ACEScg", "linear", "ACEScg"), ("lin_rec709", "linear", "Linear Rec.709 (sRGB)"),
                                  ("scene_linear", "linear", "ACEScg"), ("ACEScct", "log", "ACEScct"),
                                  ("sRGB - Texture", "display", "sRGB Encoded Rec.709 (sRGB)"),
                                  ("Raw", "display", "Raw")):
        space = colour.resolve_colorspace(name, None)
        assert space["name"] == kind and space["ocio"]["colorspace"] == canonical, name
        assert space["ocio"]["config"].startswith("cg-config")
        assert colour.from_description(space) == colour.as_space(space)
    # a linear OCIO space is shaped exactly as 'linear' always was: training is unchanged
    x = np.array([[[0.18, 40.0, -0.01]]], np.float32)
    assert np.array_equal(colour.encode(x, colour.resolve_colorspace("ACEScg", None)), colour.encode(x, "linear"))
    assert colour.resolve_colorspace("linear", None) == "linear"  # plain kinds stay as they were
    assert settings.resolve({"colorspace": "ACEScg"})["colorspace"] == "ACEScg"


def test_an_unknown_name_is_one_line_naming_the_setting_and_close_names():
    with pytest.raises(DuplidogError) as caught:
        settings.resolve({"colorspace": "ACEScgg"}, origin="shots/sh010.yaml")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("shots/sh010.yaml: colorspace 'ACEScgg'")
    assert "ACEScg" in message.split("close names:")[1]
    with pytest.raises(DuplidogError, match="assemble.display: 'Cinema'.*displays: sRGB - Display"):
        settings.resolve({"assemble": {"display": "Cinema"}})
    with pytest.raises(DuplidogError, match="assemble.view: 'Filmic'.*views:"):
        settings.resolve({"assemble": {"display": "sRGB - Display", "view": "Filmic"}})
    assert settings.resolve({"assemble": {"display": "sRGB - Display", "view": "Un-tone-mapped"}})


def test_the_config_in_OCIO_is_honoured(tmp_path, monkeypatch):
    config_file = tmp_path / "studio.ocio"
    config_file.write_text(TINY_CONFIG)
    monkeypatch.setenv("OCIO", str(config_file))
    assert colour.resolve_colorspace("studio_linear", None)["ocio"] == {
        "colorspace": "plate_lin", "encoding": "scene-linear", "family": "", "config": "tiny-studio",
        "config_description": "A two-space studio config for the tests", "config_path": str(config_file)}
    assert colour.resolve_colorspace("plate_log", None)["name"] == "log"
    assert colour.resolve_colorspace("monitor_g22", None)["name"] == "display"
    assert colour.resolve_colorspace("raw", None)["name"] == "display"
    with pytest.raises(DuplidogError, match=f"'ACEScg' is not .* OpenColorIO config {config_file}"):
        settings.resolve({"colorspace": "ACEScg"})
    assert ocio.check_display_view(None, None) == ("monitor", "film")
    shown = ocio.display_view(np.full((1, 1, 3), 0.5, np.float32), "plate_lin")
    assert np.allclose(shown, 0.5 ** (1 / 2.2), atol=1e-4)


def test_a_broken_OCIO_is_one_line_naming_it(tmp_path, monkeypatch):
    broken = tmp_path / "broken.ocio"
    broken.write_text("ocio_profile_version: 2\ncolorspaces: [\n")
    monkeypatch.setenv("OCIO", str(broken))
    with pytest.raises(DuplidogError, match=f"{broken}: cannot load the OpenColorIO config") as caught:
        settings.resolve({"colorspace": "plate_lin"})
    assert "\n" not in str(caught.value)


# -- ingest: the plate's tag ---------------------------------------------------------------------------

def test_auto_takes_the_plates_tag(tmp_path):
    plan = ingest(make_tagged_shot(tmp_path, "lin_ap1_scene"), tmp_path / "ingest")
    assert plan.colorspace["name"] == "linear" and plan.colorspace["ocio"]["colorspace"] == "ACEScg"
    assert plan.plate_colorspace == plan.target_colorspace == "ACEScg"
    assert plan.convert_colorspace is False
    # untagged float EXR under auto: as before
    plan = ingest(make_tagged_shot(tmp_path / "plain", None), tmp_path / "plain/ingest")
    assert plan.colorspace == "linear" and plan.plate_colorspace is None


def test_a_plate_in_another_space_is_refused_naming_file_and_spaces(tmp_path):
    config = make_tagged_shot(tmp_path, "ACEScg", colorspace="lin_rec709")
    with pytest.raises(DuplidogError) as caught:
        ingest(config, tmp_path / "ingest")
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(tmp_path / "plate/plate.1001.exr"))
    assert "'ACEScg'" in message and "'Linear Rec.709 (sRGB)'" in message
    assert "ingest.convert_colorspace: true" in message
    # keyframes in another space than the plate's working one: the same
    config = make_tagged_shot(tmp_path / "k", "lin_rec709", target_tag="ACEScct", colorspace="lin_rec709")
    with pytest.raises(DuplidogError, match=r"fixed\.1001\.exr: keyframe in colour space 'ACEScct'"):
        ingest(config, tmp_path / "k/ingest")
    # frames of one plate in two spaces
    config = make_tagged_shot(tmp_path / "m", "ACEScg")
    write_tagged(tmp_path / "m/plate/plate.1002.exr", plate_pixels(1002), "ACEScct")
    with pytest.raises(DuplidogError, match=r"plate\.1002\.exr: plate frame in colour space 'ACEScct', but .*1001"):
        ingest(config, tmp_path / "m/ingest")


def identity_model(model_dir: Path, space):
    """A tiny network whose output is its input to within ~0.002 in the working space, saved like
    training saves one (the card's colorspace is ``colour.describe`` of the plan's)."""
    import torch

    from duplidog.model import build_model
    from duplidog.core.modelstore import save_model

    torch.manual_seed(1)
    net = build_model(preset="small", in_channels=3, out_channels=3, levels=2, stages=1, width=4, depth=1,
                      block="res")
    torch.nn.init.zeros_(net.head.weight)
    torch.nn.init.zeros_(net.head.bias)
    return save_model(model_dir, net, {"input_channels": ["R", "G", "B"], "output_channels": ["R", "G", "B"],
                                       "colorspace": colour.describe(space)})


def test_conversion_on_request_round_trips_an_acescg_plate_through_a_rec709_model(tmp_path):
    from duplidog.infer import infer_frames

    config = make_tagged_shot(tmp_path, "ACEScg", colorspace="lin_rec709", ingest={"convert_colorspace": True})
    plan = ingest(config, tmp_path / "ingest")
    assert plan.plate_colorspace == "ACEScg" and plan.convert_colorspace is True
    assert plan.colorspace["ocio"]["colorspace"] == "Linear Rec.709 (sRGB)"
    # the pool and validation read keyframes converted into the working space
    source = imageio.read_pixels(tmp_path / "plate/plate.1001.exr")
    converted = plan.to_working(source, ["R", "G", "B"], "plate", "p")
    assert np.allclose(converted, ocio.convert(source, None, "ACEScg", "lin_rec709"))
    assert not np.allclose(converted, source, atol=0.05)
    assert converted[0, 0, 0] > 40.0  # unclamped: a bright red highlight stays bright
    card = identity_model(tmp_path / "model", plan.colorspace)
    assert card.colorspace["ocio"]["colorspace"] == "Linear Rec.709 (sRGB)"
    infer_frames(tmp_path / "model", tmp_path / "ingest/plan.json", FRAMES, None, {"device": "cpu"})
    for frame in FRAMES:
        out = imageio.read_info(tmp_path / f"out/out.{frame}.exr")
        tag = imageio.read_info(tmp_path / f"plate/plate.{frame}.exr").attributes["oiio:ColorSpace"]
        assert out.attributes["oiio:ColorSpace"] == tag and ocio.canonical(tag) == "ACEScg"  # OIIO may say lin_ap1_scene
        assert out.pixel_type == "float"
        result, plate = imageio.read_pixels(out.path), plate_pixels(frame)
        assert np.allclose(result, plate, rtol=0.02, atol=0.01), np.abs(result - plate).max()


def test_inference_refuses_a_model_trained_in_another_space_unless_asked(tmp_path):
    from duplidog.infer import infer_frames

    plan = ingest(make_tagged_shot(tmp_path, "ACEScg"), tmp_path / "ingest")
    identity_model(tmp_path / "model", colour.resolve_colorspace("lin_rec709", None))
    with pytest.raises(DuplidogError) as caught:
        infer_frames(tmp_path / "model", tmp_path / "ingest/plan.json", FRAMES[:1], None, {"device": "cpu"})
    message = str(caught.value)
    assert "\n" not in message and "plate.1001.exr: in colour space 'ACEScg'" in message
    assert "'Linear Rec.709 (sRGB)'" in message and "convert_colorspace" in message
    write_plan(tmp_path / "ingest/plan.json", dataclasses.replace(plan, convert_colorspace=True))
    infer_frames(tmp_path / "model", tmp_path / "ingest/plan.json", FRAMES[:1], None, {"device": "cpu"})
    assert np.allclose(imageio.read_pixels(tmp_path / "out/out.1001.exr"), plate_pixels(1001), rtol=0.02, atol=0.01)
    # an old card (no OCIO name) keeps working on a tagged plate, unconverted
    identity_model(tmp_path / "old", "linear")
    infer_frames(tmp_path / "old", tmp_path / "ingest/plan.json", FRAMES[:1], None, {"device": "cpu"})


# -- the model card ------------------------------------------------------------------------------------

def test_training_stores_the_ocio_space_in_the_model_card(tmp_path):
    from duplidog.model_list import format_card
    from duplidog.pool import build_pool
    from duplidog.train import train

    from trainshot import TINY_MODEL, TINY_POOL, TINY_TRAIN

    config = make_tagged_shot(tmp_path, "ACEScct", colorspace="auto", model=TINY_MODEL, pool=TINY_POOL,
                              train={**TINY_TRAIN, "steps": 4, "validate_every": 0, "checkpoint_every": 0})
    ingest(config, tmp_path / "ingest")
    build_pool(tmp_path / "ingest/manifest.csv", tmp_path / "ingest/plan.json", tmp_path / "pool.zarr",
               config["pool"], seed=0)
    train(tmp_path / "pool.zarr", tmp_path / "ingest/plan.json", tmp_path / "ingest/manifest.csv",
          tmp_path / "model", tmp_path / "train", config)
    card = json.loads((tmp_path / "model/model.json").read_text())
    assert card["colorspace"]["name"] == "log" and card["colorspace"]["ocio"]["colorspace"] == "ACEScct"
    assert card["colorspace"]["ocio"]["config"].startswith("cg-config")
    assert "OpenColorIO 'ACEScct'" in format_card(tmp_path / "model")


# -- QC pictures -----------------------------------------------------------------------------------------

def test_qc_pictures_go_through_the_display_view(tmp_path):
    from duplidog.assemble import assemble
    from duplidog.core.previews import view_transform

    scene = plate_pixels(1001)
    acescg = colour.resolve_colorspace("ACEScg", None)
    default = view_transform(scene, acescg)
    assert np.allclose(default, np.clip(ocio.display_view(scene, "ACEScg", "sRGB - Display",
                                                          "ACES 2.0 - SDR 100 nits (Rec.709)"), 0, 1))
    assert not np.allclose(default, np.clip(colour.encode(scene, "linear"), 0, 1), atol=0.02)  # not the shaper
    # untagged scene-linear values are shown as linear Rec.709 through the same default view
    assert np.allclose(view_transform(scene, "linear"),
                       np.clip(ocio.display_view(scene, "Linear Rec.709 (sRGB)", "sRGB - Display",
                                                 "ACES 2.0 - SDR 100 nits (Rec.709)"), 0, 1))
    plain = view_transform(scene, acescg, "sRGB - Display", "Un-tone-mapped")
    assert not np.allclose(plain, default, atol=0.02)
    # a display-referred plain kind is shown as it is, as before
    assert np.array_equal(view_transform(np.full((2, 2, 3), 0.25, np.float32), "display"), np.full((2, 2, 3), 0.25))

    # the assemble contact sheet of an ACEScg shot, through the view that was asked for
    config = make_tagged_shot(tmp_path, "ACEScg", assemble={"display": "sRGB - Display", "view": "Un-tone-mapped"})
    plan = ingest(config, tmp_path / "ingest")
    for frame in FRAMES:
        info = imageio.read_info(tmp_path / f"plate/plate.{frame}.exr")
        imageio.write_pixels(plan.output % frame, imageio.read_pixels(info.path), like=info)
    make_model(tmp_path / "model", ("R", "G", "B"), ("R", "G", "B"))  # its card gives the output's scale
    layout = ShotLayout(tmp_path.parent, tmp_path.name)  # the shot's files are under tmp_path
    summary = assemble(layout, None, settings=config["assemble"])
    assert Path(summary["contact_sheet"]).exists()
    with pytest.raises(DuplidogError, match="assemble.view: 'Filmic' is not a view"):
        assemble(layout, None, settings={**config["assemble"], "view": "Filmic"})


def test_training_contact_sheet_panels_use_the_default_view():
    import torch

    from duplidog.train.validate import _preview

    space = colour.resolve_colorspace("ACEScg", None)
    scene = plate_pixels(1001)
    working = torch.from_numpy(colour.encode(scene, space)).permute(2, 0, 1)[None]
    shown = _preview(working, 64, space)
    expected = np.clip(ocio.display_view(colour.decode(colour.encode(scene, space), space), "ACEScg"), 0, 1)
    assert shown.shape == scene.shape and np.allclose(shown, expected, atol=1e-4)
    assert np.allclose(_preview(working, 64), np.clip(working[0].permute(1, 2, 0).numpy(), 0, 1))


def test_plan_less_inference_refuses_or_converts_on_request(tmp_path):
    from duplidog.cli import main
    from duplidog.infer import infer_sequence

    make_tagged_shot(tmp_path, "ACEScg")
    identity_model(tmp_path / "model", colour.resolve_colorspace("lin_rec709", None))
    source, output = str(tmp_path / "plate/plate.%04d.exr"), str(tmp_path / "cli/out.%04d.exr")
    with pytest.raises(DuplidogError, match="in colour space 'ACEScg'.*--convert-colorspace"):
        infer_sequence(tmp_path / "model", source, output, [1001], device="cpu")
    assert main(["infer", "--model", str(tmp_path / "model"), "--source", source, "--output", output,
                 "--frames", "1001", "--device", "cpu", "--convert-colorspace"]) in (None, 0)
    assert np.allclose(imageio.read_pixels(tmp_path / "cli/out.1001.exr"), plate_pixels(1001), rtol=0.02, atol=0.01)


def test_the_flame_sidecar_names_the_models_ocio_space():
    from duplidog.export import flame_sidecar

    sidecar = flame_sidecar(model_card(colorspace=colour.describe("ACEScg")), ("RGB", False), ("RGB", False))
    description = sidecar["ModelDescription"]
    assert description["SupportsSceneLinear"] is True
    assert description["Inputs"][0]["Description"] == "plate, ACEScg, scene-linear"


def test_a_conversion_touches_colour_channels_only_keeps_the_dtype_and_never_clamps():
    pixels = np.array([[[0.18, 0.5, 2.0, 0.7, 3.0], [-0.01, 100.0, 0.0, 1.0, -1.0]]], np.float16)
    names = ["R", "G", "B", "A", "Z"]
    converted = ocio.convert(pixels, names, "ACEScg", "lin_rec709")
    assert converted.dtype == np.float16
    assert np.array_equal(converted[..., 3:], pixels[..., 3:])
    assert converted[0, 1, 1] > 100.0 and converted[0, 1, 0] < -1.0  # beyond 0..1 both ways, unclamped
    back = ocio.convert(converted, names, "lin_rec709", "ACEScg")
    assert np.allclose(back.astype(np.float32), pixels.astype(np.float32), rtol=5e-3, atol=5e-3)
    assert np.array_equal(ocio.convert(pixels, names, "ACEScg", "Raw"), pixels)  # data is never converted
