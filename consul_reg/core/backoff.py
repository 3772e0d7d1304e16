"""The one retry clock: capped exponential backoff, reset on success."""

from __future__ import annotations

import time
from typing import Callable

Clock = Callable[[], float]
DEFAULT_CAP_SECONDS = 30.0


class Backoff:
    """After a failure, wait `initial`, then twice as long each time, at most
    `cap`; a success resets it. Time comes from `clock` (monotonic seconds)."""

    def __init__(self, initial: float, cap: float = DEFAULT_CAP_SECONDS, clock: Clock = time.monotonic) -> None:
        self.initial = max(initial, 0.001)
        self.cap = max(cap, self.initial)
        self._clock = clock
        self._next = self.initial
        self.retry_at: float | None = None  # None: not failing

    @property
    def failing(self) -> bool:
        return self.retry_at is not None

    def failed(self) -> float:
        """Record a failure; returns the delay until the next try."""
        delay = self._next
        self.retry_at = self._clock() + delay
        self._next = min(delay * 2, self.cap)
        return delay

    def succeeded(self) -> None:
        self._next = self.initial
        self.retry_at = None

    def retry_now(self) -> None:
        """The other side is known to answer again: the next try need not wait
        (the delay after a further failure keeps growing)."""
        if self.retry_at is not None:
            self.retry_at = self._clock()

    def ready(self) -> bool:
        """True when not failing, or when the wait after the last failure is over."""
        return self.retry_at is None or self._clock() >= self.retry_at

    def due(self) -> bool:
        """True when failing and the wait is over: time to retry."""
        return self.retry_at is not None and self._clock() >= self.retry_at
