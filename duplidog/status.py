"""Where each shot stands, read from the files its stages leave under ``results/<shot>/``.

A TD running a batch of shots asks two questions: "how far is each one" while it runs, and "what did
it deliver" when it ends. Both are answered from the stages' own outputs -- the plan, the pool, the
checkpoints, the model card, the output frames and the assemble summary -- so nothing extra has to
be written or kept in step, and a shot run by hand (the ``duplidog`` stage commands) reads the same.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, List, Optional

from duplidog.core.card import ModelCard, read_card
from duplidog.core.layout import ShotLayout, list_checkpoints
from duplidog.core.plan import Plan, read_plan
from duplidog.errors import DuplidogError

#: The stages in pipeline order, each named by what its finished output says.
STAGES = ("not started", "ingested", "pooled", "training", "trained", "inferring", "delivered")


@dataclass
class ShotStatus:
    shot: str
    stage: str
    frames: int = 0
    delivered: int = 0
    steps: Optional[int] = None
    target_steps: Optional[int] = None
    validation_psnr: Optional[float] = None
    nothing_psnr: Optional[float] = None
    minutes: Optional[float] = None
    model: Optional[str] = None
    output: Optional[str] = None
    contact_sheet: Optional[str] = None
    stopped_by: Optional[str] = None
    #: The keyframe whose worst 32x32 block is poorest (assemble's summary.json): frame, PSNR, held out.
    worst_block: Optional[dict] = None
    warnings: List[str] = field(default_factory=list)


def _json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _card(model_dir: Path) -> Optional[ModelCard]:
    """The model's card, or None while there is none (or none this version reads)."""
    try:
        return read_card(model_dir)
    except DuplidogError:
        return None


def _plan(path: Path) -> Optional[Plan]:
    try:
        return read_plan(path)
    except (OSError, DuplidogError):
        return None


def _newest_checkpoint_step(directory: Path) -> Optional[int]:
    found = list_checkpoints(directory)
    return found[-1][0] if found else None


def _output_pattern(plan: Plan) -> Optional[str]:
    """The plan's output, or (a shot that names none) the contract's default."""
    from duplidog.core.layout import shot_output_pattern

    if not plan.output and not plan.source:
        return None
    return shot_output_pattern({"output": plan.output, "source": plan.source, "shot": plan.shot})


def _delivered(plan: Plan, frames: List[int], run_dir: Path) -> int:
    """Output frames on disk (a relative pattern is taken from ``run_dir``, where the run was started)."""
    from duplidog.sequence import FramePattern

    output = _output_pattern(plan)
    if output is None:
        return 0
    pattern = FramePattern(output if os.path.isabs(output) else str(run_dir / output))
    return sum(os.path.isfile(pattern.path(frame)) for frame in frames)


def shot_status(shot_dir: str | os.PathLike) -> ShotStatus:
    """The status of the shot whose results are in ``shot_dir`` (``results/<shot>``)."""
    root = Path(shot_dir)
    layout = ShotLayout(root.parent, root.name)
    status = ShotStatus(shot=root.name, stage="not started")
    plan = _plan(layout.plan)
    if plan is None:
        return status
    frames = [int(f) for f in plan.frames]
    status.frames, status.stage = len(frames), "ingested"
    if (layout.pool / "zarr.json").is_file():
        status.stage = "pooled"
    step = _newest_checkpoint_step(layout.train.checkpoints)
    if step is not None:
        status.stage, status.steps = "training", step
    result = _json(layout.train.result)
    card = _card(layout.model_dir)
    if card is not None:
        status.stage, status.model = "trained", str(layout.model_dir)
        status.steps = card.training.get("steps", status.steps)
        validation = card.metrics.get("validation") or {}
        status.validation_psnr = validation.get("psnr")
        status.nothing_psnr = validation.get("psnr_identity")
        if result is not None:
            status.minutes, status.target_steps = result.get("minutes"), result.get("target_steps")
            status.stopped_by = result.get("stopped_by")
        status.delivered = _delivered(plan, frames, root.parent.parent)
        status.output = _output_pattern(plan)
        if status.delivered:
            status.stage = "inferring"
        summary = _json(layout.summary)
        if summary is not None and status.delivered == status.frames:
            status.stage, status.contact_sheet = "delivered", summary.get("contact_sheet")
            status.warnings = [str(w) for w in summary.get("warnings") or []]
            errors = {frame: e for frame, e in (summary.get("keyframe_error") or {}).items()
                      if e.get("worst_block_psnr") is not None}
            if errors:
                frame = min(errors, key=lambda f: errors[f]["worst_block_psnr"])
                status.worst_block = {"frame": int(frame), "psnr": float(errors[frame]["worst_block_psnr"]),
                                      "held_out": bool(errors[frame].get("held_out"))}
    return status


def find_shots(results: str | os.PathLike = "results") -> List[ShotStatus]:
    """The status of every shot folder under ``results`` (those with an ingest plan or a model)."""
    root = Path(results)
    if not root.is_dir():
        return []
    layouts = [ShotLayout(root, d.name) for d in sorted(root.iterdir()) if d.is_dir()]
    return [shot_status(layout.root) for layout in layouts
            if layout.plan.is_file() or layout.model_card.is_file()]


def _psnr(status: ShotStatus) -> str:
    if status.validation_psnr is None:
        return "-"
    text = f"{status.validation_psnr:.2f} dB"
    return text + (f" (nothing {status.nothing_psnr:.2f})" if status.nothing_psnr is not None else "")


def format_table(statuses: Iterable[ShotStatus]) -> str:
    """One row per shot: stage, training steps, validation PSNR against doing nothing, frames delivered."""
    rows = [("shot", "stage", "steps", "validation PSNR", "frames")]
    for s in statuses:
        steps = "-" if s.steps is None else str(s.steps)
        rows.append((s.shot, s.stage, steps, _psnr(s), f"{s.delivered}/{s.frames}"))
    if len(rows) == 1:
        return "no shots found"
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def report_figures(status: ShotStatus) -> dict:
    """A shot's figures as short texts for the report's opening page (``report/workflow.rst``): validation
    PSNR against doing nothing, steps, minutes, the worst block, warnings, frames delivered. A figure
    the shot has not reached yet reads "-", and ``note`` says how far it is."""
    gain = ""
    if status.validation_psnr is not None and status.nothing_psnr is not None:
        gain = f", {status.validation_psnr - status.nothing_psnr:+.2f} dB"
    psnr = ("-" if status.validation_psnr is None else
            f"{status.validation_psnr:.2f} dB (doing nothing {status.nothing_psnr:.2f} dB{gain})"
            if status.nothing_psnr is not None else f"{status.validation_psnr:.2f} dB")
    if status.validation_psnr is None and status.stage in ("trained", "inferring", "delivered"):
        psnr = "not validated"
    steps = "-" if status.steps is None else str(status.steps)
    if status.steps is not None and status.target_steps:
        steps += f" of {status.target_steps}"
    if status.steps is not None and status.stopped_by and status.stopped_by != "steps":
        steps += f" (stopped by {status.stopped_by})"
    worst = "-"
    if status.worst_block is not None:
        block = status.worst_block
        worst = f"{block['psnr']:.1f} dB (frame {block['frame']}{', held out' if block['held_out'] else ''})"
    notes = {"not started": f"not run yet (nothing under results/{status.shot})",
             "ingested": "ingested; not trained yet", "pooled": "tile pool built; not trained yet",
             "training": "training, or stopped part way", "trained": "trained; no frame delivered yet",
             "inferring": "delivering frames", "delivered": "delivered"}
    return {
        "shot": status.shot,
        "stage": status.stage,
        "note": notes.get(status.stage, status.stage),
        "psnr": psnr,
        "steps": steps,
        "minutes": "-" if status.minutes is None else f"{status.minutes:.1f}",
        "worst_block": worst,
        "warnings": list(status.warnings),
        "frames": f"{status.delivered} of {status.frames}" if status.frames else "-",
        "output": status.output or "-",
    }


class ReportFigures:
    """The figures (``report_figures``) of the named shots, read from ``results`` each time they are
    iterated over: made when the workflow is read, read when the report is rendered, so a dry run or a
    job reads no results (and imports nothing heavy) and the report shows the results as they are then."""

    def __init__(self, shots: Iterable[str], results: str | os.PathLike = "results"):
        self.shots, self.results = list(shots), str(results)

    def __iter__(self):
        return iter([report_figures(shot_status(ShotLayout(self.results, shot).root)) for shot in self.shots])

    def __len__(self) -> int:
        return len(self.shots)


def summary_line(status: ShotStatus) -> str:
    """The line a finished run prints for a shot: what was delivered, where, and how good it looked."""
    parts = [f"{status.shot}: {status.stage}, {status.delivered} of {status.frames} frames"]
    if status.output:
        parts.append(f"to {status.output}")
    line = " ".join(parts)
    if status.steps is not None:
        minutes = f" in {status.minutes:.1f} min" if status.minutes is not None else ""
        line += f"; model {status.model} ({status.steps} steps{minutes}, validation PSNR {_psnr(status)})"
    if status.contact_sheet:
        line += f"; QC {status.contact_sheet}"
    return line
