"""Where a shot's files go: ``results/<shot>/`` and every file the stages leave under it.

One object, ``ShotLayout``, names them all, so the workflow's rules, the command line, the status
table, the quality bench and the tests spell the layout once. The rules build wildcard paths from it
(``ShotLayout("results", "{shot}").plan`` is ``results/{shot}/ingest/plan.json``). Checkpoint files
are named here too, so that reading how far a shot's training got needs no training code.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Tuple

from duplidog.core.card import CARD_NAME, WEIGHTS_NAME
from duplidog.core.plan import MANIFEST_FILE, PLAN_FILE

#: A checkpoint's file name: ``step_<step, 8 digits or more>.pt``.
CHECKPOINT_NAME = re.compile(r"^step_(\d{8,})\.pt$")


def checkpoint_path(directory: str | os.PathLike, step: int) -> Path:
    """The checkpoint of ``step`` in ``directory``."""
    return Path(directory) / f"step_{step:08d}.pt"


def list_checkpoints(directory: str | os.PathLike) -> List[Tuple[int, Path]]:
    """(step, path) of every checkpoint in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = CHECKPOINT_NAME.match(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


@dataclass(frozen=True)
class TrainFiles:
    """What training keeps in its working folder (``results/<shot>/train``): checkpoints, the metrics
    and their plot, the validation contact sheets, and how the last run ended."""

    dir: Path

    def __post_init__(self):
        object.__setattr__(self, "dir", Path(self.dir))

    @property
    def checkpoints(self) -> Path:
        return self.dir / "checkpoints"

    @property
    def result(self) -> Path:
        return self.dir / "result.json"

    @property
    def metrics(self) -> Path:
        return self.dir / "metrics.csv"

    @property
    def loss_plot(self) -> Path:
        return self.dir / "loss.png"

    @property
    def tensorboard(self) -> Path:
        return self.dir / "tensorboard"

    def contact_sheet(self, step: int) -> Path:
        """The validation contact sheet drawn at ``step``."""
        return self.dir / f"contact_{step:08d}.png"

    def contact_sheets(self) -> List[Path]:
        """Every contact sheet on disk, the final one too."""
        return list(self.dir.glob("contact_*.png"))

    @property
    def final_contact_sheet(self) -> Path:
        """The last picture training draws: the final model on the validation keyframes."""
        return self.dir / "contact_final.png"


@dataclass(frozen=True)
class ShotLayout:
    """The files of shot ``shot`` under ``results`` (``results/<shot>/...``)."""

    results: Path
    shot: str

    def __post_init__(self):
        object.__setattr__(self, "results", Path(self.results))

    @classmethod
    def of(cls, path: str | os.PathLike) -> "ShotLayout":
        """The layout that ``path``, one of a stage's files (``<results>/<shot>/<stage>/<file>``), is in."""
        path = Path(path)
        return cls(path.parents[2], path.parents[1].name)

    @property
    def root(self) -> Path:
        return self.results / self.shot

    # -- ingest: what the shot is ---------------------------------------------------------------------
    @property
    def ingest_dir(self) -> Path:
        return self.root / "ingest"

    @property
    def manifest(self) -> Path:
        return self.ingest_dir / MANIFEST_FILE

    @property
    def plan(self) -> Path:
        return self.ingest_dir / PLAN_FILE

    # -- pool: the training tiles ---------------------------------------------------------------------
    @property
    def pool(self) -> Path:
        return self.root / "pool" / "pool.zarr"

    # -- the model: what training delivers -------------------------------------------------------------
    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    @property
    def model_weights(self) -> Path:
        return self.model_dir / WEIGHTS_NAME

    @property
    def model_card(self) -> Path:
        return self.model_dir / CARD_NAME

    # -- train: the working folder of training ----------------------------------------------------------
    @property
    def train(self) -> TrainFiles:
        return TrainFiles(self.root / "train")

    # -- infer: one summary per chunk of frames ---------------------------------------------------------
    @property
    def infer_dir(self) -> Path:
        return self.root / "infer"

    def chunk_summary(self, chunk: str) -> Path:
        """The timing summary of inference chunk ``chunk`` (its name, ``<first>-<last>``)."""
        return self.infer_dir / f"{chunk}.json"

    def chunk_summaries(self) -> List[Path]:
        """Every chunk summary on disk, sorted by name."""
        return sorted(self.infer_dir.glob("*.json"))

    # -- assemble: the delivery's proof ------------------------------------------------------------------
    @property
    def assemble_dir(self) -> Path:
        return self.root / "assemble"

    @property
    def checksums(self) -> Path:
        return self.assemble_dir / "checksums.tsv"

    @property
    def summary(self) -> Path:
        return self.assemble_dir / "summary.json"

    @property
    def contact_sheet(self) -> Path:
        return self.assemble_dir / "contact_sheet.png"

    # -- the output frames, when the shot names no output ----------------------------------------------
    def default_output(self, extension: str) -> str:
        """``results/<shot>/output/<shot>.%04d.<extension>``, the contract's default output pattern."""
        return f"{self.root / 'output' / self.shot}.%04d.{extension}"


def shot_output_pattern(config: dict, results: str | os.PathLike = "results") -> str:
    """The shot's output pattern: its ``output``, else the default under ``results`` with the source's
    extension."""
    from duplidog.sequence import FramePattern

    if config.get("output"):
        return config["output"]
    return ShotLayout(results, config["shot"]).default_output(FramePattern(config["source"]).extension)
