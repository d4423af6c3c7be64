"""Complete, atomic, resumable training state.

A checkpoint holds everything the next step depends on: the network, its weight average, AdamW's
moments, the loss scaler, the schedule, the step, the random states of python, numpy, torch and every
CUDA device, the data position (batch number; the data order itself is a function of it), the
configuration and the pool's fingerprint. Resuming from it continues the run exactly: on the CPU,
20 steps straight and 10 + resume + 10 give identical weights (a test checks).

Format: ``torch.save`` of plain tensors, numbers, strings, lists and dicts, read back with
``weights_only=True`` -- nothing is unpickled as code. The scaler and the RNG are in it, so a resume is
exact; a failed write is an error and never leaves a half-written file, because it goes through
``duplidog.atomic``.

Files: ``checkpoints/step_00001234.pt``; the last ``keep`` and the best (highest validation PSNR)
are kept. ``find_start`` decides from them how the next run begins: resumed, continued (trained
further), fine-tuned (new keyframes) or from scratch, saying why; checkpoints that are not resumed are
moved to ``checkpoints/superseded/`` (the previous superseded set is dropped).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from duplidog.atomic import atomic_path
from duplidog.core.layout import checkpoint_path, list_checkpoints
from duplidog.errors import DuplidogError

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1

#: train settings that change how a run is executed or observed, not what it learns: a checkpoint
#: made under other values of these is still resumed.
OPERATIONAL_KEYS = frozenset({
    "max_minutes", "device", "precision", "compile", "num_workers", "prefetch_batches", "data_on_device",
    "device_memory_fraction", "progress", "progress_every", "log_every", "validate_every", "checkpoint_every",
    "keep_checkpoints", "activation_stats_every", "convergence_window", "validation_frames_max",
})


def training_identity(config: dict) -> dict:
    """The part of the configuration that decides the trained weights (the model and train sections)."""
    train = {k: v for k, v in config.get("train", {}).items() if k not in OPERATIONAL_KEYS}
    return {"model": config.get("model", {}), "train": train, "seed": config.get("seed")}


def config_fingerprint(config: dict) -> str:
    text = json.dumps(training_identity(config), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# -- random states ------------------------------------------------------------------------------------

def capture_rng_state() -> Dict[str, Any]:
    """Python, numpy, torch (CPU) and every CUDA device's generator, as plain data."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        states = state["cuda"][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(states)


# -- files ----------------------------------------------------------------------------------------------

def save_checkpoint(directory: Path, state: Dict[str, Any]) -> Path:
    """Write ``state`` (which holds ``step``) atomically as ``step_<step>.pt``; returns the path."""
    path = checkpoint_path(directory, int(state["step"]))
    state = {"format": CHECKPOINT_FORMAT, **state}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(path: Path) -> Dict[str, Any]:
    """Read a checkpoint without unpickling code; a damaged file is a DuplidogError naming it."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged or foreign file
        raise DuplidogError(f"{path}: unreadable training checkpoint ({str(exc).splitlines()[0]})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise DuplidogError(f"{path}: not a duplidog training checkpoint of format {CHECKPOINT_FORMAT}")
    return state


def prune_checkpoints(directory: Path, keep: int, best_step: Optional[int]) -> None:
    """Delete all but the newest ``keep`` checkpoints and the one at ``best_step``."""
    found = list_checkpoints(directory)
    newest = {step for step, _ in found[-max(1, keep):]}
    for step, path in found:
        if step not in newest and step != best_step:
            path.unlink(missing_ok=True)


def supersede(directory: Path) -> None:
    """Move the checkpoints of an incompatible earlier run to ``superseded/`` (one generation kept)."""
    directory = Path(directory)
    found = list_checkpoints(directory)
    if not found:
        return
    old = directory / "superseded"
    shutil.rmtree(old, ignore_errors=True)
    old.mkdir(parents=True)
    for _, path in found:
        path.rename(old / path.name)


@dataclass
class Start:
    """How a training run begins, from what, and why (``find_start``).

    kind: "fresh" (from scratch); "resume" (an interrupted run goes on exactly where it stopped);
    "continue" (the same run trained further: ``train.steps`` or ``train.max_minutes`` raised; the
    schedule gets a new segment from the checkpoint's step); "fine-tune" (the weights of the shot's
    current model start a new run: the pool changed, or ``train.init_from`` names the shot's own model).
    """

    kind: str
    why: str
    state: Optional[Dict[str, Any]] = None
    source: Optional[Path] = None


#: Settings added after checkpoints were first written, each with the value that trains what a checkpoint
#: without it trained: a checkpoint that lacks one is read as having that value, so after an upgrade a shot
#: resumes or fine-tunes rather than training from scratch.
ADDED_SETTINGS: Dict[str, Dict[str, Any]] = {"model": {"scale": 1, "temporal_frames": 0}}


def with_added_settings(identity: Dict[str, Any]) -> Dict[str, Any]:
    """A checkpoint's ``training_identity`` with the ``ADDED_SETTINGS`` it predates filled in."""
    filled = dict(identity)
    for section, added in ADDED_SETTINGS.items():
        if isinstance(filled.get(section), dict):
            filled[section] = {**added, **filled[section]}
    return filled


#: train settings whose change trains the same run further instead of starting it again.
LENGTH_KEYS = ("steps", "max_minutes")


def _length(config: dict) -> Dict[str, Any]:
    train = config.get("train", {})
    return {key: train.get(key) for key in LENGTH_KEYS}


def _state_config(state: Dict[str, Any]) -> dict:
    try:
        return json.loads(state.get("config") or "{}")
    except ValueError:
        return {}


def find_start(directory: Path, config: dict, pool_hash: str, start_over: bool = False,
               own_model: bool = False) -> Start:
    """Decide how training begins from the checkpoints in ``directory`` (see ``Start``).

    The newest readable checkpoint decides. Same settings and pool: "resume", or "continue" where only
    the run's length grew. A changed pool (new or changed keyframes) under the same network:
    "fine-tune" from the checkpoint's averaged weights, unless ``start_over``. Other changed settings:
    "fresh", or "fine-tune" when ``own_model`` (``train.init_from`` is the shot's own model). Checkpoints
    that are not resumed are moved to ``superseded/``, so the new run's steps never mix with theirs.
    """
    found = list_checkpoints(directory)
    if not found:
        return Start("fresh", "no checkpoint to resume: training from scratch")
    for step, path in reversed(found):
        try:
            state = load_checkpoint(path)
        except DuplidogError as exc:
            log.warning("%s; trying an older checkpoint", exc)
            continue
        break
    else:
        supersede(directory)
        return Start("fresh", "no readable checkpoint: training from scratch")

    old, new = with_added_settings(json.loads(state.get("identity", "{}"))), training_identity(config)
    changed = [key for key in changed_settings(old, new) if key != "train.init_from"]
    same_network = old.get("model") == new.get("model")
    fine_tune = same_network and not start_over
    if state.get("pool_fingerprint") != pool_hash:
        supersede(directory)
        if fine_tune:
            return Start("fine-tune", f"the tile pool changed since {path.name} was written (new or changed "
                         f"keyframes): fine-tuning the shot's model of step {step} (train.start_over: true "
                         f"trains from scratch)", state, path)
        return Start("fresh", f"the tile pool changed since {path.name} was written (pool fingerprint "
                     f"{str(state.get('pool_fingerprint'))[:12]} -> {pool_hash[:12]}): training from scratch")
    grown = _length(_state_config(state)) != _length(config)
    if changed == ["train.steps"]:
        steps = config.get("train", {}).get("steps")
        if steps is None or int(steps) > step:
            return Start("continue", f"train.steps raised to {steps}: continuing from {path.name} at step {step}",
                         state, path)
        supersede(directory)
        return Start("fresh", f"train.steps lowered to {steps}, below the step {step} of {path.name}: "
                     "training from scratch")
    if changed:
        supersede(directory)
        if own_model and fine_tune:
            return Start("fine-tune", f"the training settings changed since {path.name} was written "
                         f"({', '.join(changed)}): fine-tuning the shot's own model of step {step} "
                         "(train.init_from)", state, path)
        return Start("fresh", f"the training settings changed since {path.name} was written "
                     f"({', '.join(changed)}): training from scratch")
    if grown:
        return Start("continue", f"train.max_minutes changed to {config['train'].get('max_minutes')}: continuing "
                     f"from {path.name} at step {step}", state, path)
    return Start("resume", f"resuming from {path.name} at step {step}", state, path)


def changed_settings(old: Dict[str, Any], new: Dict[str, Any]) -> List[str]:
    """Dotted names of the settings that differ between two ``training_identity`` dicts."""
    keys = []
    for section in sorted(set(old) | set(new)):
        a, b = old.get(section), new.get(section)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += [f"{section}.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            keys.append(section)
    return keys
