"""Notices the agent going away, coming back, or being replaced (a restart
gives a dev agent a new node ID, and it comes back empty), without waiting
for -resync: a cheap local read of /v1/agent/self every second while the
agent answers, four times a second while it does not, and at once when any
call to it failed (never sooner than 0.25 s after its last probe: a failed
probe rings the alarm too). Tells the sync loop through its inbox; never touches
the loop's state.

An agent that hangs (stopped, a paused VM, a blackholed remote agent) still
accepts TCP connections and never answers: a probe that has not answered
within PROBE_DEADLINE seconds marks the agent unreachable at once, whatever
the client's own timeout, and the probe goes on waiting for its answer."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

from loguru import logger

from consul_reg.core.backoff import Clock
from consul_reg.core.errors import RegistryError, RegistryUnavailable
from consul_reg.core.liveness import Liveness
from consul_reg.core.messages import AgentBack, Message
from consul_reg.core.records import AgentInfo

UP_INTERVAL = 1.0
DOWN_INTERVAL = 0.25
PROBE_DEADLINE = 2.5  # /health turns 503 within this (plus one DOWN_INTERVAL) of a hang


class AgentSelf(Protocol):
    description: str

    def agent_info(self) -> AgentInfo: ...


class AgentAlarm:
    """Given to every Consul client at its construction and told of each call that
    could not reach the agent: health says so at once, and the watch looks at once."""

    def __init__(self, liveness: Liveness) -> None:
        self.liveness = liveness
        self.rung = threading.Event()

    def __call__(self, reason: str) -> None:
        self.liveness.failed(reason)
        self.rung.set()


class AgentWatch:
    def __init__(self, agent: AgentSelf, alarm: AgentAlarm, post: Callable[[Message], None],
                 identity: AgentInfo | None, up_interval: float = UP_INTERVAL,
                 down_interval: float = DOWN_INTERVAL, probe_deadline: float = PROBE_DEADLINE,
                 clock: Clock = time.monotonic) -> None:
        self._agent = agent
        self._alarm = alarm
        self._liveness = alarm.liveness
        self._post = post
        self.identity = identity  # the agent last seen
        self._intervals = (up_interval, down_interval)
        self._probe_deadline = probe_deadline
        self._clock = clock
        self._probe_started: float | None = None  # set while a probe waits for its answer
        self._probe_began = threading.Condition()  # notified as a probe begins, and by stop()
        self._poke = alarm.rung
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="agent-watch", daemon=True)
        self._deadline_thread = threading.Thread(target=self._watch_deadline, name="agent-watch-deadline",
                                                 daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._deadline_thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._poke.set()
        with self._probe_began:
            self._probe_began.notify_all()

    def unreachable(self, reason: str) -> None:
        """A call to the agent failed somewhere: health says so now, and the watch looks at once."""
        self._alarm(reason)

    def check_once(self) -> None:
        """One probe (the thread's body; called directly by tests)."""
        was_down = not self._liveness.state.ok
        with self._probe_began:
            self._probe_started = self._clock()
            self._probe_began.notify()
        refused: RegistryError | None = None
        try:
            info = self._agent.agent_info()
        except RegistryError as error:
            refused = error
        finally:
            # Ended before its outcome is told, under the lock `overdue` decides under: a deadline
            # look that comes later finds no probe, and one that came sooner is overridden by it.
            with self._probe_began:
                self._probe_started = None
        if isinstance(refused, RegistryUnavailable):
            if self._liveness.state.ok:  # not yet said (by the deadline or another call)
                logger.warning("{} does not answer: {}", self._agent.description, refused)
            self._liveness.failed(str(refused))
            return
        if refused is not None:  # it answers, but refuses (a 403): reachable all the same
            self._liveness.ok()
            logger.debug("{}: {}", self._agent.description, refused)
            return
        was_down = was_down or not self._liveness.state.ok  # marked down while this probe hung
        self._liveness.ok()
        replaced = self.identity is not None and info.node_id != self.identity.node_id
        self.identity = info
        if was_down or replaced:
            if was_down:
                logger.info("{} answers again", self._agent.description)
            self._post(AgentBack(info))

    def overdue(self) -> bool:
        """A probe has waited longer than the deadline: mark the agent unreachable
        (once per hang; the deadline thread's body, called directly by tests)."""
        reason = f"{self._agent.description}: no answer to /v1/agent/self within {self._probe_deadline:g}s"
        with self._probe_began:  # a probe that answers meanwhile tells its outcome after this
            started = self._probe_started
            # The same sum as the deadline thread's: `now - started < deadline` disagrees with it at the
            # boundary (1000.0 + 0.3), and that thread would then sleep until a next probe.
            if started is None or self._clock() < started + self._probe_deadline or not self._liveness.state.ok:
                return False
            self._liveness.failed(reason)
            # Said under the lock too: a probe that answers meanwhile says "answers again" after it.
            logger.warning("{} (the agent hangs?)", reason)
        return True

    def _watch_deadline(self) -> None:
        """Asleep while no probe is in flight, else until its deadline: woken by a probe's
        start, never by the clock (a wake four times a second cost CPU on the loop's cores)."""
        while not self._stopping.is_set():
            with self._probe_began:
                if self._stopping.is_set():  # under the lock: a stop() after the loop's look is not lost
                    return
                started = self._probe_started
                left = None if started is None else started + self._probe_deadline - self._clock()
                if left is None or left > 0:
                    self._probe_began.wait(left)
                    continue
            self.overdue()  # once per hang: this probe is then looked at no more
            with self._probe_began:
                if self._probe_started == started and not self._stopping.is_set():
                    self._probe_began.wait()  # until the next probe begins

    def _run(self) -> None:
        up_interval, down_interval = self._intervals
        while not self._stopping.is_set():
            probed_at = time.monotonic()
            try:
                self.check_once()
            except Exception:  # a bug must cost one probe, never the watch (agent restarts unnoticed)
                logger.exception("the agent watch's probe failed unexpectedly; probing again")
            # A failed probe rings the alarm itself (its client tells every failure), so the
            # wait below may end at once: the probes are spaced by down_interval after it, so a
            # refused agent is asked 4 times a second, not in a spin. The ring is not cleared
            # before the wait: a ring of another thread during the probe (a failure its answer
            # predates) or of stop() would be lost, and looked at only an up_interval later.
            self._poke.wait(up_interval if self._liveness.state.ok else down_interval)
            self._poke.clear()
            self._stopping.wait(max(0.0, down_interval - (time.monotonic() - probed_at)))
