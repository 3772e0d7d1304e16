"""Env files, read off the sync loop.

A small pool of reader threads reads each container's env file through
Docker's archive API (bounded in bytes and time) and posts the text back to
the loop's inbox as an `EnvFileRead` message, so a slow or hostile container
never stalls the loop. The loop owns each container's state
(sync/env_files.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from consul_reg.core.messages import EnvFileRead
from consul_reg.core.text import printable
from consul_reg.mapping import env_file as envfile

READ_TIMEOUT_SECONDS = 5.0


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
    return printable(str(error).strip() or type(error).__name__, 300, one_line=True)
