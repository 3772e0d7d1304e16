"""Whether the agent keeps up with the TTL updates the daemon owes it.

The checks ask for a rate (the sum of 1/interval); the agent serves what it
can (a Consul 1.8.7 agent holding 2,000 services answers ~80-100 updates/s,
BENCHMARKS.md). Over each window the scheduler's sends are counted, with
how many went out more than LATE_SECONDS after they were due. When many
were late and the rate asked exceeds the rate served, heartbeats cannot all
arrive in time whatever the daemon does: one warning says so and names the
settings to change (repeated at most every REPEAT_SECONDS while it lasts),
and the metrics show both rates. A burst that the agent absorbs (every
check reporting at once after a restart, at a rate asked below what it
serves) is no overload.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from loguru import logger

from consul_reg.core.backoff import Clock

LATE_SECONDS = 1.0
WINDOW_SECONDS = 30.0
LATE_SHARE = 0.05  # more late sends than this in a window: something holds them back
REPEAT_SECONDS = 600.0


class LoadWatch:
    def __init__(self, clock: Clock, on_load: Callable[[float, float, bool], None] = lambda a, s, o: None,
                 window: float = WINDOW_SECONDS) -> None:
        self._clock = clock
        self._on_load = on_load
        self._window = window
        self._lock = threading.Lock()
        self._started = clock()
        self._sent = 0
        self._late = 0
        self._worst = 0.0
        self.overloaded = False
        self._warned_at: float | None = None

    def sent(self, lateness: float | None) -> None:
        """One update went out (any thread); `lateness` since it was due, when it was scheduled."""
        with self._lock:
            self._sent += 1
            if lateness is not None and lateness > LATE_SECONDS:
                self._late += 1
                self._worst = max(self._worst, lateness)

    def tick(self, asked_rate: Callable[[], float], checks: int) -> None:
        """On the scheduler's thread: at the end of each window, judge it."""
        now = self._clock()
        elapsed = now - self._started
        if elapsed < self._window:
            return
        with self._lock:
            sent, late, worst = self._sent, self._late, self._worst
            self._sent = self._late = 0
            self._worst = 0.0
        self._started = now
        asked, served = asked_rate(), sent / elapsed
        overloaded = sent > 0 and late > LATE_SHARE * sent and asked > 1.1 * served
        self._on_load(asked, served, overloaded)
        if overloaded and (not self.overloaded or self._warned_at is None or now - self._warned_at >= REPEAT_SECONDS):
            self._warned_at = now
            logger.warning(
                "the Consul agent served {:.0f} TTL updates/s over the last {:.0f}s but the {} checks this daemon "
                "reports ask for {:.0f}/s: {} of {} updates went out more than {:g}s late (up to {:.1f}s), so TTLs "
                "may expire. Lengthen SERVICE_HEARTBEAT_INTERVAL (with SERVICE_HEARTBEAT_TTL) on the containers "
                "that set it (default: a third of the 30s TTL), lengthen -resync (docker-health checks are "
                "re-asserted every -resync), or spread these services over more agents",
                served, elapsed, checks, asked, late, sent, LATE_SECONDS, worst)
        elif self.overloaded and not overloaded:
            logger.info("the Consul agent keeps up with the TTL updates again ({:.0f}/s asked, {:.0f}/s served)",
                        asked, served)
        self.overloaded = overloaded
