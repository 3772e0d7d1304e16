"""Reads begun the moment Docker's event thread reads an event (issue 24): the
inspect of a container that started, and the read of the agent's records its
writes are checked against, are sent before the loop even takes the event,
so their answers are there (or nearly) when it does.

Who owns what: Docker's event thread only begins reads and files them here by
container (`Loop.post`); the loop's thread takes them with the batch that
holds the container's events, and is from then on their one reader. A read
taken out of the table (by the loop, or replaced by a later event) belongs to
whoever took it out: answered or cancelled there, never both.

- `start`, `restart`: an inspect (on Docker connections of its own, at most
  MAX_INSPECTS in flight) and a read of the container's records.
- `kill` by an untrappable signal: a read only, answered on one of the
  loop's I/O workers as soon as it comes. Its death follows within
  milliseconds (~20 ms on a quiet host), and is then checked against this
  read: what is left on the death's own path is the deregistration.
- `die`: the kill's read is kept when there is one, else a read is begun.
- any other event of the container: its inspect is dropped (it may be older
  than what the event says); its read stays (a read of the agent made after
  an earlier event of the container is no less current, as long as the loop
  wrote nothing since: see below).

Each read carries the loop's write epoch when it was sent (`Primary.write_epoch`,
odd while a batch's writes are under way): a read sent before or during a write of
the loop's own is older than that write (it would say a record we just registered is
absent, and the death would skip its deregistration as "already gone"), and
`Primary.read_ahead` drops it.

A read older than FRESH_SECONDS when the loop takes it is not used (the loop
reads for itself, as without this). Nothing here decides a write: the loop
takes what fits its batch, and does without the rest.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from consul_reg.core.backoff import Clock
from consul_reg.core.calls import Later
from consul_reg.core.errors import DockerUnavailable, RegistryError
from consul_reg.core.messages import DockerEvent
from consul_reg.core.records import ReadScope, RegisteredService
from consul_reg.sync.router import UNTRAPPABLE_SIGNALS

MAX_INSPECTS = 2  # docker/client.py EARLY_CONNECTIONS: never more in flight than it has connections
MAX_READS = 2  # of the agent's connections, the rest stay free for the loop, heartbeats, the watch
# A read serves a write at most this long after it was sent: the window of the ownership
# rule (docs/guarantees-latency.md). A kill's death comes ~20 ms later on a quiet host.
FRESH_SECONDS = 0.25


@dataclass(frozen=True)
class EarlyRead:
    """The agent's records `scope` names, asked for at `sent_at` (on the loop's clock)."""

    later: Later[dict[str, RegisteredService]]
    scope: ReadScope
    sent_at: float
    epoch: int = 0  # the loop's write epoch before it was sent (Primary.write_epoch)


@dataclass
class _Entry:
    begun_at: float  # its oldest read's time
    inspect: Later[dict[str, Any] | None] | None = None
    read: EarlyRead | None = None


@dataclass(frozen=True)
class Taken:
    """What the loop took for one batch: inspects and reads by container ID."""

    inspects: dict[str, Later[dict[str, Any] | None]] = field(default_factory=dict)
    reads: dict[str, EarlyRead] = field(default_factory=dict)

    def drop_inspects(self, keep: Collection[str] = ()) -> dict[str, Later[dict[str, Any] | None]]:
        """The inspects of `keep`; every other one is cancelled (unread)."""
        for container_id, later in self.inspects.items():
            if container_id not in keep:
                later.cancel()
        return {cid: later for cid, later in self.inspects.items() if cid in keep}

    def drop_all(self) -> None:
        """Cancel every inspect and read not answered (the batch is over: a read handed to
        the primary was answered or dropped with it; cancelling an answered one is a no-op)."""
        self.drop_inspects()
        for read in self.reads.values():
            read.later.cancel()


class EarlyReads:
    def __init__(self, inspect_later: Callable[[str], Later[dict[str, Any] | None]],
                 services_in_later: Callable[[ReadScope], Later[dict[str, RegisteredService]]],
                 scope_of: Callable[[str, str], ReadScope], clock: Clock = time.monotonic,
                 write_epoch: Callable[[], int] = lambda: 0, answers: Executor | None = None) -> None:
        """`inspect_later` and `services_in_later` must send at once or raise (never wait for a
        connection): they run on Docker's event thread. `scope_of(container ID, name)`: the
        records a read for that container asks for (from the loop's last snapshot).
        `write_epoch`: the loop's write epoch, stamped on each read before it is sent.
        `answers`: where a kill's read is answered as soon as it comes (its death, ~20 ms
        later, then finds it parsed); without it, the loop answers it with the death."""
        self._inspect_later = inspect_later
        self._services_in_later = services_in_later
        self._scope_of = scope_of
        self._clock = clock
        self._write_epoch = write_epoch
        self._answers = answers
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        # Set by the loop after each batch: whether it would read ahead now (the agent listed,
        # not failing). A hint for the event thread; the loop checks again when it takes one.
        self.reads_wanted = False

    # -- Docker's event thread ----------------------------------------------------------

    def noticed(self, event: DockerEvent) -> None:
        """Begin what `event` calls for (before the loop is told of it). Never raises."""
        try:
            self._noticed(event)
        except Exception:  # a bug here must never cost the event stream
            logger.opt(exception=True).debug("reading ahead of an event failed")

    def _noticed(self, event: DockerEvent) -> None:
        container_id, action = event.container_id, event.action
        starts = action in ("start", "restart")
        kills = action == "kill" and event.signal.strip().upper() in UNTRAPPABLE_SIGNALS
        now = self._clock()
        with self._lock:
            stale = self._drop_stale(now)
            old = self._entries.pop(container_id, None)
            inspects = sum(entry.inspect is not None for entry in self._entries.values())
            reads = sum(entry.read is not None for entry in self._entries.values())
        dropped: list[Later[Any]] = [later for entry in stale for later in _laters(entry)]
        entry = _Entry(now)
        if old is not None:
            if old.inspect is not None:
                dropped.append(old.inspect)  # older than this event
            if old.read is not None and not starts and not kills:
                entry.read, entry.begun_at = old.read, old.begun_at
            elif old.read is not None:
                dropped.append(old.read.later)
        for later in dropped:
            later.cancel()
        try:
            if starts and inspects < MAX_INSPECTS:
                try:
                    entry.inspect = self._inspect_later(container_id)
                except DockerUnavailable:
                    pass  # the loop inspects it itself
            if (starts or kills or (action == "die" and entry.read is None)) and reads < MAX_READS \
                    and self.reads_wanted:
                scope = self._scope_of(container_id, event.name)
                if scope:
                    epoch = self._write_epoch()  # before the read is sent
                    try:
                        read = self._services_in_later(scope)
                    except RegistryError:
                        read = None  # the loop reads itself
                    if read is not None:
                        entry.read = EarlyRead(_answered_soon(read, self._answers) if kills else read, scope,
                                               self._clock(), epoch)
        except BaseException:
            for later in _laters(entry):
                later.cancel()
            raise
        if entry.inspect is None and entry.read is None:
            return
        with self._lock:
            self._entries[container_id] = entry

    # -- the loop's thread ------------------------------------------------------------------

    def take(self, container_ids: Collection[str]) -> Taken:
        """The inspects and fresh reads begun for `container_ids` (the loop's own from now
        on); a stale read is cancelled here, and so is any other container's entry gone stale."""
        now = self._clock()
        with self._lock:
            stale = self._drop_stale(now)
            taken = {cid: entry for cid in container_ids if (entry := self._entries.pop(cid, None)) is not None}
        for entry in stale:
            for later in _laters(entry):
                later.cancel()
        reads: dict[str, EarlyRead] = {}
        for container_id, entry in taken.items():
            if entry.read is not None:
                if now - entry.read.sent_at <= FRESH_SECONDS:
                    reads[container_id] = entry.read
                else:
                    entry.read.later.cancel()
        return Taken({cid: entry.inspect for cid, entry in taken.items() if entry.inspect is not None}, reads)

    def drop_all(self) -> None:
        """Cancel everything begun (the daemon stops)."""
        with self._lock:
            entries, self._entries = list(self._entries.values()), {}
        for entry in entries:
            for later in _laters(entry):
                later.cancel()

    def _drop_stale(self, now: float) -> list[_Entry]:
        """Under the lock: entries older than a fresh read may be (an inspect nobody took
        that long holds a connection for nothing)."""
        stale = [cid for cid, entry in self._entries.items() if now - entry.begun_at > FRESH_SECONDS]
        return [self._entries.pop(cid) for cid in stale]


class _Soon:
    """A read answered on a worker as soon as its answer comes; cancelled unread only
    when the worker has not begun it (else the worker's answer ends it)."""

    def __init__(self, read: Later[dict[str, RegisteredService]],
                 future: Future[dict[str, RegisteredService]]) -> None:
        self._read, self._future = read, future

    def result(self) -> dict[str, RegisteredService]:
        return self._future.result()

    def cancel(self) -> None:
        if self._future.cancel():
            self._read.cancel()


def _answered_soon(read: Later[dict[str, RegisteredService]],
                   pool: Executor | None) -> Later[dict[str, RegisteredService]]:
    if pool is None:
        return read
    try:
        return _Soon(read, pool.submit(read.result))
    except RuntimeError:  # the pool is shut down (the daemon stops): the loop answers it, if ever
        return read


def _laters(entry: _Entry) -> list[Later[Any]]:
    return [later for later in (entry.inspect, entry.read.later if entry.read else None) if later is not None]
