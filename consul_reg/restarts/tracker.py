"""What the restart watcher counts and decides, without a thread or a socket:
Nomad's check_restart for containers. Time is wall-clock seconds (Docker's
StartedAt is), always passed in, so tests drive it with a fake clock.

- Each counted check of a container (RestartPolicy.samples) is sampled once
  per its interval, from `grace` seconds after the container's last start.
  A sample that fails (critical; warning too unless ignore_warnings) adds one
  to that check's count, a passing one sets it back to 0; a check the agent
  does not hold for that very service is no result, nor is one that has not
  run since it was registered (critical or its initial status, no output),
  nor any check of a service in maintenance (the daemon's drain of a
  container being stopped, or an operator's), nor a check that mirrors
  Docker's health while Docker says `starting`. A read that fails sets every
  count back to 0 (the samples around an agent outage are not in a row).
- One read per round, at least READ_GAP seconds apart, takes every sample due.
- Once one check has failed `limit` samples in a row, the container is
  restarted, unless a restart of it is in flight or its backoff holds it.
  A start this tracker did not ask for (by anyone: an operator, Docker's
  restart policy, another daemon, or this daemon's restart that a previous
  run of it asked for) is held as at a first sight (below).
- Backoff: after the k-th restart in a row the next one may come no sooner
  than min(backoff x 2^(k-1), backoff_max) after it is over (the container's
  new start). The row ends (the delay starts again from `backoff`) once
  every counted check has passed for as long as the current delay.
- Across a daemon restart: the row is memory, but Docker's state is not. A
  container first seen that has run before (State.FinishedAt set) and started
  less than backoff_max ago may be in a row this daemon cannot see (its own
  restart, or its previous run's): it is held until backoff_max after that
  start, at the longest delay. A daemon restart never shortens a backoff.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from consul_reg.core.records import AgentCheck, RestartPolicy

READ_GAP = 1.0  # the least seconds between two reads of the agent (a container's check intervals set no pace)


@dataclass(frozen=True)
class Watched:
    """One container whose restarts are watched, as the last snapshot shows it:
    its services the agent holds as this daemon's, for this container, with a policy."""

    container_id: str
    name: str
    started_at: float  # State.StartedAt, seconds since the epoch
    ran_before: bool  # State.FinishedAt set: this start is not its first
    stop_timeout: float
    policies: tuple[tuple[str, RestartPolicy], ...]  # (service ID, its policy)
    health: str = ""  # Docker's health ("starting", "healthy", ...), "" without a HEALTHCHECK


@dataclass(frozen=True)
class Decision:
    """A restart to make now ("restart") or one the backoff holds back ("held", said once per hold)."""

    kind: str
    container: Watched
    service_id: str
    check_id: str
    status: str
    output: str
    failures: int
    in_a_row: int  # this restart's number in its row
    next_delay: float  # the least time before the next one ("restart"); "held": seconds left


@dataclass
class _State:
    container: Watched
    active: bool = True
    last_seen: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)  # check ID -> failed samples in a row
    next_sample: dict[str, float] = field(default_factory=dict)
    counting_from: float = 0.0  # no sample before (start + grace, or the end of our own restart + grace)
    in_a_row: int = 0  # restarts made in a row
    delay: float = 0.0  # the current least time between two restarts
    hold_until: float = 0.0
    held_said: bool = False
    passing_since: float | None = None
    in_flight: bool = False
    own_start_due: bool = False  # this tracker asked for a restart whose new start it has not seen yet


class Tracker:
    def __init__(self, backoff: float, backoff_max: float) -> None:
        self.backoff = backoff
        self.backoff_max = max(backoff_max, backoff)
        self._states: dict[str, _State] = {}
        self._last_read = -float("inf")

    def watch(self, containers: dict[str, Watched], now: float) -> None:
        """The containers watched from now on. One that left is kept (inactive) for
        backoff_max, so a restart that removes it for a moment keeps its row."""
        for container_id, gone in list(self._states.items()):
            if container_id not in containers:
                gone.active = False
                if now - gone.last_seen > self.backoff_max and not gone.in_flight:
                    del self._states[container_id]
        for container_id, container in containers.items():
            state = self._states.get(container_id)
            if state is None:
                state = self._states[container_id] = self._first_sight(container, now)
            elif container.started_at != state.container.started_at:  # started again (by us or anyone)
                state.counts, state.next_sample, state.passing_since = {}, {}, None
                state.counting_from = container.started_at + _grace(container)
                if state.own_start_due:  # the end of our own restart
                    state.own_start_due = False
                else:  # not ours: maybe in a row this tracker cannot see (a previous run's restart...)
                    self._hold_if_recent(state, container, now)
            state.container, state.active, state.last_seen = container, True, now

    def _first_sight(self, container: Watched, now: float) -> _State:
        state = _State(container, counting_from=container.started_at + _grace(container), last_seen=now)
        self._hold_if_recent(state, container, now)
        return state

    def _hold_if_recent(self, state: _State, container: Watched, now: float) -> None:
        """A start this tracker did not ask for, of a container that ran before, less than
        backoff_max ago: held until backoff_max after it, at the longest delay."""
        if container.ran_before and now - container.started_at < self.backoff_max:
            state.in_a_row = max(state.in_a_row, self._longest_row())
            state.delay = self.backoff_max
            state.hold_until = max(state.hold_until, container.started_at + self.backoff_max)
            state.held_said = False

    def _longest_row(self) -> int:
        row, delay = 1, self.backoff
        while delay < self.backoff_max:
            row, delay = row + 1, delay * 2
        return row

    def due(self, now: float) -> list[str]:
        """The check IDs to read now (none sooner than READ_GAP after the last read)."""
        if now < self._last_read + READ_GAP:
            return []
        return sorted({check_id for state in self._states.values() if self._sampled(state, now)
                       for _, policy in state.container.policies for check_id, _ in policy.samples
                       if now >= state.next_sample.get(check_id, state.counting_from)})

    @staticmethod
    def _sampled(state: _State, now: float) -> bool:
        return state.active and not state.in_flight and now >= state.counting_from

    def wake_in(self, now: float, idle: float) -> float:
        """Seconds until a sample is due (`idle` when none is)."""
        times = [max(state.counting_from, state.next_sample.get(check_id, state.counting_from))
                 for state in self._states.values() if state.active and not state.in_flight
                 for _, policy in state.container.policies for check_id, _ in policy.samples]
        soonest = min([idle, *(max(0.0, t - now) for t in times)])
        return max(soonest, self._last_read + READ_GAP - now)

    def services(self, check_ids: Collection[str]) -> list[str]:
        """The services whose maintenance a read of `check_ids` also asks for: theirs."""
        wanted = set(check_ids)
        return sorted({service_id for state in self._states.values() for service_id, policy in state.container.policies
                       if any(check_id in wanted for check_id, _ in policy.samples)})

    def read_failed(self, now: float) -> None:
        """The agent could not be read: samples before and after are not in a row."""
        self._last_read = now
        for state in self._states.values():
            state.counts, state.passing_since = {}, None

    def results(self, read: Mapping[str, AgentCheck], asked: list[str], now: float,
                maintenance: Collection[str] = frozenset()) -> list[Decision]:
        """Fold in the agent's answer to `asked` (due(now)) and the services it says are in
        maintenance; the decisions it leads to."""
        asked_ids = set(asked)
        self._last_read = now
        decisions = []
        for state in self._states.values():
            if not self._sampled(state, now):
                continue
            worst: tuple[int, str, RestartPolicy, AgentCheck] | None = None
            sampled = passing = 0
            for service_id, policy in state.container.policies:
                for check_id, every in policy.samples:
                    if check_id not in asked_ids or now < state.next_sample.get(check_id, state.counting_from):
                        continue
                    state.next_sample[check_id] = now + every
                    result = read.get(check_id)
                    if result is None or result.service_id != service_id:
                        continue  # not held for this service: no result (a container counts only its own checks)
                    if service_id in maintenance:
                        continue  # drained (being stopped) or an operator's: no result
                    if check_id in policy.health_mirrors and state.container.health == "starting":
                        continue  # Docker's own start period and retries decide, not a restart
                    if not result.output and result.status != "passing":
                        continue  # not run yet: the agent registers a check critical (or its initial status)
                    sampled += 1
                    if policy.fails(result.status):
                        count = state.counts[check_id] = state.counts.get(check_id, 0) + 1
                        if count >= policy.limit and (worst is None or count - policy.limit > worst[0]):
                            worst = (count - policy.limit, check_id, policy, result)
                    else:
                        state.counts[check_id] = 0
                        passing += 1
            decision = self._decide(state, worst, now) if worst else None
            if decision is not None:
                decisions.append(decision)
            self._row_end(state, sampled, passing, now)
        return decisions

    def _decide(self, state: _State, worst: tuple[int, str, RestartPolicy, AgentCheck], now: float
                ) -> Decision | None:
        _, check_id, policy, result = worst
        service_id = next(s for s, p in state.container.policies if p is policy)
        failures = state.counts[check_id]
        if now < state.hold_until:
            if state.held_said:
                return None
            state.held_said = True
            return Decision("held", state.container, service_id, check_id, result.status, result.output,
                            failures, state.in_a_row, state.hold_until - now)
        state.in_flight, state.held_said, state.own_start_due = True, False, True
        state.in_a_row += 1
        state.delay = min(self.backoff * 2 ** (state.in_a_row - 1), self.backoff_max)
        state.hold_until = now + state.delay
        return Decision("restart", state.container, service_id, check_id, result.status, result.output,
                        failures, state.in_a_row, state.delay)

    @staticmethod
    def _row_end(state: _State, sampled: int, passing: int, now: float) -> None:
        """Every counted check passing for the current delay ends the row of restarts."""
        if not sampled:
            return
        if passing < sampled or any(state.counts.values()):
            state.passing_since = None
            return
        if state.passing_since is None:
            state.passing_since = now
        if state.in_a_row and now - state.passing_since >= state.delay:
            state.in_a_row, state.delay, state.hold_until = 0, 0.0, 0.0

    def restarted(self, container_id: str, now: float, asked: bool = True) -> None:
        """A restart asked by a decision is over (done or failed; `asked`: Docker was asked
        for it, not refused by the last look): count again after the grace."""
        state = self._states.get(container_id)
        if state is None:
            return
        state.in_flight = False
        if not asked:  # no new start of ours will come: the next one seen is someone else's
            state.own_start_due = False
        # the delay runs from the end of the restart (the container's new start), as Docker's StartedAt shows it
        state.hold_until = max(state.hold_until, now + state.delay)
        state.counts, state.next_sample, state.passing_since = {}, {}, None
        state.counting_from = now + _grace(state.container)

    def row_of(self, container_id: str) -> tuple[int, float]:
        """(restarts in a row, no restart before): for tests and the log."""
        state = self._states.get(container_id)
        return (state.in_a_row, state.hold_until) if state else (0, 0.0)


def _grace(container: Watched) -> float:
    return max((policy.grace for _, policy in container.policies), default=0.0)
