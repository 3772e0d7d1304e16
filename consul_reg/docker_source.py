"""The only module that talks to Docker: listing, inspecting, and the event stream.

Events are read on their own thread straight into a queue: dockerd drops a
subscriber that does not read within ~100 ms, so nothing slow runs there.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
import requests.exceptions
from cachetools import LRUCache
from loguru import logger

# Container events that may change what a container registers. "kill" starts
# a drain and is never followed by an inspect: inspecting a container that is
# being killed waits on dockerd's lock until its network is torn down (~100 ms).
RELEVANT_ACTIONS = frozenset({
    "start", "restart", "die", "stop", "destroy", "rename", "pause", "unpause", "health_status", "update", "kill",
})
# A fixed API version: "auto" would contact dockerd in the constructor, before
# the daemon's retry loop. 1.41 is Docker 20.10's; newer engines still accept it.
API_VERSION = "1.41"
FALLBACK_SOCKET = "/tmp/docker.sock"
DEFAULT_SOCKET = "/var/run/docker.sock"


class DockerUnavailable(Exception):
    """Docker could not be reached; the message says why."""


class NotASwarmManager(Exception):
    """This node cannot read Swarm services: a worker, or not in a swarm."""


@dataclass(frozen=True)
class Hint:
    """A reason to look at one container again, or at everything (container_id "")."""

    container_id: str
    action: str
    time_nano: int = 0
    attributes: tuple[tuple[str, str], ...] = ()

    @property
    def full_resync(self) -> bool:
        return not self.container_id


def docker_base_url(environ: dict[str, str] | None = None) -> str | None:
    """As the docker CLI: DOCKER_HOST, else the default socket, else /tmp/docker.sock."""
    environ = dict(os.environ) if environ is None else environ
    if environ.get("DOCKER_HOST"):
        return None  # docker.from_env reads DOCKER_HOST, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH
    if not os.path.exists(DEFAULT_SOCKET) and os.path.exists(FALLBACK_SOCKET):
        return f"unix://{FALLBACK_SOCKET}"
    return f"unix://{DEFAULT_SOCKET}"


class DockerSource:
    def __init__(self, timeout: float = 30.0) -> None:
        base_url = docker_base_url()
        if base_url is None:
            self._client = docker.from_env(timeout=timeout, version=API_VERSION).api
        else:
            self._client = docker.APIClient(base_url=base_url, timeout=timeout, version=API_VERSION)
        # Inspect results keyed by the container's listing minus its "Status"
        # text (which moves with time): an unchanged listing means unchanged data.
        # Exec probes run on worker threads: a client of their own, so they never
        # queue behind the sync loop's calls.
        self._exec_client = (docker.from_env(timeout=timeout, version=API_VERSION).api if base_url is None
                             else docker.APIClient(base_url=base_url, timeout=timeout, version=API_VERSION))
        self._inspect_cache: LRUCache[str, dict[str, Any]] = LRUCache(maxsize=8192)
        self.description = base_url or os.environ.get("DOCKER_HOST", "")

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

    def inspect_listed(self, summary: dict[str, Any]) -> dict[str, Any] | None:
        """Inspect a listed container, reusing the last answer while its listing is unchanged."""
        status = str(summary.get("Status") or "")
        # "Up 2 hours (healthy)": the text moves with time, the part in brackets does not.
        key = json.dumps({**{k: v for k, v in summary.items() if k != "Status"},
                          "Status": re.findall(r"\(([^)]*)\)", status)}, sort_keys=True, default=str)
        cached = self._inspect_cache.get(key)
        # Podman's listing never shows health: a container with a healthcheck is read again.
        if cached is not None and not (isinstance(cached.get("State"), dict) and cached["State"].get("Health")
                                       and "(" not in status):
            return cached
        inspected = self.inspect(str(summary.get("Id")))
        if inspected is not None:
            self._inspect_cache[key] = inspected
        return inspected

    def read_file(self, container_id: str, path: str, limit: int) -> str | None:
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

    def swarm_service(self, service_id: str) -> dict[str, Any] | None:
        """A Swarm service's inspect data (its Endpoint holds the published ports), or
        None when it is gone. Raises NotASwarmManager where services cannot be read."""
        def inspect() -> dict[str, Any]:
            try:
                return self._client.inspect_service(service_id)
            except docker.errors.APIError as error:
                if error.status_code == 503 and "not a swarm manager" in str(error.explanation):
                    raise NotASwarmManager(str(error.explanation)) from None
                raise
        try:
            return self._guard("inspect a swarm service", inspect)
        except docker.errors.NotFound:
            return None

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

    def follow_events(self, hints: queue.Queue[Hint], stop: threading.Event,
                      retry_interval: float = 1.0, max_backoff: float = 30.0) -> threading.Thread:
        """Start the reader thread: container events -> `hints`. After every
        reconnect it asks for a full resync (events may have been lost)."""
        thread = threading.Thread(target=self._read_events, args=(hints, stop, retry_interval, max_backoff),
                                  name="docker-events", daemon=True)
        thread.start()
        return thread

    def _read_events(self, hints: queue.Queue[Hint], stop: threading.Event,
                     retry_interval: float, max_backoff: float) -> None:
        since: str | None = None
        seen: dict[tuple[int, str, str], None] = {}
        backoff = retry_interval
        connected_once = False
        while not stop.is_set():
            try:
                stream = self._client.events(decode=True, since=since, filters={"type": "container"})
                if connected_once:
                    logger.info("docker event stream reconnected; resyncing everything")
                    hints.put(Hint("", "reconnect"))
                connected_once = True
                backoff = retry_interval
                for event in stream:
                    if stop.is_set():
                        break
                    hint = _hint_from_event(event)
                    if hint is None:
                        continue
                    key = (hint.time_nano, hint.container_id, hint.action)
                    if key in seen:
                        continue  # replayed by `since` after a reconnect
                    seen[key] = None
                    if len(seen) > 4096:
                        for old in list(seen)[:2048]:
                            del seen[old]
                    since = f"{hint.time_nano // 1_000_000_000}.{hint.time_nano % 1_000_000_000:09d}"
                    hints.put(hint)
                if stop.is_set():
                    return
                logger.warning("docker event stream ended (dockerd restarted?); reconnecting")
            except Exception as error:  # the stream must outlive any Docker failure
                if stop.is_set():
                    return
                logger.warning("docker event stream failed: {}; retrying in {:.1f}s", _describe(error), backoff)
            stop.wait(backoff)
            backoff = min(backoff * 2, max_backoff)

    def _guard(self, what: str, function, *args, **kwargs):
        try:
            return function(*args, **kwargs)
        except docker.errors.NotFound:
            raise
        except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as error:
            if isinstance(error, docker.errors.APIError) and "no such container" in str(error.explanation):
                raise docker.errors.NotFound(str(error.explanation), error.response) from None  # Podman's 500
            raise DockerUnavailable(f"docker ({self.description}): could not {what}: {_describe(error)}") from None

    def close(self) -> None:
        self._client.close()
        self._exec_client.close()


def _hint_from_event(event: object) -> Hint | None:
    if not isinstance(event, dict):
        return None
    action = str(event.get("Action") or event.get("status") or "")
    # health_status arrives as "health_status: healthy"; exec_* come from HEALTHCHECK probes.
    base_action = action.split(":", 1)[0].strip()
    base_action = "destroy" if base_action == "remove" else base_action  # Podman's name for it
    if base_action not in RELEVANT_ACTIONS:
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
