"""Whether a dependency (Docker, the agent) answers right now.

Written by whichever thread saw it last (the event reader, the sync loop, a
heartbeat sender, the agent watch), read by the status endpoint. Each write
replaces one immutable value, so readers never see half a state.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from consul_reg.core.backoff import Clock


@dataclass(frozen=True)
class Reach:
    ok: bool
    since: float  # monotonic seconds of the last change
    reason: str = ""


class Liveness:
    def __init__(self, name: str, clock: Clock = time.monotonic) -> None:
        self.name = name
        self._clock = clock
        self.state = Reach(False, clock(), "not reached yet")

    def ok(self) -> None:
        if not self.state.ok:
            self.state = Reach(True, self._clock())

    def failed(self, reason: str) -> None:
        if self.state.ok or self.state.reason != reason:
            self.state = Reach(False, self._clock() if self.state.ok else self.state.since, reason)
