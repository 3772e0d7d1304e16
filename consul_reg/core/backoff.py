"""The one retry clock: capped exponential backoff with jitter, reset on success."""

from __future__ import annotations

import random as _random
import time
from collections.abc import Callable

Clock = Callable[[], float]
Random = Callable[[], float]  # uniform in [0, 1), as random.random
DEFAULT_CAP_SECONDS = 30.0


class Backoff:
    """After a failure, wait about `initial`, then about twice as long each
    time, at most `cap`; a success resets it. Time comes from `clock`
    (monotonic seconds), the jitter from `random`.

    Jitter ("equal jitter"): the nominal delay doubles from `initial` up to
    `cap`, and each wait is drawn uniformly from (nominal/2, nominal]. Many
    hosts that lost a shared mirror or agent at the same moment then come back
    spread over half the nominal delay instead of all at once, while one
    host's successive waits still grow strictly below the cap ((d/2, d] and
    (d, 2d] do not overlap). Not "full jitter" (0, nominal]: a draw near 0
    retries a server that has just failed at once, so a failure is never
    retried sooner than half its nominal delay; and the nominal delay stays an
    upper bound, so every "retried within the retry interval" promise
    (-retry-interval, the cap) still holds. `random` returning 0.0 gives the
    nominal delays exactly (tests)."""

    def __init__(self, initial: float, cap: float = DEFAULT_CAP_SECONDS, clock: Clock = time.monotonic,
                 random: Random = _random.random) -> None:
        self.initial = max(initial, 0.001)
        self.cap = max(cap, self.initial)
        self._clock = clock
        self._random = random
        self._next = self.initial  # the nominal delay of the next failure
        self.retry_at: float | None = None  # None: not failing

    @property
    def failing(self) -> bool:
        return self.retry_at is not None

    def failed(self) -> float:
        """Record a failure; returns the delay until the next try."""
        nominal = self._next
        delay = nominal - nominal / 2 * self._random()
        self.retry_at = self._clock() + delay
        self._next = min(nominal * 2, self.cap)
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
