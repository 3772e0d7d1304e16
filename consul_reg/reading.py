"""Reading containers for the sync loop: the inspects of one batch overlapped
on the loop's I/O pool, and the containers Docker could not answer for,
looked at again on a backoff of their own.

Only Docker is called on the pool's workers; what they return is applied by
the loop's thread. Once dockerd did not answer at all (DockerUnreachable),
the inspects of the batch not started yet are not made; an error about one
container (dockerd answered) costs only that one.
"""

from __future__ import annotations

from concurrent.futures import Executor
from typing import Any, Callable

from loguru import logger

from consul_reg.backoff import Backoff, Clock
from consul_reg.docker_source import DockerUnavailable, DockerUnreachable
from consul_reg.overlap import Calls, outcomes

NOT_FETCHED = object()  # no answer taken ahead: the loop inspects the container itself


class Reader:
    def __init__(self, inspect: Callable[[str], dict[str, Any] | None], io: Executor | None,
                 retry_interval: float, clock: Clock) -> None:
        self.inspecting = Calls(inspect, (DockerUnavailable,), DockerUnreachable)
        self.io = io
        self.retry: set[str] = set()  # could not be read: looked at again on `backoff`
        # A clock of their own: another container read meanwhile must not reset it (the
        # retry would then wait for an unrelated message).
        self.backoff = Backoff(retry_interval, clock=clock)

    def inspect_all(self, container_ids: list[str], stop_at_failure: bool) -> dict[str, Any]:
        """Several containers' inspect answers, overlapped: each a dict, None (gone) or
        the DockerUnavailable raised. After dockerd did not answer, the inspects not
        made are left out with `stop_at_failure` (the caller stops at the failure), else
        they count as failed too (each such container is looked at again: none is lost).
        Nothing for a single container, nor without a pool."""
        if self.io is None or len(container_ids) < 2:
            return {}
        answers: dict[str, Any] = {}
        failure: DockerUnavailable | None = None
        for container_id, outcome in outcomes(self.inspecting, container_ids, self.io):
            if outcome.tried:
                answers[container_id] = outcome.error or outcome.value
                if isinstance(outcome.error, DockerUnreachable):
                    failure = failure or outcome.error
            elif not stop_at_failure:
                answers[container_id] = failure
        return answers

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
