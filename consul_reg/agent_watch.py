"""Notices the agent going away, coming back, or being replaced (a restart
gives a dev agent a new node ID, and it comes back empty), without waiting
for -resync: a cheap local read of /v1/agent/self every second while the
agent answers, four times a second while it does not, and at once when any
call to it failed. Tells the sync loop through its inbox; never touches
the loop's state."""

from __future__ import annotations

import threading
from typing import Callable, Protocol

from loguru import logger

from consul_reg.liveness import Liveness
from consul_reg.registries.base import RegistryError, RegistryUnavailable
from consul_reg.registries.consul import AgentInfo
from consul_reg.router import AGENT_BACK, Hint

UP_INTERVAL = 1.0
DOWN_INTERVAL = 0.25


class AgentSelf(Protocol):
    description: str

    def agent_info(self) -> AgentInfo: ...


class AgentWatch:
    def __init__(self, agent: AgentSelf, liveness: Liveness, post: Callable[[Hint], None],
                 identity: AgentInfo | None, up_interval: float = UP_INTERVAL,
                 down_interval: float = DOWN_INTERVAL) -> None:
        self._agent = agent
        self._liveness = liveness
        self._post = post
        self.identity = identity  # the agent last seen; read by the loop after AGENT_BACK
        self._intervals = (up_interval, down_interval)
        self._poke = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="agent-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._poke.set()

    def unreachable(self, reason: str) -> None:
        """A call to the agent failed somewhere: health says so now, and the watch looks at once."""
        self._liveness.failed(reason)
        self._poke.set()

    def check_once(self) -> None:
        """One probe (the thread's body; called directly by tests)."""
        was_down = not self._liveness.state.ok
        try:
            info = self._agent.agent_info()
        except RegistryUnavailable as error:
            if not was_down:
                logger.warning("{} does not answer: {}", self._agent.description, error)
            self._liveness.failed(str(error))
            return
        except RegistryError as error:  # it answers, but refuses (a 403): reachable all the same
            self._liveness.ok()
            logger.debug("{}: {}", self._agent.description, error)
            return
        self._liveness.ok()
        replaced = self.identity is not None and info.node_id != self.identity.node_id
        self.identity = info
        if was_down or replaced:
            if was_down:
                logger.info("{} answers again", self._agent.description)
            self._post(Hint("", AGENT_BACK))

    def _run(self) -> None:
        while not self._stopping.is_set():
            self.check_once()
            self._poke.wait(self._intervals[0] if self._liveness.state.ok else self._intervals[1])
            self._poke.clear()
