"""The time the service's use cases read: the system's, or a test's.

Every use case takes the time from ``ctx.clock`` (lease expiries, token lifetimes, study
deadlines, stale uploads), never from ``datetime.now()`` itself, so that the in-process tests
run leases out by advancing a :class:`FakeClock` instead of sleeping (as Vizier's datastore
tests do). The database's own column defaults and Optuna's timestamps stay on system time."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """What a use case asks of time."""

    def now(self) -> datetime:
        """The current time as naive UTC (what every timestamp column stores)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for intervals)."""
        ...


class SystemClock:
    """The machine's clock."""

    def now(self) -> datetime:
        return datetime.now(UTC).replace(tzinfo=None)

    def monotonic(self) -> float:
        return time.monotonic()


class FakeClock:
    """A clock that moves only when told: ``advance(seconds)``. Thread-safe."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime.now(UTC).replace(tzinfo=None)
        self._ticks = 0.0
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        with self._lock:
            return self._ticks

    def advance(self, seconds: float) -> None:
        """Move time on by ``seconds`` (at least 0)."""
        if seconds < 0:
            raise ValueError(f"a clock does not go back ({seconds} s)")
        with self._lock:
            self._now += timedelta(seconds=seconds)
            self._ticks += seconds
