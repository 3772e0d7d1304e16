"""When the loop must wake besides a message: a full pass due (-resync), a
full pass retried on Docker's backoff, an env-file poll, a container read
again shortly after its health changed. Owned by the loop's thread."""

from __future__ import annotations

from consul_reg.core.backoff import Backoff, Clock

# Podman sends health_status before the new status can be read (an inspect at the event
# saw the old one about 1 time in 12): such a container is read once more, shortly after.
HEALTH_RECHECK_SECONDS = 0.5
# A container whose health flaps is read again at most once in this long (besides the read at
# each of its events): the recheck only corrects a status read too early.
HEALTH_RECHECK_MIN_INTERVAL = 2.0
# A due resync waits for this long without container events (at most one more -resync
# interval): begun between two events of a burst, its listing alone would hold the next ones.
RESYNC_QUIET_SECONDS = 0.25


class Timers:
    def __init__(self, resync_seconds: float, env_file_interval: float, retry_interval: float, clock: Clock) -> None:
        self.resync_seconds = resync_seconds
        self.env_file_interval = env_file_interval
        self.clock = clock
        self.docker_backoff = Backoff(retry_interval, clock=clock)
        self.full_pending = ""  # a full pass was asked but Docker failed: retried on its backoff
        self.last_full_pass: float | None = None
        self.next_env_poll = 0.0
        self.health_rechecks: dict[str, float] = {}  # container ID -> when (one pending per container)
        self._rechecked: dict[str, float] = {}  # container ID -> when it was last read again (recent ones)
        self.quiet_from = 0.0  # no container event since before this: a due resync may begin

    def full_pass_due_at(self) -> float | None:
        """When the resync begins: when due, or once container events stop for a moment,
        at most one more interval later."""
        if self.resync_seconds > 0 and self.last_full_pass is not None:
            due = self.last_full_pass + self.resync_seconds
            return min(max(due, self.quiet_from), due + self.resync_seconds)
        return None

    def events_seen(self) -> None:
        """Container events in this batch: a due resync waits for a quiet moment."""
        self.quiet_from = self.clock() + RESYNC_QUIET_SECONDS

    def full_reason_due(self) -> str:
        if self.full_pending and self.docker_backoff.ready():
            return self.full_pending
        due_at = self.full_pass_due_at()
        if due_at is not None and self.clock() >= due_at:
            return "resync"
        return ""

    def resync_may_wait(self) -> bool:
        """Whether a due resync may still give way to container events: for at most one
        more -resync interval after it fell due (then it runs, whatever comes)."""
        if self.full_pending or self.resync_seconds <= 0 or self.last_full_pass is None:
            return False
        return self.clock() < self.last_full_pass + 2 * self.resync_seconds

    def docker_failed(self, reason: str) -> float:
        """A full pass failed on Docker: it is asked again after the returned delay."""
        self.full_pending = reason
        return self.docker_backoff.failed()

    def full_pass_done(self) -> None:
        self.docker_backoff.succeeded()
        self.full_pending = ""
        self.last_full_pass = self.clock()

    def take_rechecks(self, now: float, health_changed: frozenset[str]) -> set[str]:
        """The health rechecks due now; each health_status event asks for one, at least
        HEALTH_RECHECK_SECONDS after it and HEALTH_RECHECK_MIN_INTERVAL after the
        container's last (a pending one moves later, never earlier: one per container)."""
        due = {cid for cid, at in self.health_rechecks.items() if at <= now}
        for container_id in due:
            del self.health_rechecks[container_id]
            self._rechecked[container_id] = now
        self._rechecked = {cid: at for cid, at in self._rechecked.items() if at + HEALTH_RECHECK_MIN_INTERVAL > now}
        for container_id in health_changed:
            at = max(now + HEALTH_RECHECK_SECONDS, self._rechecked.get(container_id, -HEALTH_RECHECK_MIN_INTERVAL)
                     + HEALTH_RECHECK_MIN_INTERVAL)
            self.health_rechecks[container_id] = max(at, self.health_rechecks.get(container_id, at))
        return due

    def env_poll_due(self, force: bool) -> bool:
        if not force and self.clock() < self.next_env_poll:
            return False
        self.next_env_poll = self.clock() + self.env_file_interval
        return True

    def deadlines(self, polling_env_files: bool) -> list[float]:
        deadlines = [d for d in (self.full_pass_due_at(),) if d is not None]
        if self.full_pending and self.docker_backoff.retry_at is not None:
            deadlines.append(self.docker_backoff.retry_at)
        if polling_env_files:
            deadlines.append(self.next_env_poll)
        if self.health_rechecks:
            deadlines.append(min(self.health_rechecks.values()))
        return deadlines
