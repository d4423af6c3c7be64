"""Frame sequences: ``plate.%04d.exr``, ``plate.####.exr`` and ``plate.@.exr`` patterns, frame ranges.

A pattern has exactly one frame-number field. ``%04d`` and ``####`` pad to four digits (``%d`` and
``#`` to none); ``@`` is one digit of padding per ``@`` (``@@@@`` is four), as in Nuke and Houdini.
Frames wider than the padding are written in full (``%04d`` of 12345 is ``12345``), and when scanning
the disk a file only matches if its number is written exactly as the pattern would write it, so
``plate.1001.exr`` and ``plate.01001.exr`` are never mistaken for one another.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from duplidog.errors import DuplidogError

_FIELD = re.compile(r"%0?(\d*)d|#+|@+")


@dataclass(frozen=True)
class FramePattern:
    """A path pattern with one frame-number field, e.g. ``plates/sh010/plate.%04d.exr``."""

    pattern: str

    def __post_init__(self) -> None:
        fields = list(_FIELD.finditer(self.pattern))
        if len(fields) != 1:
            raise DuplidogError(
                f"{self.pattern}: a frame pattern needs exactly one frame field (%04d, #### or @), "
                f"found {len(fields)}"
            )

    @property
    def _field(self) -> re.Match:
        return _FIELD.search(self.pattern)

    @property
    def padding(self) -> int:
        field = self._field.group(0)
        if field.startswith("%"):
            return int(self._field.group(1) or 0)
        if field.startswith("#") and len(field) == 1:
            return 4  # a single '#' means four digits in Nuke's convention
        return len(field)

    @property
    def extension(self) -> str:
        """The file extension without the dot, lower case (``exr``)."""
        return Path(self.pattern).suffix.lstrip(".").lower()

    def path(self, frame: int) -> str:
        """The file name of one frame."""
        field = self._field
        number = f"{frame:0{self.padding}d}" if frame >= 0 else f"-{-frame:0{self.padding}d}"
        return self.pattern[: field.start()] + number + self.pattern[field.end():]

    def existing_frames(self) -> list[int]:
        """Frame numbers whose files exist, sorted. Reads the directory once; never opens files."""
        field = self._field
        directory, _, _ = self.pattern[: field.start()].rpartition("/")
        head = self.pattern[len(directory) + 1 if directory else 0: field.start()]
        tail = self.pattern[field.end():]
        if "/" in tail:
            raise DuplidogError(f"{self.pattern}: the frame field must be in the file name, not a folder")
        try:
            names = os.listdir(directory or ".")
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise DuplidogError(f"{directory}: cannot list the folder ({exc.strerror})") from None
        number = re.compile(re.escape(head) + r"(-?\d+)" + re.escape(tail) + r"\Z")
        frames = []
        for name in names:
            m = number.match(name)
            if m and self.path(int(m.group(1))).endswith("/" + name if directory else name):
                frames.append(int(m.group(1)))
        return sorted(frames)


def parse_frame_range(text: str | int | None) -> list[int] | None:
    """``"1001-1010,1020"`` -> [1001, ..., 1010, 1020]; ``"1001-1100x5"`` steps by 5; None stays None."""
    if text is None or text == "":
        return None
    if isinstance(text, int):
        return [text]
    frames: set[int] = set()
    for part in str(text).replace(" ", "").split(","):
        m = re.fullmatch(r"(-?\d+)(?:-(-?\d+)(?:x(\d+))?)?", part)
        if not m:
            raise DuplidogError(f"frame range {text!r}: cannot read {part!r} (expected e.g. 1001-1100,1120)")
        first = int(m.group(1))
        last = int(m.group(2)) if m.group(2) is not None else first
        step = int(m.group(3) or 1)
        if last < first or step < 1:
            raise DuplidogError(f"frame range {text!r}: {part!r} runs backwards or has a zero step")
        frames.update(range(first, last + 1, step))
    return sorted(frames)


def format_frame_list(frames: list[int], limit: int = 12) -> str:
    """Compact human form for messages: [1001, 1002, 1003, 1007] -> '1001-1003, 1007'."""
    runs: list[str] = []
    frames = sorted(frames)
    i = 0
    while i < len(frames):
        j = i
        while j + 1 < len(frames) and frames[j + 1] == frames[j] + 1:
            j += 1
        runs.append(str(frames[i]) if i == j else f"{frames[i]}-{frames[j]}")
        i = j + 1
    text = ", ".join(runs[:limit])
    return text + (f" and {len(runs) - limit} more" if len(runs) > limit else "")
