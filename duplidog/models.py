"""Finding and describing trained models: ``duplidog models list`` and ``duplidog models show``.

A model is a folder holding ``model.json`` (its card) and ``model.safetensors`` (``duplidog.modelstore``);
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
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

from duplidog.core.previews import file_sha256
from duplidog.errors import DuplidogError

CARD_NAME = "model.json"
TABLE_COLUMNS = ("id", "shot", "created", "preset", "channels", "val PSNR", "steps", "path")


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


def find_models(paths: Sequence[Union[str, os.PathLike]]) -> List[Dict[str, Any]]:
    """The cards of every model found in or under ``paths`` (folders, e.g. ``["results"]``).

    Each card is returned as stored plus ``path`` (the model folder). A folder whose card cannot be
    read gives ``{"path": ..., "error": "<why>"}`` instead. Sorted by creation time, oldest first.
    Raises DuplidogError when a path does not exist.
    """
    from duplidog.modelstore import read_card

    found: Dict[str, Dict[str, Any]] = {}
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
                card = dict(read_card(folder))
            except DuplidogError as exc:
                card = {"error": str(exc)}
            card["path"] = str(folder)
            found[key] = card
    return sorted(found.values(), key=lambda c: (str(c.get("created", "")), c["path"]))


# -- reading a card's fields (cards from older trainers may lack some) ---------------------------------------


def _get(card: Dict[str, Any], *keys: str) -> Any:
    value: Any = card
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def card_shot(card: Dict[str, Any]) -> Optional[str]:
    return card.get("shot") or _get(card, "training", "shot")


def card_steps(card: Dict[str, Any]) -> Optional[int]:
    steps = _get(card, "training", "steps")
    return steps if steps is not None else card.get("steps")


def card_psnr(card: Dict[str, Any]) -> Optional[float]:
    for keys in (("metrics", "validation", "psnr"), ("metrics", "validation_psnr"), ("metrics", "psnr")):
        value = _get(card, *keys)
        if isinstance(value, (int, float)):
            return float(value)
    return None


def _channel_text(names: Any) -> str:
    if not names:
        return "?"
    names = [str(n) for n in names]
    return "".join(names) if all(len(n) == 1 for n in names) else ",".join(names)


def card_channels(card: Dict[str, Any]) -> str:
    return f"{_channel_text(card.get('input_channels'))}>{_channel_text(card.get('output_channels'))}"


def _created(card: Dict[str, Any]) -> str:
    text = str(card.get("created") or "")
    return text[:16].replace("T", " ") if text else "?"


def _number(value: Optional[float], digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(cards: Sequence[Dict[str, Any]]) -> str:
    """A plain-text table, one row per card: id, shot, created, preset, channels, val PSNR, steps, path."""
    if not cards:
        return "no models found"
    rows = []
    for card in cards:
        if "error" in card:
            rows.append(["?", "?", "?", "?", "?", "-", "-", f"{card['path']}  (unreadable: {card['error']})"])
            continue
        model = card.get("model") or {}
        preset = f"{model.get('arch', '?')}/{model.get('preset', '?')}"
        steps = card_steps(card)
        rows.append([str(card.get("id", "?")), str(card_shot(card) or "?"), _created(card), preset,
                     card_channels(card), _number(card_psnr(card)), "-" if steps is None else str(steps),
                     card["path"]])
    widths = [max(len(TABLE_COLUMNS[i]), *(len(r[i]) for r in rows)) for i in range(len(TABLE_COLUMNS) - 1)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(TABLE_COLUMNS, widths)) + "  " + TABLE_COLUMNS[-1]]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
    return "\n".join(lines)


# -- one model in full ---------------------------------------------------------------------------------------


def _weights_status(folder: Path, card: Dict[str, Any]) -> str:
    weights = card.get("weights") or {}
    path = folder / str(weights.get("file", "model.safetensors"))
    if not path.is_file():
        return f"{path.name}: MISSING"
    size = path.stat().st_size
    expected = weights.get("sha256")
    if not expected:
        return f"{path.name}: {size / 1e6:.2f} MB (no checksum on the card)"
    state = "checksum ok" if file_sha256(path) == expected else "DAMAGED (SHA-256 differs from the card)"
    return f"{path.name}: {size / 1e6:.2f} MB, {weights.get('parameters', '?')} parameters, {state}"


def _describe_space(space: Any) -> str:
    if not isinstance(space, dict):
        return "? (not on the card)"
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
    from duplidog.modelstore import read_card

    folder = Path(model_dir)
    card = read_card(folder)
    model = card.get("model") or {}
    training = card.get("training") or {}
    metrics = card.get("metrics") or {}
    validation = metrics.get("validation") or {}
    settings = {k: v for k, v in model.items() if k not in ("arch", "preset")}
    lines = [
        f"model {card.get('id', '?')}  ({folder})",
        f"  shot:            {card_shot(card) or '?'}",
        f"  created:         {card.get('created', '?')}",
        f"  network:         {model.get('arch', '?')} preset {model.get('preset', '?')}",
        f"  settings:        {json.dumps(settings, sort_keys=True)}",
        f"  scale:           {card.get('scale', '?')}   size multiple: {card.get('size_multiple', '?')}   "
        f"reach: {card.get('reach', '?')} px",
        f"  frames read:     {2 * int(card.get('temporal_frames', 0) or 0) + 1} (t-N..t+N, temporal_frames "
        f"{int(card.get('temporal_frames', 0) or 0)})",
        f"  channels:        {_channel_text(card.get('input_channels'))} -> "
        f"{_channel_text(card.get('output_channels'))}"
        + (f"   passthrough: {_channel_text(card.get('passthrough_channels'))}"
           if card.get("passthrough_channels") else ""),
        f"  working space:   {_describe_space(card.get('colorspace') or card.get('colour'))}",
        f"  weights:         {_weights_status(folder, card)}",
        "training",
        f"  steps:           {card_steps(card) if card_steps(card) is not None else '?'}"
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
        f"  validation PSNR: {_number(card_psnr(card))} dB (identity {_number(validation.get('psnr_identity'))} dB), "
        f"SSIM {_number(validation.get('ssim'), 4)}",
        f"  best PSNR:       {_number(metrics.get('best_validation_psnr'))} dB at step "
        f"{metrics.get('best_validation_step', '?')}",
        f"  final loss:      {_number(metrics.get('loss'), 5)}",
        "versions:          " + ", ".join(f"{k} {v}" for k, v in (card.get("versions") or {}).items()),
    ]
    if training.get("settings"):
        lines.append("train settings:    " + json.dumps(training["settings"], sort_keys=True, default=str))
    return "\n".join(lines)
