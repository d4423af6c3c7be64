"""Complete, atomic, resumable training state.

A checkpoint holds everything the next step depends on: the network, its weight average, AdamW's
moments, the loss scaler, the schedule, the step, the random states of python, numpy, torch and every
CUDA device, the data position (batch number; the data order itself is a function of it), the
configuration and the pool's fingerprint. Resuming from it continues the run exactly: on the CPU,
20 steps straight and 10 + resume + 10 give identical weights (a test checks).

Format: ``torch.save`` of plain tensors, numbers, strings, lists and dicts, read back with
``weights_only=True`` -- nothing is unpickled as code (nanoGPT's checkpoint misses the scaler and the
RNG; BasicSR's save retries and then says "just ignore it"; here a failed write is an error and never
leaves a half-written file, because it goes through ``duplidog.atomic``).

Files: ``checkpoints/step_00001234.pt``; the last ``keep`` and the best (highest validation PSNR)
are kept. A checkpoint is only resumed when the configuration that shapes training and the pool's
fingerprint both match; otherwise the old ones are moved to ``checkpoints/superseded/`` (the previous
superseded set is dropped) and training starts from scratch, saying why.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from duplidog.atomic import atomic_path
from duplidog.errors import DuplidogError

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
NAME = re.compile(r"^step_(\d{8,})\.pt$")

#: train settings that change how a run is executed or observed, not what it learns: a checkpoint
#: made under other values of these is still resumed.
OPERATIONAL_KEYS = frozenset({
    "max_minutes", "device", "precision", "compile", "num_workers", "prefetch_batches", "data_on_device",
    "device_memory_fraction", "progress", "log_every", "validate_every", "checkpoint_every",
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

def checkpoint_path(directory: Path, step: int) -> Path:
    return Path(directory) / f"step_{step:08d}.pt"


def list_checkpoints(directory: Path) -> List[Tuple[int, Path]]:
    """(step, path) of every checkpoint in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = NAME.match(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


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


def find_resumable(directory: Path, config: dict, pool_hash: str) -> Tuple[Optional[Dict[str, Any]], str]:
    """The newest checkpoint's state if it belongs to this configuration and pool, and a reason.

    Returns (state, why): state is None for a fresh start, and ``why`` says which (no checkpoint, which
    settings changed, the pool changed, or "resuming from ... at step N"). An unreadable newest
    checkpoint falls back to the one before it. Incompatible checkpoints are superseded.
    """
    found = list_checkpoints(directory)
    if not found:
        return None, "no checkpoint to resume: training from scratch"
    for step, path in reversed(found):
        try:
            state = load_checkpoint(path)
        except DuplidogError as exc:
            log.warning("%s; trying an older checkpoint", exc)
            continue
        if state.get("pool_fingerprint") != pool_hash:
            supersede(directory)
            return None, (f"the tile pool changed since {path.name} was written (pool fingerprint "
                          f"{str(state.get('pool_fingerprint'))[:12]} -> {pool_hash[:12]}): training from scratch")
        if state.get("config_fingerprint") != config_fingerprint(config):
            changed = changed_settings(json.loads(state.get("identity", "{}")), training_identity(config))
            supersede(directory)
            return None, (f"the training settings changed since {path.name} was written "
                          f"({', '.join(changed) or 'unknown'}): training from scratch")
        return state, f"resuming from {path.name} at step {step}"
    supersede(directory)
    return None, "no readable checkpoint: training from scratch"


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
