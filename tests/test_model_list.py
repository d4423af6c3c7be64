"""Listing and inspecting models: ``duplidog models list`` finds every model under a results tree, and
``models show`` describes one; missing, corrupt or incompatible models are clear errors.

Models are saved with the real model store, with cards shaped like the trainer's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from duplidog import colour, model_list
from duplidog.cli import main
from duplidog.errors import DuplidogError
from duplidog.model import build_model
from duplidog.core.card import ModelCard
from duplidog.core.modelstore import save_model

TINY = dict(levels=2, stages=1, width=4, depth=1, block="res")


def save_shot_model(model_dir: Path, shot: str, psnr: float, steps: int, channels=("R", "G", "B")) -> ModelCard:
    """A model folder with a card like the trainer's (shot, channels, colour, training, metrics)."""
    network = build_model("msrn", "small", in_channels=len(channels), out_channels=len(channels), **TINY)
    card = {
        "input_channels": list(channels), "output_channels": list(channels), "passthrough_channels": [],
        "colorspace": colour.describe("linear"),
        "training": {"shot": shot, "steps": steps, "stopped_by": "steps", "seed": 0, "device": "cpu",
                     "precision": "fp32", "tile_size": 16, "border": 3, "pool_tiles": 48,
                     "keyframe_fingerprint": "ab" * 32, "pool_fingerprint": "cd" * 32, "train_frames": [1001, 1002],
                     "validation_frames": [1003], "init_from": None, "settings": {"steps": steps, "lr": 0.003}},
        "metrics": {"loss": 0.0123, "validation": {"psnr": psnr, "ssim": 0.91, "psnr_identity": 20.5},
                    "best_validation_psnr": psnr, "best_validation_step": steps},
    }
    return save_model(model_dir, network, card)


@pytest.fixture()
def results(tmp_path) -> dict:
    root = tmp_path / "results"
    first = save_shot_model(root / "sh010/model", "sh010", 31.234, 400)
    second = save_shot_model(root / "sh020/model", "sh020", 27.5, 1200, channels=("R", "G", "B", "A"))
    (root / "sh010/train/checkpoints").mkdir(parents=True)  # other stage folders hold no cards
    # A model folder half-written by a killed job (atomic temporary): never listed.
    save_shot_model(root / "sh030/.model.tmp-1a2b3c4d", "sh030", 10.0, 1)
    return {"root": root, "cards": [first, second]}


def test_find_models_lists_every_model_under_results(results):
    cards = model_list.find_models([results["root"]])
    assert [c.card.id for c in cards] == [c.id for c in results["cards"]]
    assert {Path(c.path).parent.name for c in cards} == {"sh010", "sh020"}
    table = model_list.format_table(cards)
    lines = table.splitlines()
    assert len(lines) == 3 and lines[0].split()[:4] == ["id", "shot", "created", "preset"]
    row = next(line for line in lines if "sh010" in line)
    assert results["cards"][0].id in row and "31.23" in row and "400" in row and "RGB>RGB" in row
    assert "msrn/small" in row
    assert "RGBA>RGBA" in next(line for line in lines if "sh020" in line)


def test_a_model_folder_itself_and_a_missing_path(results, tmp_path):
    cards = model_list.find_models([results["root"] / "sh020/model"])
    assert len(cards) == 1 and cards[0].card.shot == "sh020"
    assert model_list.find_models([tmp_path / "results/sh010"])[0].card == results["cards"][0]
    with pytest.raises(DuplidogError, match="no such folder"):
        model_list.find_models([tmp_path / "elsewhere"])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert model_list.format_table(model_list.find_models([empty])) == "no models found"


def test_an_unreadable_card_is_listed_with_its_reason(results):
    broken = results["root"] / "sh040/model"
    broken.mkdir(parents=True)
    (broken / "model.json").write_text("{ not json")
    cards = model_list.find_models([results["root"]])
    assert len(cards) == 3
    bad = next(c for c in cards if c.error)
    assert "not valid JSON" in bad.error and bad.path == str(broken) and bad.card is None
    assert "unreadable" in model_list.format_table(cards)


def test_cli_models_list_and_show(results, capsys):
    assert main(["models", "list", str(results["root"])]) == 0
    out = capsys.readouterr().out
    for card in results["cards"]:
        assert card.id in out
    assert main(["models", "show", str(results["root"] / "sh010/model")]) == 0
    out = capsys.readouterr().out
    assert results["cards"][0].id in out and "31.23 dB" in out


def test_format_card_says_what_the_model_is_and_how_it_was_made(results):
    card = results["cards"][0]
    text = model_list.format_card(results["root"] / "sh010/model")
    for expected in (card.id, "sh010", "msrn preset small", "RGB -> RGB",
                     "linear (asinh shaper, softness 0.05)", "checksum ok", "steps:           400",
                     "validation PSNR: 31.23 dB", "torch " + torch.__version__, "keyframe print:  abababab",
                     card.created, f"{card.weights.parameters} parameters"):
        assert expected in text, expected


def test_damaged_or_missing_weights_are_reported(results):
    folder = results["root"] / "sh010/model"
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    assert "DAMAGED" in model_list.format_card(folder)
    weights.unlink()
    assert "MISSING" in model_list.format_card(folder)


def test_missing_corrupt_and_newer_cards_are_clear_errors(tmp_path):
    with pytest.raises(DuplidogError, match="model folder not found"):
        model_list.format_card(tmp_path / "nothing")
    folder = tmp_path / "m"
    folder.mkdir()
    with pytest.raises(DuplidogError, match="model card missing"):
        model_list.format_card(folder)
    (folder / "model.json").write_text("[1, 2")
    with pytest.raises(DuplidogError, match="not valid JSON"):
        model_list.format_card(folder)
    (folder / "model.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(DuplidogError, match="not a duplidog model card"):
        model_list.format_card(folder)
    save_shot_model(folder, "sh050", 30.0, 10)
    card = json.loads((folder / "model.json").read_text())
    card["format_version"] = 99
    (folder / "model.json").write_text(json.dumps(card))
    with pytest.raises(DuplidogError, match="newer"):
        model_list.format_card(folder)
    assert main(["models", "show", str(folder)]) == 2  # the CLI prints the one-line error, no traceback


def test_incompatible_network_is_a_clear_error_on_load(tmp_path):
    from duplidog.core.modelstore import load_model

    folder = tmp_path / "m"
    save_shot_model(folder, "sh060", 30.0, 10)
    card = json.loads((folder / "model.json").read_text())
    card["model"]["arch"] = "unet9000"
    (folder / "model.json").write_text(json.dumps(card))
    with pytest.raises(DuplidogError, match="unet9000"):
        load_model(folder)
    card["model"]["arch"] = "msrn"
    card["model"]["width"] = 6  # the weights were saved for width 4
    (folder / "model.json").write_text(json.dumps(card))
    with pytest.raises(DuplidogError, match="do not fit"):
        load_model(folder)
