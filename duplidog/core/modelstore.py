"""A finished model on disk: a folder with the weights in safetensors and its card beside them.

``results/<shot>/model/`` holds exactly two files:

- ``model.safetensors``: the network's tensors by name. safetensors is a header plus raw bytes, so
  loading runs no code, unlike a pickled ``torch.save`` file (never used here);
- ``model.json``: the card (``duplidog.core.card``): what the trainer passes in (channels, colour
  transform, edge context, training record, metrics) and what this module adds from the network and
  the save itself (``RESERVED_KEYS``), including the weights' SHA-256, so a damaged file is caught at
  load time, not as silently wrong pixels.

The folder is written into a temporary sibling and renamed into place (``duplidog.atomic``), so a
killed job leaves either the old model or the new one, never a card paired with other weights.
"""

from __future__ import annotations

import dataclasses
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
from duplidog.core.card import CARD_NAME, FORMAT, FORMAT_VERSION, WEIGHTS_NAME, ModelCard, read_card
from duplidog.core.previews import file_sha256
from duplidog.errors import DuplidogError
from duplidog.model import build_from_config
from duplidog.model.analysis import count_parameters

# Card fields the caller gives (the trainer's facts about the model).
CALLER_KEYS = ("input_channels", "output_channels", "passthrough_channels", "colorspace", "edge_context",
               "training", "metrics")
# Fields save_model fills in itself, from the network and the save; a caller's values are replaced.
RESERVED_KEYS = ("format", "format_version", "id", "created", "versions", "model", "scale", "temporal_frames",
                 "reach", "size_multiple", "weights")


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def save_model(model_dir: Union[str, os.PathLike], model: nn.Module, facts: Mapping[str, Any]) -> ModelCard:
    """Write ``model`` and its card to ``model_dir`` (replacing what was there, atomically); return the card.

    Args:
        model_dir: the model folder, e.g. ``results/sh010/model``; it holds only the model's two files.
        model: a duplidog network (has ``config``, ``reach``, ``size_multiple``); its current weights are
            saved (pass the EMA weights if those are the ones to keep).
        facts: the card fields in ``CALLER_KEYS`` (``input_channels``, ``output_channels`` and
            ``colorspace`` at least); fields in ``RESERVED_KEYS`` are filled in here.
    """
    unknown = [key for key in facts if key not in CALLER_KEYS + RESERVED_KEYS]
    if unknown:
        raise DuplidogError(f"{Path(model_dir) / CARD_NAME}: {', '.join(map(repr, unknown))} not a model card field "
                            f"(the card holds {', '.join(CALLER_KEYS)} and what save_model adds)")
    config = dict(model.config)
    state = {name: tensor.detach().to("cpu").contiguous() for name, tensor in model.state_dict().items()}
    full: Dict[str, Any] = dict(facts)
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
        reach=int(model.reach),
        size_multiple=int(model.size_multiple),
        # checked below with a stand-in checksum; the real one once the file is written
        weights={"file": WEIGHTS_NAME, "sha256": "-", "tensors": len(state), "parameters": count_parameters(model)},
    )
    full = standard_json(full)  # a perfect validation's infinite PSNR is written as null, never as Infinity
    text_check = json.dumps(full, allow_nan=False)  # fail before touching the disk if the card is not JSON-able
    del text_check
    card = ModelCard.from_document(full, Path(model_dir) / CARD_NAME)
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "arch": str(config.get("arch")),
                "id": card.id}
    remove_stale_temporaries(model_dir)  # a save killed midway left its temporary folder beside it
    with atomic_path(model_dir) as tmp:
        tmp.mkdir()
        weights = tmp / WEIGHTS_NAME
        safetensors.torch.save_file(state, str(weights), metadata=metadata)
        _fsync(weights)
        card = dataclasses.replace(card, weights=dataclasses.replace(card.weights, sha256=file_sha256(weights)))
        with open(tmp / CARD_NAME, "w", encoding="utf-8") as f:
            f.write(card.to_json())
            f.flush()
            os.fsync(f.fileno())
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


def load_model(model_dir: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu") -> Tuple[nn.Module, ModelCard]:
    """The network saved in ``model_dir``, on ``device`` in eval mode and set up for inference as its card
    says (``ModelCard.configure``), and its card.

    Raises DuplidogError naming the folder or file when it is missing, the card is not valid JSON or
    names an unknown architecture, or the weights are missing, damaged or do not fit the card.
    """
    folder = Path(model_dir)
    card = read_card(folder)
    try:
        model = build_from_config(card.network)
    except DuplidogError as exc:
        raise DuplidogError(f"{folder / CARD_NAME}: {exc}") from None
    weights = folder / card.weights.file
    if not weights.is_file():
        raise DuplidogError(f"{weights}: model weights missing")
    if file_sha256(weights) != card.weights.sha256:
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
    return card.configure(model).to(device).eval(), card
