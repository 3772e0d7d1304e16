"""Env files, read off the sync loop.

A small pool of reader threads reads each container's env file through
Docker's archive API (bounded in bytes and time) and posts the text back to
the loop's inbox, so a slow or hostile container never stalls the loop. The
loop owns each container's `EnvFileState` and folds results in with
`fold`, which keeps the last good values when a read fails or the content
is malformed.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Callable

from consul_reg import envfile
from consul_reg.labels import printable

READ_TIMEOUT_SECONDS = 5.0
NO_VALUES = envfile.EnvFile((), ())


@dataclass(frozen=True)
class EnvFileRead:
    """A reader thread's answer, posted to the loop."""

    container_id: str
    path: str
    text: str | None  # None: no such file (yet)
    error: str = ""  # non-empty: unreadable, and why
    docker_down: bool = False


@dataclass(frozen=True)
class EnvFileState:
    """What the loop knows of one container's env file."""

    path: str
    container_name: str = ""  # for warnings: the container may have no desire yet
    read: bool = False  # False until the first answer: the container waits for it
    text: str | None = None
    good: envfile.EnvFile = NO_VALUES  # the last content that parsed; kept when a later one does not
    problem: str = ""  # the last reason it was unreadable or malformed (warned once)


def fold(state: EnvFileState, result: EnvFileRead) -> tuple[EnvFileState, bool, list[str]]:
    """(new state, whether the values the container registers with changed, warnings)."""
    if result.docker_down:
        return state, False, []
    if result.error:
        problem = f"unreadable: {result.error}"
        warnings = [f"env file {printable(result.path)}: {result.error}; keeping its last good values"] \
            if problem != state.problem else []
        return replace(state, read=True, problem=problem), not state.read, warnings
    if result.text is None:  # missing: "nothing yet", no warning
        changed = not state.read or state.good != NO_VALUES
        return EnvFileState(state.path, state.container_name, read=True), changed, []
    if state.read and result.text == state.text:
        return state, False, []
    parsed = envfile.parse(result.text)
    warnings = []
    good = parsed
    problem = ""
    if parsed.problems:
        good = state.good  # malformed: the last good values stay
        problem = "; ".join(parsed.problems)
        if problem != state.problem:
            warnings = [f"env file {printable(result.path)}: {p}" for p in parsed.problems]
    changed = not state.read or good != state.good
    return replace(state, read=True, text=result.text, good=good, problem=problem), changed, warnings


class EnvFileReader:
    """At most one read in flight per container (a request while one is in
    flight is remembered and done once after it), `workers` threads in all."""

    def __init__(self, read_file: Callable[[str, str, int, float], str | None],
                 post: Callable[[EnvFileRead], None], is_docker_down: Callable[[BaseException], bool],
                 workers: int = 2, timeout: float = READ_TIMEOUT_SECONDS) -> None:
        self._read_file = read_file
        self._post = post
        self._is_docker_down = is_docker_down
        self._timeout = timeout
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="env-file")
        self._lock = threading.Lock()
        self._in_flight: dict[str, str | None] = {}  # container ID -> path to read again after, or None

    def request(self, container_id: str, path: str) -> None:
        with self._lock:
            if container_id in self._in_flight:
                self._in_flight[container_id] = path
                return
            self._in_flight[container_id] = None
        self._pool.submit(self._read, container_id, path)

    def _read(self, container_id: str, path: str) -> None:
        while True:
            try:
                text = self._read_file(container_id, path, envfile.MAX_BYTES, self._timeout)
                result = EnvFileRead(container_id, path, text)
            except Exception as error:  # every failure is "unreadable" for this one container
                result = EnvFileRead(container_id, path, None, error=_describe(error),
                                     docker_down=self._is_docker_down(error))
            self._post(result)
            with self._lock:
                again = self._in_flight.get(container_id)
                if again is None:
                    self._in_flight.pop(container_id, None)
                    return
                self._in_flight[container_id] = None
                path = again

    def stop(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _describe(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:300] + "..."
