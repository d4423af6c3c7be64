"""What a finished training run leaves: the model's card (how the model was made), result.json (how
the run went) and the one line that sums it up for the job's log and the command line.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict

if TYPE_CHECKING:
    from duplidog.train.loop import Trainer


def keyframe_fingerprint(manifest_path: str | os.PathLike, frames) -> str:
    """SHA-256 over the keyframes' source and target paths, sizes and modification times.

    Cheap (no pixels read) yet changes whenever a keyframe file is replaced or touched; the pool's
    own fingerprint covers the pixel content that training actually saw.
    """
    from duplidog.core.plan import read_manifest

    manifest = read_manifest(manifest_path)
    digest = hashlib.sha256()
    wanted = {int(f) for f in frames}
    for _, row in manifest.sort_values("frame").iterrows():
        if int(row["frame"]) not in wanted:
            continue
        for column in ("source", "target"):
            path = str(row.get(column, ""))
            digest.update(f"{row['frame']}:{column}:{path}".encode())
            if path and os.path.exists(path):
                info = os.stat(path)
                digest.update(f":{info.st_size}:{info.st_mtime_ns}".encode())
    return digest.hexdigest()


def model_card(trainer: "Trainer") -> Dict[str, Any]:
    """The card saved beside the weights (``modelstore.save_model``): the network, its channels and
    colour space, what inference needs to know, and how it was trained."""
    from duplidog import colour

    run, inputs, parts, progress = trainer.run_settings, trainer.inputs, trainer.parts, trainer.progress
    plan, model, shape, start = inputs.plan, parts.model, inputs.shape, trainer.start
    return {
        "model": model.config,
        "input_channels": list(plan.input_channels),
        "output_channels": list(plan.output_channels),
        "passthrough_channels": list(plan.passthrough_channels),
        "colorspace": colour.describe(plan.colorspace),
        "scale": int(getattr(model, "scale", 1)),
        "temporal_frames": int(getattr(model, "temporal_frames", 0)),
        "reach": int(model.reach),
        "size_multiple": int(model.size_multiple),
        "edge_context": shape.border,
        "training": {
            "shot": plan.shot,
            "steps": progress.step,
            "stopped_by": progress.stopped_by,
            "settings": {k: v for k, v in run.settings.items()},
            "seed": run.seed,
            "device": str(parts.device),
            "precision": parts.precision.name,
            "tile_size": int(shape.tile_size),
            "border": shape.border,
            "pool_tiles": int(shape.tiles),
            "pool_fingerprint": inputs.pool_hash,
            "keyframe_fingerprint": keyframe_fingerprint(
                inputs.manifest_path,
                list(plan.train_frames) + list(plan.validation_frames)),
            "train_frames": list(plan.train_frames),
            "validation_frames": [f.frame for f in trainer.frames],
            "init_from": trainer.init_from or None,
            "start": start.kind,
            "started_from": str(start.source) if start.source else None,
        },
        "metrics": {"loss": progress.loss, "validation": progress.validation,
                    "best_validation_psnr": progress.best_psnr if progress.best_step is not None else None,
                    "best_validation_step": progress.best_step},
    }


def run_result(trainer: "Trainer", minutes: float, checkpoint: Path) -> Dict[str, Any]:
    """How the run went (written to work_dir/result.json, returned by ``train``)."""
    progress, parts, validation = trainer.progress, trainer.parts, trainer.progress.validation
    return {
        "steps": progress.step,
        "target_steps": trainer.run_settings.length.total_steps,
        "stopped_by": progress.stopped_by,
        "resumed_from": progress.resumed_from,
        "start": trainer.start.kind,
        "loss": progress.loss,
        "validation_psnr": validation.get("psnr"),
        "validation_ssim": validation.get("ssim"),
        "validation_psnr_identity": validation.get("psnr_identity"),
        "best_validation_psnr": progress.best_psnr if progress.best_step is not None else None,
        "best_validation_step": progress.best_step,
        "minutes": round(minutes, 3),
        "device": str(parts.device),
        "precision": parts.precision.name,
        "data": trainer.data_choice.mode,
        "checkpoint": str(checkpoint),
        "model_dir": str(trainer.run_settings.model_dir),
    }


def summary_line(result: Dict[str, Any]) -> str:
    """One line on how training ended, for the job's log and the command line."""
    how = {"continue": ", trained further", "fine-tune": ", fine-tuned", "resume": ", resumed"}.get(result["start"], "")
    line = (f"train: done: {result['steps']} steps in {result['minutes']:.1f} min (stopped by "
            f"{result['stopped_by']}{how}); ")
    if result.get("validation_psnr") is None:
        line += "not validated (no keyframe to validate on); "
    else:
        line += f"validation PSNR {result['validation_psnr']:.2f} dB"
        if result.get("validation_psnr_identity") is not None:
            line += f" against {result['validation_psnr_identity']:.2f} dB doing nothing"
        line += "; "
    return line + f"model {result['model_dir']}"
