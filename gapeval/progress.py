"""Progress lines for long ``gapeval`` jobs: one line per stage on stderr, so no stage is silent.

Stages that loop over many items (scoring pairs, the gap image analysis, report grids) show a tqdm bar with an ETA;
the stages between them print a line when they start, with the time elapsed since the job began.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Stages:
    """``prog [k/n mm:ss] what`` when a stage starts, and ``prog: done in S s`` from :meth:`done`.

    Args:
        prog: prefix of every line (e.g. ``"gapeval score"``).
        total: number of stages announced (shown as ``k/n``).
        enabled: print nothing when ``False`` (``--no-progress``).
        stream: where to print (default ``sys.stderr``, read at call time so pytest's capture sees it).
    """

    def __init__(self, prog: str, total: int, *, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.prog, self.total, self.enabled, self.stream = prog, total, enabled, stream
        self.k = 0
        self.t0 = time.monotonic()

    def _print(self, text: str) -> None:
        if self.enabled:
            print(text, file=self.stream or sys.stderr, flush=True)

    def elapsed(self) -> float:
        """Seconds since the stages began."""
        return time.monotonic() - self.t0

    def __call__(self, what: str) -> None:
        """Announce the next stage."""
        self.k += 1
        s = int(self.elapsed())
        self._print(f"{self.prog} [{self.k}/{self.total} {s // 60:02d}:{s % 60:02d}] {what}")

    def done(self, what: str = "done") -> None:
        """The closing line with the total time."""
        self._print(f"{self.prog}: {what} in {self.elapsed():.1f} s")
