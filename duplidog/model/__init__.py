"""duplidog's networks: a registry from architecture name to class, and builders from presets or cards.

This package knows tensors only (no files, no training). A network here has, beside ``forward``:
``size_multiple`` (H and W must be multiples of it), ``reach`` (pixels of context each output pixel
depends on, an upper bound), ``scale`` (output / input resolution) and ``config`` (a JSON-able dict
that ``build_from_config`` turns back into the same network, weights aside).

The config stores every setting explicitly, not just the preset name, so a model saved today rebuilds
identically even if a preset's numbers change later.
"""

from __future__ import annotations

import inspect
from typing import Any, Dict, Mapping

from torch import nn

from duplidog.errors import DuplidogError
from duplidog.model.analysis import count_parameters, macs_per_megapixel, measure_reach
from duplidog.model.msrn import MATTE_NETWORK, MSRN, PRESETS as MSRN_PRESETS

MODELS: Dict[str, type] = {"msrn": MSRN}
PRESETS: Dict[str, Dict[str, Dict[str, Any]]] = {"msrn": MSRN_PRESETS}

__all__ = ["MODELS", "PRESETS", "MSRN", "build_model", "build_from_config", "count_parameters",
           "macs_per_megapixel", "makes_matte", "measure_reach"]


def makes_matte(in_channels: int, out_channels: int) -> bool:
    """Whether a network from ``in_channels`` to ``out_channels`` makes a matte (channels its input lacks):
    it is built as ``MATTE_NETWORK`` and trained with the matte's batch size (``train.setup``)."""
    return in_channels != out_channels


def _network_class(arch: str) -> type:
    try:
        return MODELS[arch]
    except KeyError:
        raise DuplidogError(f"unknown network architecture {arch!r}; known: {', '.join(sorted(MODELS))}") from None


def build_model(arch: str = "msrn", preset: str = "small", in_channels: int = 3, out_channels: int = 3,
                **overrides: Any) -> nn.Module:
    """A new, randomly initialised network: ``preset``'s settings with ``overrides`` on top.

    Args:
        arch: name in ``MODELS``. Default "msrn".
        preset: "small" (fast on CPU), "medium" or "large" (CopyCat SRN scale). Default "small".
        in_channels: channels fed to the network (from the data). Default 3.
        out_channels: channels it predicts (from the target). Default 3.
        **overrides: any constructor argument of the architecture (levels, width, depth, ...).

    Raises DuplidogError for an unknown arch, preset or setting (these come from users' shot files).
    """
    cls = _network_class(arch)
    presets = PRESETS.get(arch, {})
    if preset not in presets:
        raise DuplidogError(f"unknown {arch} preset {preset!r}; known: {', '.join(sorted(presets))}")
    settings = dict(presets[preset])
    if arch == "msrn" and makes_matte(in_channels, out_channels):
        settings.update(MATTE_NETWORK)
    settings.update({**overrides, "in_channels": in_channels, "out_channels": out_channels})
    model = _construct(cls, settings)
    model.preset = preset
    return model


def build_from_config(config: Mapping[str, Any]) -> nn.Module:
    """Rebuild a network from its ``model.config`` (as stored in a model card); weights are fresh."""
    settings = dict(config)
    cls = _network_class(str(settings.pop("arch", "")))
    preset = settings.pop("preset", "custom")
    model = _construct(cls, settings)
    model.preset = preset
    return model


def _construct(cls: type, settings: Dict[str, Any]) -> nn.Module:
    try:
        inspect.signature(cls).bind(**settings)
    except TypeError as exc:  # an unknown setting name, e.g. a typo in a shot file's model overrides
        raise DuplidogError(f"bad {cls.__name__} settings: {exc}") from None
    try:
        return cls(**settings)
    except ValueError as exc:
        raise DuplidogError(f"bad {cls.__name__} settings: {exc}") from None
