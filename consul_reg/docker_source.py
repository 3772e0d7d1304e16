"""The only module that talks to Docker: listing, inspecting, and the event stream.

Events are read on their own thread straight into a queue: dockerd drops a
subscriber that does not read within ~100 ms, so nothing slow runs there.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import threading
import time
from typing import Any, Callable

import docker
import docker.errors
import requests.exceptions
from cachetools import LRUCache
from loguru import logger

from consul_reg.backoff import Backoff
from consul_reg.liveness import Liveness
from consul_reg.router import CONTAINER_ACTIONS, DOCKER_RECONNECTED, Hint

# A fixed API version: "auto" would contact dockerd in the constructor, before
# the daemon's retry loop. 1.41 is Docker 20.10's; newer engines still accept it.
API_VERSION = "1.41"
FALLBACK_SOCKET = "/tmp/docker.sock"
DEFAULT_SOCKET = "/var/run/docker.sock"


class DockerUnavailable(Exception):
    """Docker could not be reached; the message says why."""


def docker_base_url(environ: dict[str, str] | None = None) -> str | None:
    """As the docker CLI: DOCKER_HOST, else the default socket, else /tmp/docker.sock."""
    environ = dict(os.environ) if environ is None else environ
    if environ.get("DOCKER_HOST"):
        return None  # docker.from_env reads DOCKER_HOST, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH
    if not os.path.exists(DEFAULT_SOCKET) and os.path.exists(FALLBACK_SOCKET):
        return f"unix://{FALLBACK_SOCKET}"
    return f"unix://{DEFAULT_SOCKET}"


def listing_key(summary: dict[str, Any]) -> str:
    """A container's listing entry minus its "Status" text, which moves with time
    ("Up 5 minutes"), but with the health word it carries: while this key is
    unchanged, so is what the container registers."""
    status = str(summary.get("Status") or "")
    health = next((word for word in ("(healthy)", "(unhealthy)", "(health: starting)", "(Paused)")
                   if word in status), "")
    rest = {k: v for k, v in summary.items() if k != "Status"}
    return json.dumps(rest, sort_keys=True, default=str) + health


class DockerSource:
    def __init__(self, timeout: float = 30.0) -> None:
        base_url = docker_base_url()
        if base_url is None:
            self._client = docker.from_env(timeout=timeout, version=API_VERSION).api
        else:
            self._client = docker.APIClient(base_url=base_url, timeout=timeout, version=API_VERSION)
        # Exec probes run on worker threads: a client of their own, so they never
        # queue behind the sync loop's calls.
        self._exec_client = (docker.from_env(timeout=timeout, version=API_VERSION).api if base_url is None
                             else docker.APIClient(base_url=base_url, timeout=timeout, version=API_VERSION))
        self.description = base_url or os.environ.get("DOCKER_HOST", "")
        self.liveness = Liveness("docker")

    def ping(self) -> None:
        self._guard("ping", self._client.ping)

    def list_containers(self) -> list[dict[str, Any]]:
        """Every container (running or not): Docker's listing summaries."""
        return self._guard("list containers", self._client.containers, all=True)

    def inspect(self, container_id: str) -> dict[str, Any] | None:
        """The container's inspect data, or None when it no longer exists."""
        try:
            return self._guard("inspect a container", self._client.inspect_container, container_id)
        except docker.errors.NotFound:
            return None

    def read_file(self, container_id: str, path: str, limit: int, timeout: float = 5.0) -> str | None:
        """A file's text from inside the container (Docker's archive API, no exec);
        None when it does not exist. Raises ValueError when it is not a readable
        regular file of at most `limit` bytes."""
        try:
            stream, stat = self._guard("read a file", self._client.get_archive, container_id, path)
        except docker.errors.NotFound:
            return None
        if stat.get("size", 0) > limit:
            raise ValueError(f"{path} is larger than {limit} bytes")
        raw = b"".join(stream)
        with tarfile.open(fileobj=io.BytesIO(raw)) as archive:
            member = next((m for m in archive.getmembers() if m.isfile()), None)
            if member is None:
                raise ValueError(f"{path} is not a regular file")
            extracted = archive.extractfile(member)
            return extracted.read(limit).decode("utf-8", "replace") if extracted else ""

    def exec_in_container(self, container_id: str, command: str, timeout: float) -> tuple[int, str]:
        """Run `sh -c command` in the container (Docker exec API): (exit code, output).
        A command still running after `timeout` counts as failed (exit code -1)."""
        created = self._guard("create an exec", self._exec_client.exec_create, container_id,
                              ["/bin/sh", "-c", command], stdout=True, stderr=True)
        result: dict[str, object] = {}

        def run() -> None:
            try:
                result["output"] = self._exec_client.exec_start(created["Id"], stream=False)
            except Exception as error:  # reported as the check's output
                result["error"] = error

        worker = threading.Thread(target=run, name="exec-start", daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            return -1, f"timed out after {timeout:g}s"
        if "error" in result:
            return -1, f"docker exec failed: {_describe(result['error'])}"  # type: ignore[arg-type]
        raw = result.get("output") or b""
        output = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        exit_code = self._guard("inspect an exec", self._exec_client.exec_inspect, created["Id"]).get("ExitCode")
        return (exit_code if isinstance(exit_code, int) else -1), output.strip()

    def follow_events(self, post: Callable[[Hint], None], stop: threading.Event, retry_interval: float = 1.0,
                      max_backoff: float = 30.0) -> threading.Thread:
        """Start the reader thread: container events -> `post`. After every
        reconnect it asks for a full pass (events may have been lost)."""
        thread = threading.Thread(target=self._read_events, args=(post, stop, Backoff(retry_interval, max_backoff)),
                                  name="docker-events", daemon=True)
        thread.start()
        return thread

    def _read_events(self, post: Callable[[Hint], None], stop: threading.Event, backoff: Backoff) -> None:
        since: str | None = None
        seen: LRUCache[tuple[int, str, str], bool] = LRUCache(maxsize=4096)  # replayed by `since` after a reconnect
        connected_once = False
        while not stop.is_set():
            try:
                stream = self._client.events(decode=True, since=since, filters={"type": "container"})
                self.liveness.ok()
                if connected_once:
                    logger.info("docker event stream reconnected; resyncing everything")
                    post(Hint("", DOCKER_RECONNECTED))
                connected_once = True
                backoff.succeeded()
                for event in stream:
                    if stop.is_set():
                        break
                    hint = hint_from_event(event)
                    if hint is None:
                        continue
                    key = (hint.time_nano, hint.container_id, hint.action)
                    if key in seen:
                        continue
                    seen[key] = True
                    since = f"{hint.time_nano // 1_000_000_000}.{hint.time_nano % 1_000_000_000:09d}"
                    post(hint)
                if stop.is_set():
                    return
                self.liveness.failed("the event stream ended")
                logger.warning("docker event stream ended (dockerd restarted?); reconnecting")
            except Exception as error:  # the stream must outlive any Docker failure
                if stop.is_set():
                    return
                self.liveness.failed(f"event stream: {_describe(error)}")
                logger.warning("docker event stream failed: {}; retrying in {:.1f}s", _describe(error),
                               backoff.failed())
            stop.wait(max((backoff.retry_at or 0) - time.monotonic(), 0.0))

    def _guard(self, what: str, function, *args, **kwargs):
        try:
            result = function(*args, **kwargs)
        except docker.errors.NotFound:
            self.liveness.ok()
            raise
        except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as error:
            reason = f"docker ({self.description}): could not {what}: {_describe(error)}"
            if isinstance(error, docker.errors.APIError) and error.response is not None:
                self.liveness.ok()  # dockerd answered, with an error about this one thing
            else:
                self.liveness.failed(reason)
            raise DockerUnavailable(reason) from None
        self.liveness.ok()
        return result

    def close(self) -> None:
        self._client.close()
        self._exec_client.close()


def hint_from_event(event: object) -> Hint | None:
    if not isinstance(event, dict):
        return None
    action = str(event.get("Action") or event.get("status") or "")
    # health_status arrives as "health_status: healthy"; exec_* come from HEALTHCHECK probes.
    base_action = action.split(":", 1)[0].strip()
    if base_action not in CONTAINER_ACTIONS:
        return None
    actor = event.get("Actor") if isinstance(event.get("Actor"), dict) else {}
    container_id = str(actor.get("ID") or event.get("id") or "")
    if not container_id:
        return None
    attributes = actor.get("Attributes") if isinstance(actor.get("Attributes"), dict) else {}
    time_nano = event.get("timeNano") or int(event.get("time") or time.time()) * 1_000_000_000
    return Hint(
        container_id=container_id,
        action=base_action,
        time_nano=int(time_nano),
        attributes=tuple(sorted((str(k), str(v)) for k, v in attributes.items())),
    )


def _describe(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) < 300 else text[:300] + "..."
