"""Progress of a long loop: a bar on a terminal, a line at a steady interval elsewhere (a log file,
a pipe, a job scheduler), so a redirected command is never silent for minutes."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

Item = TypeVar("Item")
INTERVAL_S = 30.0  # between lines off a terminal


class Progress:
    """Counts units of work; ``advance(n)`` after each part. On a terminal a tqdm bar (on
    stderr); elsewhere one line on stdout every ``interval`` seconds and none at the end (the
    command prints its own result)."""

    def __init__(
        self,
        label: str,
        total: int,
        unit: str,
        enabled: bool = True,
        interval: float = INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label, self.total, self.unit, self.done = label, total, unit, 0
        self.interval, self.clock = interval, clock
        self.bar = None
        self.start = self.last = clock()
        self.lines = enabled and not sys.stderr.isatty()
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=label, unit=unit, leave=False, dynamic_ncols=True)

    def advance(self, count: int = 1) -> None:
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
        elif self.lines and self.clock() - self.last >= self.interval:
            self.last = self.clock()
            print(self.line(), flush=True)

    def line(self) -> str:
        """ "LABEL: DONE/TOTAL UNIT (P%), ELAPSED, about LEFT left"."""
        elapsed = self.clock() - self.start
        share = self.done / self.total if self.total else 1.0
        left = elapsed / share - elapsed if share else 0.0
        return (
            f"{self.label}: {self.done:,}/{self.total:,} {self.unit} ({share:.0%}), "
            f"{_clock(elapsed)}, about {_clock(left)} left"
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _clock(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def tracked(
    items: Iterable[Item],
    label: str,
    total: int,
    unit: str,
    enabled: bool = True,
    size: Callable[[Item], int] = lambda _: 1,
) -> Iterator[Item]:
    """``items`` with their progress shown (``size(item)`` units each)."""
    progress = Progress(label, total, unit, enabled)
    try:
        for item in items:
            yield item
            progress.advance(size(item))
    finally:
        progress.close()
