"""Progress of long steps: a redrawn bar on a terminal, plain periodic lines in a log, nothing when disabled."""

from __future__ import annotations

import sys
import time


class _Lines:
    """Progress as plain lines, at most one per `every` seconds: a log file gets no carriage-return redraws."""

    def __init__(self, total: int, desc: str, unit: str, every: float = 30.0):
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.n, self.start, self.last = 0, time.monotonic(), time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self.last >= self.every:
            self.last = time.monotonic()
            self._line()

    def _line(self) -> None:
        elapsed = time.monotonic() - self.start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.n) / rate if rate > 0 else float("nan")
        print(
            f"{self.desc}: {self.n:,}/{self.total:,} {self.unit} ({rate:,.1f} {self.unit}/s, ETA {eta:,.0f} s)",
            flush=True,
        )

    def close(self) -> None:
        if self.n:
            self._line()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Silent(_Lines):
    def update(self, n: int = 1) -> None:
        self.n += n

    def close(self) -> None:
        pass


def progress_bar(total: int, desc: str, unit: str, enabled: bool = True):
    """A tqdm bar (images/s and ETA) on a terminal; plain periodic lines otherwise; nothing when disabled."""
    if not enabled:
        return _Silent(total, desc, unit)
    if not sys.stderr.isatty():
        return _Lines(total, desc, unit)
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, smoothing=0.05)
