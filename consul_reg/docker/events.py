"""Docker's event stream, decoded: one JSON object per line (dockerd and Podman alike),
each line parsed once when its newline arrives, each bounded; and an event -> the
DockerEvent message the loop routes, in Docker's words whatever the engine said."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

from loguru import logger

from consul_reg.core.messages import CONTAINER_ACTIONS, DockerEvent, EventsSkipped, Message
from consul_reg.core.records import section

RECV_BYTES = 64 * 1024
# An event carries its container's labels, which Docker does not bound: as large as an
# inspect may be (docker_source.MAX_INSPECT_BYTES).
MAX_EVENT_BYTES = 8 * 1024 * 1024
ATTRIBUTE_MAX_LENGTH = 32  # an exit code, a signal's name or number
# Docker's and Podman's container names: only a hint (what the agent is read for ahead, issue 24).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


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
