"""The model folder: a save/load round trip gives the same network, and every damaged folder is named."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from duplidog import colour
from duplidog.core import modelstore
from duplidog.core.card import CARD_NAME, WEIGHTS_NAME, read_card
from duplidog.core.modelstore import load_model, save_model
from duplidog.errors import DuplidogError
from duplidog.model import build_model

torch.set_num_threads(2)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
CARD = {"input_channels": ["R", "G", "B"], "output_channels": ["A"], "colorspace": colour.describe("linear"),
        "edge_context": 3, "training": {"shot": "sh010", "steps": 10}, "metrics": {"validation": {"psnr": 31.5}}}


def tiny(out_channels=1, width=4):
    torch.manual_seed(0)
    return build_model(in_channels=3, out_channels=out_channels, width=width, depth=1, levels=2, stages=1)


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    folder = tmp_path / "results" / "sh010" / "model"
    save_model(folder, tiny(), CARD)
    return folder


def edit_card(folder: Path, change) -> None:
    card = json.loads((folder / CARD_NAME).read_text())
    change(card)
    (folder / CARD_NAME).write_text(json.dumps(card))


@pytest.mark.parametrize("device", DEVICES)
def test_round_trip_gives_identical_outputs(tmp_path: Path, device):
    model = tiny().eval()
    # Weights that differ from any fresh initialisation, so a load that silently kept fresh ones fails.
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    written = save_model(tmp_path / "model", model, CARD)
    loaded, card = load_model(tmp_path / "model", device=device)
    assert not loaded.training
    assert next(loaded.parameters()).device.type == device
    x = torch.rand(1, 3, 16, 24)
    with torch.no_grad():
        difference = (loaded(x.to(device)).cpu() - model(x)).abs().max()
    assert difference == 0 if device == "cpu" else difference < 1e-4
    assert card == written == read_card(tmp_path / "model")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == [CARD_NAME, WEIGHTS_NAME]


def test_card_keeps_the_callers_facts_and_adds_its_own(saved: Path):
    card = read_card(saved)
    document = json.loads((saved / CARD_NAME).read_text())
    for key, value in CARD.items():
        assert document[key] == value
    assert card.input_channels == ("R", "G", "B") and card.output_channels == ("A",) and card.edge_context == 3
    assert card.shot == "sh010" and card.steps == 10 and card.validation_psnr == 31.5
    assert card.network == tiny().config
    assert document["format"] == "duplidog-model" and document["format_version"] == 1
    assert len(card.id) == 12 and card.created.endswith("+00:00")
    assert card.versions["torch"] == torch.__version__ and "duplidog" in card.versions
    assert card.scale == 1 and card.temporal_frames == 0
    assert card.reach == int(tiny().reach) and card.size_multiple == tiny().size_multiple
    assert card.weights.file == WEIGHTS_NAME and len(card.weights.sha256) == 64


def test_the_card_is_written_back_byte_for_byte_in_the_trainers_order(saved: Path):
    text = (saved / CARD_NAME).read_text()
    assert read_card(saved).to_json() == text
    assert list(json.loads(text)) == [
        "model", "input_channels", "output_channels", "passthrough_channels", "colorspace", "scale",
        "temporal_frames", "reach", "size_multiple", "edge_context", "training", "metrics", "format",
        "format_version", "id", "created", "versions", "weights"]


def test_a_card_field_save_model_does_not_know_is_refused(tmp_path: Path):
    with pytest.raises(DuplidogError, match="'shot' not a model card field"):
        save_model(tmp_path / "model", tiny(), {**CARD, "shot": "sh010"})
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize("change, message", [
    (lambda card: card.update(colour=card.pop("colorspace")), "no working-space description"),
    (lambda card: card.pop("input_channels"), "'input_channels' is not a list of channel names"),
    (lambda card: card.update(scale="2"), "'scale' is not a whole number"),
])
def test_a_card_of_another_shape_is_refused(saved: Path, change, message):
    edit_card(saved, change)
    with pytest.raises(DuplidogError, match=message):
        read_card(saved)


def test_every_file_of_a_model_gets_the_modes_the_umask_allows(saved: Path):
    import os

    from duplidog.atomic import FILE_MODE, FOLDER_MODE

    assert FILE_MODE == 0o666 & ~_umask() and FOLDER_MODE == 0o777 & ~_umask()
    modes = {path.name: os.stat(path).st_mode & 0o777 for path in (saved, saved / WEIGHTS_NAME, saved / CARD_NAME)}
    assert modes == {saved.name: FOLDER_MODE, WEIGHTS_NAME: FILE_MODE, CARD_NAME: FILE_MODE}


def _umask() -> int:
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_saving_again_replaces_the_model_and_leaves_no_temporaries(saved: Path):
    first = read_card(saved).id
    (saved.parent / ".model.tmp-0123abcd").mkdir()  # what a save killed midway leaves
    save_model(saved, tiny(width=6), CARD)
    assert read_card(saved).id != first
    assert read_card(saved).network["width"] == 6
    assert [p.name for p in saved.parent.iterdir()] == ["model"]


def test_a_save_that_fails_midway_leaves_the_old_model(saved: Path, monkeypatch):
    before = (saved / WEIGHTS_NAME).read_bytes()

    def crash(path):
        raise KeyboardInterrupt  # as if the job were killed after writing the weights

    monkeypatch.setattr(modelstore, "file_sha256", crash)
    with pytest.raises(KeyboardInterrupt):
        save_model(saved, tiny(width=6), CARD)
    monkeypatch.undo()
    assert (saved / WEIGHTS_NAME).read_bytes() == before
    assert [p.name for p in saved.parent.iterdir()] == ["model"]
    load_model(saved)


def test_a_card_that_is_not_json_is_refused_before_writing(tmp_path: Path):
    with pytest.raises(TypeError):
        save_model(tmp_path / "model", tiny(), {**CARD, "training": {"when": object()}})
    assert not (tmp_path / "model").exists()


def test_loading_never_unpickles(saved: Path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    load_model(saved)
    assert not (saved / WEIGHTS_NAME).read_bytes().startswith(b"PK")  # not a torch.save zip


def test_missing_folder(tmp_path: Path):
    with pytest.raises(DuplidogError, match=r"nowhere: model folder not found"):
        load_model(tmp_path / "nowhere")


def test_missing_card(saved: Path):
    (saved / CARD_NAME).unlink()
    with pytest.raises(DuplidogError, match=rf"{CARD_NAME}: model card missing"):
        load_model(saved)


def test_corrupt_card(saved: Path):
    (saved / CARD_NAME).write_text('{"format": "duplidog-model", ')
    with pytest.raises(DuplidogError, match=rf"{CARD_NAME}: model card is not valid JSON"):
        load_model(saved)


def test_card_of_something_else(saved: Path):
    (saved / CARD_NAME).write_text('["a", "list"]')
    with pytest.raises(DuplidogError, match="not a duplidog model card"):
        load_model(saved)


def test_card_from_a_newer_duplidog(saved: Path):
    edit_card(saved, lambda card: card.update(format_version=99))
    with pytest.raises(DuplidogError, match="newer than this duplidog reads"):
        load_model(saved)


def test_unknown_architecture(saved: Path):
    edit_card(saved, lambda card: card["model"].update(arch="transformer9000"))
    with pytest.raises(DuplidogError, match=rf"{CARD_NAME}: unknown network architecture 'transformer9000'"):
        load_model(saved)


def test_missing_weights(saved: Path):
    (saved / WEIGHTS_NAME).unlink()
    with pytest.raises(DuplidogError, match=rf"{WEIGHTS_NAME}: model weights missing"):
        load_model(saved)


def test_damaged_weights_fail_the_checksum(saved: Path):
    data = bytearray((saved / WEIGHTS_NAME).read_bytes())
    data[-5] ^= 0xFF  # one flipped byte inside a tensor still parses, but gives wrong pixels
    (saved / WEIGHTS_NAME).write_bytes(bytes(data))
    with pytest.raises(DuplidogError, match=rf"{WEIGHTS_NAME}: model weights damaged"):
        load_model(saved)


def test_truncated_weights_are_unreadable_even_with_a_matching_checksum(saved: Path):
    import hashlib

    data = (saved / WEIGHTS_NAME).read_bytes()[:-100]
    (saved / WEIGHTS_NAME).write_bytes(data)
    edit_card(saved, lambda card: card["weights"].update(sha256=hashlib.sha256(data).hexdigest()))
    with pytest.raises(DuplidogError, match=rf"{WEIGHTS_NAME}: model weights unreadable"):
        load_model(saved)


def test_a_card_without_its_weights_checksum_is_refused(saved: Path):
    edit_card(saved, lambda card: card["weights"].pop("sha256"))
    with pytest.raises(DuplidogError, match=rf"{CARD_NAME}: the card has no weights checksum"):
        load_model(saved)


def test_weights_that_do_not_fit_the_card(saved: Path):
    edit_card(saved, lambda card: card["model"].update(width=6))
    with pytest.raises(DuplidogError, match=r"weights do not fit the network in model.json: .*other shapes"):
        load_model(saved)
    edit_card(saved, lambda card: card["model"].update(width=4, recurrent="none"))
    with pytest.raises(DuplidogError, match=r"unexpected \(e.g. cell"):
        load_model(saved)


def test_card_with_bad_settings(saved: Path):
    edit_card(saved, lambda card: card["model"].update(widht=4))
    with pytest.raises(DuplidogError, match=rf"{CARD_NAME}: bad MSRN settings"):
        load_model(saved)
