"""The loop's inbox: every other thread puts typed messages in it; the loop takes
everything queued at once, and may look ahead while a full pass runs.

A resync is a safety net and must not cost latency: while one runs, the loop
asks `events_waiting()` between containers, which moves what is queued to a
list of its own (taken first by the next batch, in order) and says whether a
container event or a stop is among it: the pass then gives way.
"""

from __future__ import annotations

import queue

from consul_reg.core.messages import CONTAINER_ACTIONS, DockerEvent, Message, Stop


class Inbox:
    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self._held: list[Message] = []  # taken ahead by `events_waiting`: the next batch begins with them

    def put(self, message: Message) -> None:
        """Any thread, signal handlers too (SimpleQueue.put is reentrant)."""
        self._queue.put(message)

    def empty(self) -> bool:
        return not self._held and self._queue.empty()

    def get_nowait(self) -> Message:
        """The oldest message (tests); queue.Empty when there is none."""
        if self._held:
            return self._held.pop(0)
        return self._queue.get_nowait()

    def next_batch(self, timeout: float) -> list[Message]:
        """Everything queued, waiting up to `timeout` seconds for the first message."""
        batch, self._held = self._held, []
        if not batch:
            try:
                batch.append(self._queue.get(timeout=max(timeout, 0.0)))
            except queue.Empty:
                return []
        while True:  # take everything already queued: one pass handles a burst
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                return batch

    def events_waiting(self) -> bool:
        """Whether a container event (or a stop) waits. The loop's thread only."""
        while True:
            try:
                self._held.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return any(isinstance(m, Stop) or (isinstance(m, DockerEvent) and m.action in CONTAINER_ACTIONS)
                   for m in self._held)
