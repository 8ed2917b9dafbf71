"""Cost of long work (training, evaluation): wall time and peak resident memory of each stage, stage after stage."""

from __future__ import annotations

import os
import resource
import threading
import time
from types import TracebackType

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    """This process's resident set size now (Linux /proc), else its peak so far (getrusage)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class StageMeter:
    """Samples this process's RSS every `interval` seconds on a thread; `lap(name)` closes the stage that began at
    the previous lap (or at entry) with its wall time and peak RSS.

    >>> with StageMeter() as meter:
    ...     meter.lap("als")
    >>> sorted(meter.stages["als"])
    ['peak_rss_mb', 's']
    """

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.stages: dict[str, dict[str, float]] = {}
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._start = time.perf_counter()
        self._peak = rss_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(self.interval):
            now = rss_bytes()
            with self._lock:
                self._peak = max(self._peak, now)

    def __enter__(self) -> StageMeter:
        self._start, self._peak = time.perf_counter(), rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._done.set()
        self._thread.join()

    def lap(self, name: str) -> None:
        now, rss = time.perf_counter(), rss_bytes()
        with self._lock:
            peak, self._peak = max(self._peak, rss), rss
        self.stages[name] = {"s": round(now - self._start, 2), "peak_rss_mb": round(peak / 2**20, 1)}
        self._start = now
