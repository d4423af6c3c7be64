"""A finished model on disk: a folder with the weights in safetensors and a JSON card beside them.

``results/<shot>/model/`` holds exactly two files:

- ``model.safetensors``: the network's tensors by name. safetensors is a header plus raw bytes, so
  loading runs no code, unlike a pickled ``torch.save`` file (never used here);
- ``model.json``: the card, everything needed to rebuild and use the network elsewhere: the network's
  ``config`` (under ``"model"``) plus what the trainer passes in (shot, input/output channel names,
  colour transform, train settings, keyframe fingerprint, metrics, steps), and what this module adds:
  ``format``, ``format_version``, ``id``, ``created``, ``versions``, ``scale``, ``temporal_frames``
  (neighbour frames on each side the network reads: 2N + 1 frames in all) and ``weights`` (file
  name, SHA-256, tensor and parameter counts, so a damaged file is caught at load time, not as
  silently wrong pixels).

The folder is written into a temporary sibling and renamed into place (``duplidog.atomic``), so a
killed job leaves either the old model or the new one, never a card paired with other weights.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import uuid
from pathlib import Path
from typing import Any, Dict, Mapping, Tuple, Union

import safetensors
import safetensors.torch
import torch
from torch import nn

import duplidog
from duplidog.atomic import atomic_path, remove_stale_temporaries, standard_json
from duplidog.core.previews import file_sha256
from duplidog.errors import DuplidogError
from duplidog.model import build_from_config
from duplidog.model.analysis import count_parameters

FORMAT = "duplidog-model"
FORMAT_VERSION = 1
CARD_NAME = "model.json"
WEIGHTS_NAME = "model.safetensors"
# Keys save_model writes itself; a caller's values under these names are replaced.
RESERVED_KEYS = ("format", "format_version", "id", "created", "versions", "model", "scale", "temporal_frames",
                 "weights")


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def save_model(model_dir: Union[str, os.PathLike], model: nn.Module, card: Mapping[str, Any]) -> Dict[str, Any]:
    """Write ``model`` and its card to ``model_dir`` (replacing what was there, atomically); return the card.

    Args:
        model_dir: the model folder, e.g. ``results/sh010/model``; it holds only the model's two files.
        model: a duplidog network (has ``config``); its current weights are saved (pass the EMA
            weights if those are the ones to keep).
        card: JSON-able facts about the model: shot, input_channels, output_channels, colour,
            train settings, data fingerprint, metrics, steps, ... Kept as given, except the
            reserved keys listed in ``RESERVED_KEYS``, which this function fills in.
    """
    config = dict(model.config)
    state = {name: tensor.detach().to("cpu").contiguous() for name, tensor in model.state_dict().items()}
    full: Dict[str, Any] = dict(card)
    full.update(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        id=uuid.uuid4().hex[:12],
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        versions={"duplidog": duplidog.__version__, "torch": torch.__version__,
                  "safetensors": safetensors.__version__, "python": platform.python_version()},
        model=config,
        scale=int(getattr(model, "scale", 1)),
        # Neighbour frames on each side the network reads: its input stacks 2N + 1 frames, centre first.
        temporal_frames=int(getattr(model, "temporal_frames", 0)),
    )
    full = standard_json(full)  # a perfect validation's infinite PSNR is written as null, never as Infinity
    text_check = json.dumps(full, allow_nan=False)  # fail before touching the disk if the card is not JSON-able
    del text_check
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "arch": str(config.get("arch")),
                "id": full["id"]}
    remove_stale_temporaries(model_dir)  # a save killed midway left its temporary folder beside it
    with atomic_path(model_dir) as tmp:
        tmp.mkdir()
        weights = tmp / WEIGHTS_NAME
        safetensors.torch.save_file(state, str(weights), metadata=metadata)
        _fsync(weights)
        full["weights"] = {"file": WEIGHTS_NAME, "sha256": file_sha256(weights), "tensors": len(state),
                           "parameters": count_parameters(model)}
        with open(tmp / CARD_NAME, "w", encoding="utf-8") as f:
            json.dump(full, f, indent=2, sort_keys=False, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
    return full


def read_card(model_dir: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The card of the model in ``model_dir``, checked to be a duplidog model card this version reads."""
    folder = Path(model_dir)
    if not folder.is_dir():
        raise DuplidogError(f"{folder}: model folder not found")
    path = folder / CARD_NAME
    if not path.is_file():
        raise DuplidogError(f"{path}: model card missing (not a duplidog model folder?)")
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DuplidogError(f"{path}: model card is not valid JSON ({exc})") from None
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        raise DuplidogError(f"{path}: not a duplidog model card (no \"format\": \"{FORMAT}\")")
    version = card.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise DuplidogError(f"{path}: model format version {version!r} is newer than this duplidog reads "
                            f"({FORMAT_VERSION}); update duplidog")
    if not isinstance(card.get("model"), dict):
        raise DuplidogError(f"{path}: model card has no network settings under \"model\"")
    return card


def _describe_mismatch(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor]) -> str:
    """One line saying how a weights file differs from the network its card describes."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    reshaped = [k for k in expected if k in found and tuple(expected[k].shape) != tuple(found[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if reshaped:
        k = reshaped[0]
        shape = lambda t: "x".join(map(str, t.shape)) or "scalar"  # noqa: E731
        parts.append(f"{len(reshaped)} with other shapes (e.g. {k}: {shape(found[k])} in the file, "
                     f"{shape(expected[k])} in the network)")
    return ", ".join(parts)


def load_model(model_dir: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu") -> Tuple[nn.Module, Dict[str, Any]]:
    """The network saved in ``model_dir``, on ``device`` in eval mode, and its card.

    The network's ``edge_context`` attribute is the card's (0 when absent): what ``infer`` mirrors
    around each frame with its ``edge_context: auto``.

    Raises DuplidogError naming the folder or file when it is missing, the card is not valid JSON or
    names an unknown architecture, or the weights are missing, damaged or do not fit the card.
    """
    folder = Path(model_dir)
    card = read_card(folder)
    try:
        model = build_from_config(card["model"])
    except DuplidogError as exc:
        raise DuplidogError(f"{folder / CARD_NAME}: {exc}") from None
    weights = folder / str(card.get("weights", {}).get("file", WEIGHTS_NAME))
    if not weights.is_file():
        raise DuplidogError(f"{weights}: model weights missing")
    expected_digest = card.get("weights", {}).get("sha256")
    if not expected_digest:  # every card save_model writes has one: without it, tampering would go unseen
        raise DuplidogError(f"{folder / CARD_NAME}: the card has no weights checksum (weights.sha256); "
                            "refusing to load unverified weights")
    if file_sha256(weights) != expected_digest:
        raise DuplidogError(f"{weights}: model weights damaged (SHA-256 differs from the card's)")
    try:
        state = safetensors.torch.load_file(str(weights), device="cpu")
    except Exception as exc:  # safetensors raises its own SafetensorError (and OSError) for bad files
        raise DuplidogError(f"{weights}: model weights unreadable ({type(exc).__name__}: {exc})") from None
    expected = model.state_dict()
    mismatch = _describe_mismatch(expected, state)
    if mismatch:
        raise DuplidogError(f"{weights}: weights do not fit the network in {CARD_NAME}: {mismatch}")
    model.load_state_dict(state, strict=True)
    # The context its training tiles gave every scored pixel; inference mirrors that much around frames.
    model.edge_context = int(card.get("edge_context", 0) or 0)
    return model.to(device).eval(), card
