"""Reading containers for the sync loop: the inspects of one batch overlapped
on the loop's I/O pool, and the containers Docker could not answer for,
looked at again on a backoff of their own.

Only Docker is called on the pool's workers; what they return is applied by
the loop's thread. Once dockerd did not answer at all (DockerUnreachable),
the inspects of the batch not started yet are not made; an error about one
container (dockerd answered) costs only that one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Generator, Mapping
from concurrent.futures import Executor
from typing import Any

from loguru import logger

from consul_reg.core.backoff import Backoff, Clock
from consul_reg.core.calls import Later
from consul_reg.core.errors import DockerUnavailable, DockerUnreachable
from consul_reg.sync.overlap import Calls, outcomes

NOT_FETCHED = object()  # no answer taken ahead: the loop inspects the container itself
WINDOW = 16  # inspects taken ahead of the loop at most


class Reader:
    def __init__(self, inspect: Callable[[str], dict[str, Any] | None], io: Executor | None,
                 retry_interval: float, clock: Clock) -> None:
        self.inspecting = Calls(inspect, (DockerUnavailable,), DockerUnreachable)
        self.io = io
        self.retry: set[str] = set()  # could not be read: looked at again on `backoff`
        # A clock of their own: another container read meanwhile must not reset it (the
        # retry would then wait for an unrelated message).
        self.backoff = Backoff(retry_interval, clock=clock)

    def answers(self, container_ids: list[str], pool: Executor | None = None,
                interrupt: Callable[[], bool] | None = None,
                early: Mapping[str, Later[dict[str, Any] | None]] | None = None
                ) -> Generator[tuple[str, Any], None, None]:
        """(container ID, its inspect answer) in the given order: a dict, None (gone),
        the DockerUnavailable raised, or NOT_FETCHED (one container, or no pool: the
        caller inspects it itself). Inspected WINDOW at a time, overlapped, while the
        caller builds the ones before: at most a window of answers is held at once
        (1,000 inspect answers held together were ~50 MB). `early`: inspects Docker's
        event thread already sent (sync/early.py), answered here in their turn. Once
        dockerd did not answer at all, the inspects not made yet count as failed with
        that error: the caller stops there (a full pass) or looks at each again later
        (none is lost)."""
        pool = pool or self.io
        early = early or {}
        if pool is None or len(container_ids) < 2:
            for container_id in container_ids:
                yield container_id, _answer(early[container_id]) if container_id in early else NOT_FETCHED
            return
        failure: DockerUnreachable | None = None
        for start in range(0, len(container_ids), WINDOW):
            window = container_ids[start:start + WINDOW]
            if failure is not None:
                for container_id in window:
                    yield container_id, failure
                continue
            # An early inspect is answered on the pool like the others: the window's own
            # inspects are on their way while it is awaited, never only after it.
            calls = self.inspecting if not early else Calls(
                lambda cid: early[cid].result() if cid in early else self.inspecting.call(cid),
                self.inspecting.errors, self.inspecting.fatal)
            for container_id, outcome in outcomes(calls, window, pool, interrupt):
                if isinstance(outcome.error, DockerUnreachable):
                    failure = failure or outcome.error
                yield container_id, (outcome.error or outcome.value) if outcome.tried else failure

    def retry_later(self, unread: list[tuple[str, DockerUnavailable]]) -> None:
        """Containers that could not be read (their last desire stays) are looked at
        again on the backoff: one step of it per batch, however many failed."""
        if unread:
            delay = self.backoff.failed()
            for container_id, error in unread:
                self.retry.add(container_id)
                logger.warning("{}; container {} looked at again in {:.1f}s", error, container_id[:12], delay)
        elif not self.retry:
            self.backoff.succeeded()

    def due_at(self) -> float | None:
        return self.backoff.retry_at if self.retry else None

    def ready(self) -> bool:
        return bool(self.retry) and self.backoff.ready()


def _answer(later: Later[dict[str, Any] | None]) -> Any:
    try:
        return later.result()
    except DockerUnavailable as error:
        return error


def listing_key(summary: dict[str, Any]) -> str:
    """A container's listing entry minus its "Status" text, which moves with time
    ("Up 5 minutes"), but with the health word it carries: while this key is
    unchanged, so is what the container registers. A digest of the entry as
    decoded (dockerd writes it in one order, maps sorted): another order could
    only cost one more inspect, never hide a change. Short, as 1,000 of them
    are kept."""
    status = str(summary.get("Status") or "")
    health = next((word for word in ("(healthy)", "(unhealthy)", "(health: starting)", "(Paused)")
                   if word in status), "")
    rest = repr([(k, v) for k, v in summary.items() if k != "Status"]).encode("utf-8", "backslashreplace")
    return hashlib.blake2b(rest, digest_size=16).hexdigest() + health
