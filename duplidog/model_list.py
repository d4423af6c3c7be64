"""Finding and describing trained models: ``duplidog models list`` and ``duplidog models show``.

A model is a folder holding ``model.json`` (its card, ``duplidog.core.card``) and ``model.safetensors``
(``duplidog.core.modelstore``);
the pipeline puts one at ``results/<shot>/model/``, and people copy them elsewhere to reuse them
(``train.init_from``) or to export them (``duplidog.export``). So listing scans folders for cards
rather than trusting a naming scheme, and reads cards only -- never weights -- so that listing a farm's
results tree stays fast.

A card that cannot be read is listed with the reason instead of stopping the listing: one damaged
folder should not hide every other model. ``format_card`` is the close look at one model, and does
verify the weights against the checksum on the card.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

from duplidog.core.card import CARD_NAME, ModelCard, read_card
from duplidog.core.previews import file_sha256
from duplidog.errors import DuplidogError

TABLE_COLUMNS = ("id", "shot", "created", "preset", "channels", "val PSNR", "steps", "path")


@dataclass(frozen=True)
class FoundModel:
    """A model folder found by ``find_models``: its card, or why the card could not be read."""

    path: str
    card: Optional[ModelCard] = None
    error: Optional[str] = None


def _is_hidden(path: Path, root: Path) -> bool:
    """True under a dot-folder: temporaries of atomic writes (``.model.tmp-1a2b``), .git, .snakemake."""
    return any(part.startswith(".") for part in path.relative_to(root).parts[:-1])


def _card_files(root: Path) -> Iterable[Path]:
    if (root / CARD_NAME).is_file():
        yield root / CARD_NAME
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if CARD_NAME in filenames:
            path = Path(dirpath) / CARD_NAME
            if not _is_hidden(path, root):
                yield path
            dirnames[:] = []  # a model folder holds only its two files: nothing below it


def find_models(paths: Sequence[Union[str, os.PathLike]]) -> List[FoundModel]:
    """Every model found in or under ``paths`` (folders, e.g. ``["results"]``), oldest first.

    A folder whose card cannot be read is listed with the reason (``error``) instead of its card.
    Raises DuplidogError when a path does not exist.
    """
    found: Dict[str, FoundModel] = {}
    for given in paths:
        root = Path(given)
        if not root.exists():
            raise DuplidogError(f"{root}: no such folder to look for models in")
        if root.is_file():
            if root.name != CARD_NAME:
                raise DuplidogError(f"{root}: not a model folder or card ({CARD_NAME})")
            root = root.parent
        for card_file in _card_files(root):
            folder = card_file.parent
            key = str(folder.resolve())
            if key in found:
                continue
            try:
                found[key] = FoundModel(str(folder), card=read_card(folder))
            except DuplidogError as exc:
                found[key] = FoundModel(str(folder), error=str(exc))
    return sorted(found.values(), key=lambda m: (m.card.created if m.card else "", m.path))


def _channel_text(names: Sequence[str]) -> str:
    if not names:
        return "?"
    return "".join(names) if all(len(n) == 1 for n in names) else ",".join(names)


def card_channels(card: ModelCard) -> str:
    return f"{_channel_text(card.input_channels)}>{_channel_text(card.output_channels)}"


def _created(card: ModelCard) -> str:
    return card.created[:16].replace("T", " ") if card.created else "?"


def _number(value: Optional[float], digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(models: Sequence[FoundModel]) -> str:
    """A plain-text table, one row per model: id, shot, created, preset, channels, val PSNR, steps, path."""
    if not models:
        return "no models found"
    rows = []
    for found in models:
        card = found.card
        if card is None:
            rows.append(["?", "?", "?", "?", "?", "-", "-", f"{found.path}  (unreadable: {found.error})"])
            continue
        preset = f"{card.network.get('arch', '?')}/{card.network.get('preset', '?')}"
        rows.append([card.id, str(card.shot or "?"), _created(card), preset, card_channels(card),
                     _number(card.validation_psnr), "-" if card.steps is None else str(card.steps), found.path])
    widths = [max(len(TABLE_COLUMNS[i]), *(len(r[i]) for r in rows)) for i in range(len(TABLE_COLUMNS) - 1)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(TABLE_COLUMNS, widths)) + "  " + TABLE_COLUMNS[-1]]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
    return "\n".join(lines)


# -- one model in full ---------------------------------------------------------------------------------------


def _weights_status(folder: Path, card: ModelCard) -> str:
    path = folder / card.weights.file
    if not path.is_file():
        return f"{path.name}: MISSING"
    size = path.stat().st_size
    state = "checksum ok" if file_sha256(path) == card.weights.sha256 else "DAMAGED (SHA-256 differs from the card)"
    return f"{path.name}: {size / 1e6:.2f} MB, {card.weights.parameters} parameters, {state}"


def _describe_space(space: Dict[str, Any]) -> str:
    ocio = space.get("ocio") if isinstance(space.get("ocio"), dict) else {}
    named = (f"OpenColorIO {ocio.get('colorspace')!r} of config {ocio.get('config') or ocio.get('config_path') or '?'}, "
             if ocio.get("colorspace") else "")
    if space.get("shaper") == "asinh":
        return f"{space.get('name')} ({named}asinh shaper, softness {space.get('softness')})"
    return f"{space.get('name')} ({named}{space.get('shaper', 'identity')})"


def _fingerprint(value: Any) -> str:
    return "-" if not value else f"{str(value)[:16]}..."


def format_card(model_dir: Union[str, os.PathLike]) -> str:
    """A readable description of the model in ``model_dir``: what it is, how it was made, how good.

    Raises DuplidogError (naming the file) when the folder or card is missing or the card is not a
    duplidog card this version reads; reports missing or damaged weights in the text.
    """
    folder = Path(model_dir)
    card = read_card(folder)
    model, training, metrics = card.network, card.training, card.metrics
    validation = metrics.get("validation") or {}
    settings = {k: v for k, v in model.items() if k not in ("arch", "preset")}
    optional = lambda value: "?" if value is None else value  # noqa: E731
    lines = [
        f"model {card.id}  ({folder})",
        f"  shot:            {card.shot or '?'}",
        f"  created:         {card.created}",
        f"  network:         {model.get('arch', '?')} preset {model.get('preset', '?')}",
        f"  settings:        {json.dumps(settings, sort_keys=True)}",
        f"  scale:           {card.scale}   size multiple: {optional(card.size_multiple)}   "
        f"reach: {optional(card.reach)} px",
        f"  frames read:     {2 * card.temporal_frames + 1} (t-N..t+N, temporal_frames {card.temporal_frames})",
        f"  channels:        {_channel_text(card.input_channels)} -> {_channel_text(card.output_channels)}"
        + (f"   passthrough: {_channel_text(card.passthrough_channels)}" if card.passthrough_channels else ""),
        f"  working space:   {_describe_space(card.colorspace)}",
        f"  weights:         {_weights_status(folder, card)}",
        "training",
        f"  steps:           {optional(card.steps)}"
        + (f" (stopped by {training['stopped_by']})" if training.get("stopped_by") else ""),
        f"  device:          {training.get('device', '?')} {training.get('precision', '')}".rstrip(),
        f"  tiles:           {training.get('pool_tiles', '?')} of {training.get('tile_size', '?')} px, "
        f"border {training.get('border', '?')}",
        f"  keyframes:       train {training.get('train_frames', '?')}, "
        f"validation {training.get('validation_frames', '?')}",
        f"  keyframe print:  {_fingerprint(training.get('keyframe_fingerprint'))}",
        f"  pool print:      {_fingerprint(training.get('pool_fingerprint'))}",
        f"  started from:    {training.get('init_from') or ('scratch' if training else '?')}",
        f"  seed:            {training.get('seed', '?')}",
        "metrics",
        f"  validation PSNR: {_number(card.validation_psnr)} dB (identity {_number(validation.get('psnr_identity'))} dB), "
        f"SSIM {_number(validation.get('ssim'), 4)}",
        f"  best PSNR:       {_number(metrics.get('best_validation_psnr'))} dB at step "
        f"{metrics.get('best_validation_step', '?')}",
        f"  final loss:      {_number(metrics.get('loss'), 5)}",
        "versions:          " + ", ".join(f"{k} {v}" for k, v in card.versions.items()),
    ]
    if training.get("settings"):
        lines.append("train settings:    " + json.dumps(training["settings"], sort_keys=True, default=str))
    return "\n".join(lines)
