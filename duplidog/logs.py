"""Logging for pipeline jobs and the command line: one format, to a job's log file or the terminal."""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path

from duplidog.errors import DuplidogError

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_to(path: str | Path | None = None, level: int = logging.INFO) -> None:
    """Send logging (and stderr, where progress bars and warnings go) to ``path``, or the terminal.

    Snakemake gives each job its own log file; writing stderr there too keeps tracebacks and tqdm
    progress with the job they belong to.
    """
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        stream = open(path, "a", buffering=1, encoding="utf-8")
        sys.stderr = stream
        sys.excepthook = _user_errors_in_one_line
    logging.basicConfig(level=level, format=FORMAT, stream=sys.stderr, force=True)


def _user_errors_in_one_line(kind, error, trace) -> None:
    """A job's uncaught DuplidogError (or full disk) ends its log in one line, as the command line prints
    it (a traceback of duplidog's own frames says nothing the message does not); anything else is a bug
    and keeps its traceback."""
    from duplidog.atomic import environment_error

    clear = error if isinstance(error, DuplidogError) else environment_error(error)
    if clear is not None:
        print(f"duplidog: error: {clear}", file=sys.stderr, flush=True)
    else:
        traceback.print_exception(kind, error, trace, file=sys.stderr)
