"""Stopping a training run between steps: the signal handlers, and the error a run stopped by one raises.

A signal only raises a flag (``StopRequest``); the loop looks at it before each step, writes a checkpoint
and raises ``TrainingInterrupted``, so the job exits non-zero and a rerun resumes where it stopped.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any, Dict, Optional

from duplidog.errors import DuplidogError

log = logging.getLogger(__name__)


class TrainingInterrupted(DuplidogError):
    """SIGTERM, SIGINT or SIGHUP arrived: the step was finished and a checkpoint written; rerun to resume."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


class StopRequest:
    """SIGTERM/SIGINT/SIGHUP handlers that only raise a flag, so the loop can stop between steps.

    SIGHUP (the terminal that started the run closed) is a request to stop like the others, not a
    reason to lose the steps since the last checkpoint.

    A second signal while the first is being handled interrupts at once (KeyboardInterrupt), unless it
    comes within ``REPEAT_SECONDS`` of the first: a launcher (torchrun, srun) passes on the signal that
    its process group or job step has already delivered, and that copy is the same request. Handlers
    are installed only from the main thread (Python allows nothing else) and restored afterwards.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT) + ((signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ())
    REPEAT_SECONDS = 2.0

    def __init__(self):
        self.signum: Optional[int] = None
        self._received = 0.0
        self._previous: Dict[int, Any] = {}

    def _handle(self, signum, _frame) -> None:
        if self.signum is not None:
            if time.monotonic() - self._received < self.REPEAT_SECONDS:
                return
            raise KeyboardInterrupt
        self.signum, self._received = signum, time.monotonic()
        log.warning("%s received: finishing this step, writing a checkpoint, then stopping",
                    signal.Signals(signum).name)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
