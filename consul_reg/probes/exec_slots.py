"""Which daemon-run exec checks may start now (the heartbeat scheduler's exec pool).

At most `per_container` execs of one container are in flight, and execs whose
timeout is long (above FAST_TIMEOUT_SECONDS, the default timeout of an exec
check) hold at most half the pool's workers. A container's command may run
until its timeout, as long as its interval (24 h): without the second rule two
containers with two such checks each hold every worker, and no other
container's exec check ever runs again. With it, the other half of the pool
only ever runs execs that end within FAST_TIMEOUT_SECONDS (their process group
killed at the timeout), so every short check gets its turn.

Not thread-safe: the scheduler calls it with its lock held.
"""

from __future__ import annotations

FAST_TIMEOUT_SECONDS = 10.0


class ExecSlots:
    def __init__(self, workers: int, per_container: int) -> None:
        self._per_container = max(1, per_container)
        self._slow_limit = max(1, workers // 2)
        self._by_container: dict[str, int] = {}  # container ID -> execs in flight
        self._slow = 0  # long-timeout execs in flight

    @staticmethod
    def _is_slow(timeout: float) -> bool:
        return timeout > FAST_TIMEOUT_SECONDS

    def available(self, container_id: str, timeout: float) -> bool:
        if self._by_container.get(container_id, 0) >= self._per_container:
            return False
        return not self._is_slow(timeout) or self._slow < self._slow_limit

    def take(self, container_id: str, timeout: float) -> None:
        self._by_container[container_id] = self._by_container.get(container_id, 0) + 1
        if self._is_slow(timeout):
            self._slow += 1

    def give_back(self, container_id: str, timeout: float) -> None:
        count = self._by_container.get(container_id, 1) - 1
        if count > 0:
            self._by_container[container_id] = count
        else:
            self._by_container.pop(container_id, None)
        if self._is_slow(timeout):
            self._slow = max(0, self._slow - 1)

    def in_flight(self, container_id: str) -> int:
        return self._by_container.get(container_id, 0)
