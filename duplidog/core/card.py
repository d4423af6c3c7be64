"""The model card: ``model.json`` beside a model's weights, read and written as one typed value.

The card says everything needed to rebuild and use a network elsewhere. Format version 1 holds, in
this order: ``model`` (the network's config, what ``duplidog.model.build_from_config`` rebuilds),
``input_channels``, ``output_channels``, ``passthrough_channels``, ``colorspace`` (the working space,
``colour.describe``), ``scale``, ``temporal_frames`` (neighbour frames on each side the network
reads: 2N + 1 in all), ``reach``, ``size_multiple``, ``edge_context`` (the context training tiles
gave every scored pixel), ``training`` and ``metrics`` (how it was made and how good it is),
``format``, ``format_version``, ``id``, ``created``, ``versions`` and ``weights`` (file name,
SHA-256, tensor and parameter counts).

``ModelCard.from_document`` checks a card strictly and ``to_json`` writes it back byte for byte as
``duplidog.core.modelstore.save_model`` wrote it. What inference reads off a loaded network beyond
its weights (``edge_context``) is set in one place, ``configure_inference``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional, Tuple, Union

from duplidog import colour
from duplidog.errors import DuplidogError

if TYPE_CHECKING:  # stages without a network (ingest, pool, assemble) read cards without importing torch
    from torch import nn

FORMAT = "duplidog-model"
FORMAT_VERSION = 1
CARD_NAME = "model.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass(frozen=True)
class Weights:
    """The weights file a card vouches for: its name in the model folder, SHA-256 and sizes."""

    file: str
    sha256: str
    tensors: int
    parameters: int

    def to_document(self) -> Dict[str, Any]:
        return {"file": self.file, "sha256": self.sha256, "tensors": self.tensors, "parameters": self.parameters}


@dataclass(frozen=True)
class ModelCard:
    """One model's card (format version 1). ``network`` is the card's ``model``: the network's config.

    ``training`` and ``metrics`` are the trainer's own records, kept as written (``shot``, ``steps``
    and ``validation_psnr`` read the parts other stages use).
    """

    network: Dict[str, Any]
    input_channels: Tuple[str, ...]
    output_channels: Tuple[str, ...]
    colorspace: Dict[str, Any]
    id: str
    created: str
    versions: Dict[str, Any]
    weights: Weights
    passthrough_channels: Tuple[str, ...] = ()
    scale: int = 1
    temporal_frames: int = 0
    reach: Optional[int] = None
    size_multiple: Optional[int] = None
    edge_context: int = 0
    training: Dict[str, Any] = field(default_factory=dict)
    metrics: Dict[str, Any] = field(default_factory=dict)

    # -- what other stages read ---------------------------------------------------------------------

    @property
    def shot(self) -> Optional[str]:
        return self.training.get("shot")

    @property
    def steps(self) -> Optional[int]:
        return self.training.get("steps")

    @property
    def validation_psnr(self) -> Optional[float]:
        value = (self.metrics.get("validation") or {}).get("psnr")
        return float(value) if isinstance(value, (int, float)) else None

    def space(self) -> colour.WorkingSpace:
        """The working space the model was trained in (training and inference convert through it)."""
        return colour.as_space(self.colorspace)

    def configure(self, network: nn.Module) -> nn.Module:
        """``network`` set up for inference as this card says (``configure_inference``)."""
        return configure_inference(network, self.edge_context)

    # -- reading and writing ------------------------------------------------------------------------

    @classmethod
    def from_document(cls, document: Any, where: Union[str, os.PathLike]) -> "ModelCard":
        """The card in the parsed JSON ``document``, checked; errors name ``where`` (the card file)."""
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise DuplidogError(f"{where}: not a duplidog model card (no \"format\": \"{FORMAT}\")")
        version = document.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise DuplidogError(f"{where}: model format version {version!r} is newer than this duplidog reads "
                                f"({FORMAT_VERSION}); update duplidog")
        if not isinstance(document.get("model"), dict):
            raise DuplidogError(f"{where}: model card has no network settings under \"model\"")
        if not isinstance(document.get("colorspace"), dict):
            raise DuplidogError(f"{where}: model card has no working-space description (\"colorspace\"); "
                                f"retrain or add it")
        weights = document.get("weights")
        if not isinstance(weights, dict) or not weights.get("sha256"):
            # every card save_model writes has one: without it, tampering would go unseen
            raise DuplidogError(f"{where}: the card has no weights checksum (weights.sha256); "
                                "refusing to load unverified weights")
        optional = {key: document[key] for key in ("reach", "size_multiple") if key in document}
        return cls(
            network=document["model"],
            input_channels=_names(document, "input_channels", where),
            output_channels=_names(document, "output_channels", where),
            passthrough_channels=_names(document, "passthrough_channels", where, ()),
            colorspace=document["colorspace"],
            id=_text(document, "id", where),
            created=_text(document, "created", where),
            versions=_mapping(document, "versions", where),
            weights=Weights(file=_text(weights, "file", where), sha256=_text(weights, "sha256", where),
                            tensors=_whole(weights, "tensors", where), parameters=_whole(weights, "parameters", where)),
            scale=_whole(document, "scale", where),
            temporal_frames=_whole(document, "temporal_frames", where, 0),
            edge_context=_whole(document, "edge_context", where, 0),
            training=_mapping(document, "training", where, {}),
            metrics=_mapping(document, "metrics", where, {}),
            **{key: _whole(optional, key, where) for key in optional},
        )

    def to_document(self) -> Dict[str, Any]:
        """The card as JSON-able data, in the order ``model.json`` stores it."""
        document: Dict[str, Any] = {
            "model": self.network,
            "input_channels": list(self.input_channels),
            "output_channels": list(self.output_channels),
            "passthrough_channels": list(self.passthrough_channels),
            "colorspace": self.colorspace,
            "scale": self.scale,
            "temporal_frames": self.temporal_frames,
        }
        document.update({key: getattr(self, key) for key in ("reach", "size_multiple")
                         if getattr(self, key) is not None})
        document.update(edge_context=self.edge_context, training=self.training, metrics=self.metrics,
                        format=FORMAT, format_version=FORMAT_VERSION, id=self.id, created=self.created,
                        versions=self.versions, weights=self.weights.to_document())
        return document

    def to_json(self) -> str:
        """The text of ``model.json``: two-space indented standard JSON and a final newline."""
        return json.dumps(self.to_document(), indent=2, allow_nan=False) + "\n"


def configure_inference(network: nn.Module, edge_context: int) -> nn.Module:
    """Set what inference reads off ``network`` beyond its weights: ``edge_context``, the context its
    training tiles gave every scored pixel, which ``infer.edge_context: auto`` mirrors around each frame.

    The one place this is decided: ``load_model`` calls it with the card's value, and training with the
    pool's border before it validates (the value the card will record)."""
    network.edge_context = int(edge_context)
    return network


def read_card(model_dir: Union[str, os.PathLike]) -> ModelCard:
    """The card of the model in ``model_dir``, checked to be a duplidog model card this version reads."""
    folder = Path(model_dir)
    if not folder.is_dir():
        raise DuplidogError(f"{folder}: model folder not found")
    path = folder / CARD_NAME
    if not path.is_file():
        raise DuplidogError(f"{path}: model card missing (not a duplidog model folder?)")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DuplidogError(f"{path}: model card is not valid JSON ({exc})") from None
    return ModelCard.from_document(document, path)


# -- checking one field ------------------------------------------------------------------------------------

_REQUIRED = object()


def _field(document: Mapping[str, Any], key: str, default: Any) -> Any:
    return document.get(key, default) if default is not _REQUIRED else document.get(key, _REQUIRED)


def _names(document, key, where, default=_REQUIRED) -> Tuple[str, ...]:
    value = _field(document, key, default)
    if isinstance(value, tuple):
        return value
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise DuplidogError(f"{where}: model card's {key!r} is not a list of channel names")
    return tuple(value)


def _text(document, key, where) -> str:
    value = document.get(key)
    if not isinstance(value, str):
        raise DuplidogError(f"{where}: model card's {key!r} is not text")
    return value


def _whole(document, key, where, default=_REQUIRED) -> int:
    value = _field(document, key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise DuplidogError(f"{where}: model card's {key!r} is not a whole number")
    return value


def _mapping(document, key, where, default=_REQUIRED) -> Dict[str, Any]:
    value = _field(document, key, default)
    if not isinstance(value, dict):
        raise DuplidogError(f"{where}: model card's {key!r} is not an object")
    return value
