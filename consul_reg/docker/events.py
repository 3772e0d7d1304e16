"""Docker's event stream: followed on a thread of its own (`follow`), straight into the
loop's inbox (dockerd drops a subscriber that does not read within ~100 ms, so nothing
slow runs there); decoded one JSON object per line (dockerd and Podman alike), each
line parsed once when its newline arrives, each bounded; and an event -> the
DockerEvent message the loop routes, in Docker's words whatever the engine said."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any, Protocol

from cachetools import LRUCache
from loguru import logger

from consul_reg.core.backoff import Backoff
from consul_reg.core.liveness import Liveness
from consul_reg.core.messages import CONTAINER_ACTIONS, DockerEvent, DockerReconnected, EventsSkipped, Message
from consul_reg.core.records import section
from consul_reg.core.text import printable

SUBSCRIBE_WAIT = 10.0  # seconds the start waits for the event subscription
RECV_BYTES = 64 * 1024
# An event carries its container's labels, which Docker does not bound: as large as an
# inspect may be (docker_source.MAX_INSPECT_BYTES).
MAX_EVENT_BYTES = 8 * 1024 * 1024
ATTRIBUTE_MAX_LENGTH = 32  # an exit code, a signal's name or number
# Docker's and Podman's container names: only a hint (what the agent is read for ahead, issue 24).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class EventSource(Protocol):
    """What `follow` reads: docker/client.py's DockerSource."""

    description: str
    liveness: Liveness

    def events(self, since: str | None) -> Iterator[Any]:
        """Docker's container events, decoded, from `since` (raises when it cannot subscribe)."""
        ...


def follow(source: EventSource, post: Callable[[Message], None], stop: threading.Event,
           retry_interval: float = 1.0, max_backoff: float = 30.0) -> threading.Thread:
    """Start the reader thread (container events -> `post`) and return once it has
    subscribed, so that a container started around the caller's first listing is not
    missed; at most SUBSCRIBE_WAIT, or until the first try failed: a subscription made
    after the caller went on asks for a full pass, as every reconnect does (events may
    have been lost)."""
    first = FirstSubscription()
    thread = threading.Thread(target=read_events,
                              args=(source, post, stop, Backoff(retry_interval, max_backoff), first),
                              name="docker-events", daemon=True)
    thread.start()
    if first.wait(SUBSCRIBE_WAIT) == "timed out":
        logger.warning("docker has not answered the event subscription within {:.0f}s: going on; a full "
                       "pass follows it", SUBSCRIBE_WAIT)
    return thread

def read_events(source: EventSource, post: Callable[[Message], None], stop: threading.Event, backoff: Backoff,
                first: FirstSubscription) -> None:
    # dockerd sends the answer's head, then subscribes: the first subscription replays the
    # last second too, so an event between the two still arrives (its clock: live events
    # are never filtered by `since`). Later ones go on from the last event read.
    since: str | None = f"{time.time() - 1:.9f}"
    seen: LRUCache[tuple[int, str, str], bool] = LRUCache(maxsize=512)  # replayed by `since`
    skipped = SkippedEvents(post)
    again = False
    try:
        while not stop.is_set():
            try:
                stream = source.events(since)
                if not first.made():  # a reconnect, or the caller went on without waiting for it
                    logger.info("docker event stream {}; resyncing everything",
                                "reconnected" if again else "connected")
                    post(DockerReconnected())
                again = True
                source.liveness.ok()
                backoff.succeeded()
                for event in stream:
                    if stop.is_set():
                        break
                    if event is OVERSIZED:
                        skipped.notice()
                        continue
                    message = message_from_event(event)
                    if message is None:
                        continue
                    key = (message.time_nano, message.container_id, message.action)
                    if key in seen:
                        continue
                    seen[key] = True
                    since = f"{message.time_nano // 1_000_000_000}.{message.time_nano % 1_000_000_000:09d}"
                    post(message)
                if stop.is_set():
                    return
                source.liveness.failed("the event stream ended")
                # on its backoff: a stream that ends at once must not be reopened in a tight loop
                logger.warning("docker event stream ended (dockerd restarted?); reconnecting in {:.1f}s",
                               backoff.failed())
            except Exception as error:  # the stream must outlive any Docker failure
                first.failed()
                if stop.is_set():
                    return
                source.liveness.failed(f"event stream: {describe(error)}")
                logger.warning("docker event stream failed: {}; retrying in {:.1f}s", describe(error),
                               backoff.failed())
            stop.wait(max((backoff.retry_at or 0) - time.monotonic(), 0.0))
    finally:
        first.failed()  # stopped before the first subscription: the caller need not wait


class FirstSubscription:
    """How the reader's first subscription went while follow_events waited for it: made
    (before the caller's first listing), failed (the reader retries), or not answered in
    time (the caller went on)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = "waiting"
        self._settled = threading.Event()

    def made(self) -> bool:
        """The reader subscribed: True only for the first time, and only while awaited."""
        return self._settle("made")

    def failed(self) -> None:
        """The reader could not subscribe (or stopped): the caller goes on."""
        self._settle("failed")

    def wait(self, timeout: float) -> str:
        """"made", "failed", or "timed out"."""
        self._settled.wait(timeout)
        self._settle("timed out")
        return self._state

    def _settle(self, state: str) -> bool:
        with self._lock:
            if self._state != "waiting":
                return False
            self._state = state
        self._settled.set()
        return True


def describe(error: BaseException) -> str:
    """An error as one bounded, printable line."""
    return printable(str(error).strip() or type(error).__name__, 300, one_line=True)


def decoded_events(stream: Any) -> Iterator[Any]:
    try:
        yield from _json_lines(SimpleNamespace(read1=stream.read_some))
    finally:
        stream.close()


_PODMAN_ACTIONS = {"remove": "destroy", "died": "die"}  # Podman's names (as filtered, or as sent)


def message_from_event(event: object) -> DockerEvent | None:
    if not isinstance(event, dict):
        return None
    action = str(event.get("Action") or event.get("status") or "")
    # health_status arrives as "health_status: healthy"; exec_* come from HEALTHCHECK probes.
    base_action = action.split(":", 1)[0].strip()
    base_action = _PODMAN_ACTIONS.get(base_action, base_action)
    if base_action not in CONTAINER_ACTIONS:
        return None
    actor = section(event, "Actor")
    container_id = str(actor.get("ID") or event.get("id") or "")
    if not container_id:
        return None
    attributes = section(actor, "Attributes")
    time_nano = event.get("timeNano") or int(event.get("time") or time.time()) * 1_000_000_000
    # Docker sets these after the container's labels (a label of the same name loses); bounded all the same.
    return DockerEvent(
        container_id=container_id,
        action=base_action,
        time_nano=int(time_nano),
        exit_code=str(attributes.get("exitCode", ""))[:ATTRIBUTE_MAX_LENGTH],
        signal=str(attributes.get("signal", ""))[:ATTRIBUTE_MAX_LENGTH],
        name=name if isinstance(name := attributes.get("name"), str) and _NAME.fullmatch(name) else "",
    )


class SkippedEvents:
    """Events too large to read ask for a full pass (whose they were is unknown), at
    most one every SKIPPED_PASS_SECONDS: a container with labels that large gets
    events at its healthcheck's pace (exec_*), and must not turn each into a full
    pass or a log line. One asked meanwhile is posted when the window ends."""

    def __init__(self, post: Callable[[Message], None], interval: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._post, self._interval, self._clock = post, interval, clock
        self._lock = threading.Lock()
        self._last: float | None = None
        self._timer: threading.Timer | None = None
        self._count = 0

    def notice(self) -> None:
        with self._lock:
            self._count += 1
            if self._timer is not None:
                return  # a full pass is already on its way
            wait = 0.0 if self._last is None else self._last + self._interval - self._clock()
            if wait > 0:
                self._timer = threading.Timer(wait, self._fire)
                self._timer.daemon = True
                self._timer.start()
                return
        self._fire()

    def _fire(self) -> None:
        with self._lock:
            self._timer, count, self._count = None, self._count, 0
            self._last = self._clock()
        logger.warning("docker event stream: skipped {} event(s) longer than {} bytes (a container with labels that "
                       "large); looking at every container again", count, MAX_EVENT_BYTES)
        self._post(EventsSkipped(count))


OVERSIZED = object()  # yielded by _json_lines in place of an event over MAX_EVENT_BYTES


def _json_lines(response: Any) -> Iterator[Any]:
    """The JSON values of a stream of lines (dockerd and Podman end every event with a
    newline, and JSON text holds no raw one), however the stream is cut into chunks.
    A line is decoded once, when its newline arrives: no byte is parsed twice, whatever
    the event holds. A line over MAX_EVENT_BYTES is dropped as it arrives, never held
    whole, and OVERSIZED yielded in its place; a stream that ends inside one, or a line
    that is not JSON, raises ValueError (the reader reconnects and resyncs)."""
    pending = bytearray()
    skipping = False
    while data := response.read1(RECV_BYTES):
        start = 0
        while (newline := data.find(b"\n", start)) >= 0:
            if skipping or len(pending) + newline - start > MAX_EVENT_BYTES:
                yield OVERSIZED
            else:
                pending += data[start:newline]
                yield from _line_values(pending)
            pending.clear()
            skipping = False
            start = newline + 1
        if not skipping:
            pending += data[start:]
            if len(pending) > MAX_EVENT_BYTES:
                pending.clear()
                skipping = True
    if skipping:
        raise ValueError(f"an event longer than {MAX_EVENT_BYTES} bytes, and the stream ended in it")
    yield from _line_values(pending)  # a last line without its newline


def _line_values(line: bytearray) -> Iterator[Any]:
    """The JSON values of one line, each decoded once (one per line from any engine
    of today; an old one wrote them back to back)."""
    text = line.decode("utf-8", "replace")
    at = 0
    while True:
        while at < len(text) and text[at] in " \t\r":
            at += 1
        if at == len(text):
            return
        try:
            value, at = _DECODER.raw_decode(text, at)
        except ValueError:
            raise ValueError(f"a line of {len(line)} bytes that is not JSON") from None  # its text is not logged
        yield value


_DECODER = json.JSONDecoder()
