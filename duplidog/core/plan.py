"""A shot's plan and manifest: what ingest found, in the two files every later stage reads.

``plan.json`` holds the shot as a whole (patterns, frames, keyframes and which are held out, colour
spaces, channels, size, pixel type); ``manifest.csv`` one row per frame (role, paths, size and channels
of each file). Ingest writes both; the pool, training, validation, inference and assemble read them
through this module, the plan as a typed ``Plan``. pandas and the colour module are imported where
they are used: the workflow imports this module (through ``duplidog.status``) whenever it builds the DAG.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, List, Optional, Sequence, Tuple, Union

from duplidog.atomic import atomic_path, atomic_write_json
from duplidog.errors import DuplidogError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

#: The two files' names in ingest's folder.
PLAN_FILE, MANIFEST_FILE = "plan.json", "manifest.csv"


@dataclass(frozen=True)
class Plan:
    """What ingest found of a shot (``plan.json``), fields in the file's order.

    A field a plan does not hold reads as its default: None where nothing is known (the plate's size,
    channels and file type then go unchecked), empty lists, no neighbour frames, scale 1.
    """

    shot: Optional[str] = None
    source: Optional[str] = None  # the plate's frame pattern
    target: Optional[str] = None  # the keyframes' frame pattern
    output: Optional[str] = None  # where the frames go (None: the run names it)
    frames: List[int] = field(default_factory=list)
    keyframes: List[int] = field(default_factory=list)
    train_frames: List[int] = field(default_factory=list)
    validation_frames: List[int] = field(default_factory=list)
    colorspace: Union[str, dict, None] = None  # the working space (duplidog.colour)
    # The OCIO spaces the plate's and keyframes' files are tagged with (None: untagged, or no OCIO
    # working space), and whether frames in another space than "colorspace" are converted on read.
    plate_colorspace: Optional[str] = None
    target_colorspace: Optional[str] = None
    convert_colorspace: bool = False
    input_channels: List[str] = field(default_factory=list)
    output_channels: List[str] = field(default_factory=list)
    passthrough_channels: List[str] = field(default_factory=list)
    width: Optional[int] = None
    height: Optional[int] = None
    scale: int = 1  # the keyframes' and the output's size over the plate's
    temporal_frames: int = 0  # neighbour frames on each side the network reads (duplidog.temporal)
    pixel_type: Optional[str] = None
    format_name: Optional[str] = None
    channel_names: Optional[List[str]] = None
    nonfinite: str = "error"
    seed: Optional[int] = None

    @classmethod
    def from_dict(cls, values: dict, origin: Any = "plan") -> "Plan":
        """The plan of a parsed ``plan.json``; ``origin`` names it in errors."""
        if not isinstance(values, dict):
            raise DuplidogError(f"{origin}: plan is not a JSON object")
        known = {f.name for f in fields(cls)}
        given = {key: value for key, value in values.items() if key in known and value is not None}
        for key in ("scale", "temporal_frames"):
            if key in given:
                given[key] = int(given[key] or 0)
        return cls(**given)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def ends(self) -> Tuple[int, int]:
        """The first and last frame of the shot (its frames and keyframes): where neighbours mirror."""
        frames = [int(f) for f in list(self.frames) + list(self.keyframes)]
        if not frames:
            raise ValueError("the plan names no frames")
        return min(frames), max(frames)

    def to_working(self, pixels: np.ndarray, channels: Sequence[str] | None, role: str, path: Any) -> np.ndarray:
        """A plate (``role`` 'plate') or keyframe ('target') frame read for the shot, in the plan's working
        OCIO space: converted when ingest found it in another one and ``ingest.convert_colorspace`` allowed it."""
        from duplidog import colour

        return colour.to_working(pixels, channels, getattr(self, f"{role}_colorspace"), self.colorspace,
                                 bool(self.convert_colorspace), path)


def write_plan(path: str | Path, plan: Plan) -> None:
    atomic_write_json(path, plan.to_dict())


def read_plan(path: str | Path) -> Plan:
    try:
        with open(path, encoding="utf-8") as f:
            values = json.load(f)
    except FileNotFoundError:
        raise DuplidogError(f"{path}: plan not found (run ingest first)") from None
    except json.JSONDecodeError as exc:
        raise DuplidogError(f"{path}: plan is not valid JSON ({exc})") from None
    return Plan.from_dict(values, origin=path)


def write_manifest(path: str | Path, rows: List[dict]) -> None:
    """One row per frame: frame, role, source, target, width, height, nchannels, channel_names,
    pixel_type, target_nchannels, target_channel_names."""
    import pandas as pd

    with atomic_path(path) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)


def read_manifest(path: str | Path) -> pd.DataFrame:
    import pandas as pd

    try:
        return pd.read_csv(path, keep_default_na=False)
    except FileNotFoundError:
        raise DuplidogError(f"{path}: manifest not found (run ingest first)") from None
