"""The only module that talks to Docker: listing, inspecting, files, execs, restarts,
and subscribing to the event stream (which docker/events.py follows on a thread of its own).
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from consul_reg.core.calls import Later, WhenAsked
from consul_reg.core.errors import DockerUnavailable, DockerUnreachable
from consul_reg.core.liveness import Liveness
from consul_reg.core.messages import EVENT_FILTER_ACTIONS, Message
from consul_reg.core.text import printable
from consul_reg.docker import connection as docker_http
from consul_reg.docker import files as container_files
from consul_reg.docker.events import MAX_EVENT_BYTES, decoded_events, follow
from consul_reg.docker.events import describe as _describe
from consul_reg.docker.files import FileUnreadable  # noqa: F401  (raised by read_file)
from consul_reg.docker.host import docker_base_url
from consul_reg.transport.pool import TRANSPORT_ERRORS, Answer, BodyTooLarge, ConnectionPool, Pending, PoolTimeout

# A fixed API version: "auto" would contact dockerd in the constructor, before
# the daemon's retry loop. 1.41 is Docker 20.10's; newer engines still accept it.
API_VERSION = "1.41"
READ_TIMEOUT = 10.0  # seconds for one file read when the caller gives none, and for the event stream's head
INSPECT_CONNECTIONS = 4
EARLY_CONNECTIONS = 2  # inspects sent the moment a start event is read (inspect_later)
# An inspect answer (labels, env, mounts...) is 5-20 KiB; Docker bounds neither labels nor a
# created container's env, so we do: 8 MiB holds an env at Linux's execve limit (2 MiB
# with the default 8 MiB stack) escaped as JSON, beside megabytes of labels
# (BENCHMARKS.md). An event carries the container's labels: MAX_EVENT_BYTES is as large.
MAX_INSPECT_BYTES = MAX_EVENT_BYTES
# The listing carries every container's labels (Docker bounds none). Its bound only stops
# an endless or absurd answer, far above what 1,000 containers list (~2 MB): a listing
# refused fails every full pass, for every container.
MAX_LIST_BYTES = 256 * 1024 * 1024
DEFAULT_STOP_SECONDS = 10  # Docker's stop timeout when a container names none
MAX_RESTART_STOP_SECONDS = 3600  # the longest t= of a check restart (an hour, as the mapping caps StopTimeout)


Answered = TypeVar("Answered")


class NotASwarmManager(Exception):
    """This node cannot read Swarm services: a worker, or not in a swarm."""




class DockerSource:
    def __init__(self, timeout: float = 30.0, filters: dict[str, list[str]] | None = None) -> None:
        # --filter, in Docker's form ({"label": ["k=v"]}): applied to the listing and the event stream.
        self.filters: dict[str, list[str]] = dict(filters or {})
        base_url = docker_base_url()
        # File reads and exec probes run on worker threads, each call on a connection
        # of its own (docker_http) with one wall-clock deadline, so they never queue
        # behind the sync loop's calls and never outlive their deadline.
        try:
            self._endpoint = docker_http.endpoint_from(base_url, os.environ, API_VERSION)
        except (ValueError, OSError) as error:  # a bad DOCKER_HOST, TLS files missing or unreadable (ssl.SSLError)
            raise DockerUnavailable(f"docker: {_describe(error)}") from None
        self.description = base_url or os.environ.get("DOCKER_HOST", "")
        self.liveness = Liveness("docker")
        # Every call on kept-alive connections (transport.pool), each answer bounded;
        # docker-py only where the endpoint is not plain HTTP (ssh://).
        endpoint = self._endpoint
        self._pool: ConnectionPool | None = None
        self._early: ConnectionPool | None = None  # inspects sent from the event thread (inspect_later)
        self._docker_py: Any = None
        if endpoint.unsupported:
            try:
                from consul_reg.docker.ssh import DockerPy
            except ImportError:  # docker-py is an optional extra, for these endpoints only
                raise DockerUnavailable(f"docker: DOCKER_HOST={endpoint.scheme}://... needs docker-py: "
                                        "pip install 'consul-reg[ssh]'") from None
            try:
                self._docker_py = DockerPy(timeout, API_VERSION)
            except docker_http.Unreachable as error:
                raise DockerUnavailable(f"docker: {error}") from None
        else:
            self._pool = ConnectionPool(
                host=endpoint.host, port=endpoint.port, socket_path=endpoint.unix_path or None,
                ssl_context=endpoint.ssl_context, max_connections=INSPECT_CONNECTIONS, timeout=timeout,
                max_body=MAX_INSPECT_BYTES)
            self._early = ConnectionPool(
                host=endpoint.host, port=endpoint.port, socket_path=endpoint.unix_path or None,
                ssl_context=endpoint.ssl_context, max_connections=EARLY_CONNECTIONS, timeout=timeout,
                max_body=MAX_INSPECT_BYTES)

    def ping(self) -> None:
        status, body = self._get("ping", ("ping",), "/_ping")
        if status != 200:
            raise DockerUnavailable(f"docker ({self.description}): could not ping: {_answered(status, body)}")

    def list_containers(self, filters: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
        """Every container (running or not) that matches `filters` (default: --filter's):
        Docker's listing summaries."""
        chosen = self.filters if filters is None else filters
        query = {"all": "1", **({"filters": json.dumps(chosen)} if chosen else {})}
        status, body = self._get("list containers", ("containers",), "/containers/json",
                                 query=query, max_body=MAX_LIST_BYTES,
                                 docker_py_kwargs={"all": True, "filters": chosen or None})
        if status != 200 or not isinstance(body, list):
            raise DockerUnavailable(f"docker ({self.description}): could not list containers: "
                                    f"{_answered(status, body)}")
        return [summary for summary in body if isinstance(summary, dict)]

    def event_filters(self) -> dict[str, list[str]]:
        """The event stream's filters: the container events the daemon acts on (never a
        HEALTHCHECK probe's exec_*), of the containers --filter selects."""
        return {"type": ["container"], "event": list(EVENT_FILTER_ACTIONS), **self.filters}

    def inspect(self, container_id: str) -> dict[str, Any] | None:
        """The container's inspect data, or None when it no longer exists. Thread-safe."""
        return self._inspected(*self._get("inspect a container", ("inspect_container", container_id),
                                          "/containers/{}/json", container_id, subject=container_id))

    def inspect_later(self, container_id: str) -> Later[dict[str, Any] | None]:
        """`inspect`, sent now on a connection of its own (at most EARLY_CONNECTIONS, never one
        the loop's calls wait for) and answered when `result()` is called, by one thread:
        Docker's event thread sends it the moment it reads a start (issue 24), the loop takes
        the answer. Raises DockerUnavailable at once, never waiting, when those connections are
        all in use or dockerd cannot be reached. Through docker-py (ssh://) it is made when its
        answer is asked for."""
        if self._early is None:
            return WhenAsked(lambda: self.inspect(container_id))
        target = docker_http.url(self._endpoint, "/containers/{}/json", container_id)
        pending = self._answer("inspect a container", container_id, lambda: self._early_begin(target))
        return _InspectLater(self, pending, container_id)

    def _early_begin(self, target: str) -> Pending:
        assert self._early is not None
        return self._early.begin("GET", target, wait=False)

    def _inspected(self, status: int, body: Any) -> dict[str, Any] | None:
        if status == 200 and isinstance(body, dict):
            return body
        if _not_found(status, body):
            return None
        raise DockerUnavailable(f"docker ({self.description}): could not inspect a container: "
                                f"{_answered(status, body)}")

    def swarm_service(self, service_id: str) -> dict[str, Any] | None:
        """A Swarm service's inspect data (its Endpoint holds the published ports), or
        None when it is gone. Raises NotASwarmManager where services cannot be read."""
        return self._swarm_object("service", ("inspect_service", service_id), "/services/{}", service_id)

    def swarm_task(self, task_id: str) -> dict[str, Any] | None:
        """Swarm's record of a task (its ServiceID, the container it runs), or None when
        there is no such task. Raises NotASwarmManager where tasks cannot be read."""
        return self._swarm_object("task", ("inspect_task", task_id), "/tasks/{}", task_id)

    def _swarm_object(self, kind: str, docker_py_call: tuple[Any, ...], path: str, object_id: str
                      ) -> dict[str, Any] | None:
        status, body = self._get(f"inspect a swarm {kind}", docker_py_call, path, object_id, subject=object_id)
        if status == 200 and isinstance(body, dict):
            return body
        message = _message(body)
        if status == 503 and "not a swarm manager" in message:
            raise NotASwarmManager(message)
        if status == 404:
            return None
        raise DockerUnavailable(f"docker ({self.description}): could not inspect a swarm {kind}: "
                                f"{_answered(status, body)}")

    def _get(self, what: str, docker_py_call: tuple[Any, ...], path: str, *segments: str,
             query: dict[str, str] | None = None, max_body: int = MAX_INSPECT_BYTES, subject: str = "",
             docker_py_kwargs: dict[str, Any] | None = None) -> tuple[int, Any]:
        """One GET: (status, decoded body or None). dockerd answering at all is liveness;
        not reaching it raises DockerUnreachable, an answer over `max_body` DockerUnavailable
        (about this one call: `subject` names what it was about)."""
        if self._docker_py is not None:
            return self._answer(what, subject, lambda: self._docker_py.call(*docker_py_call,
                                                                              **(docker_py_kwargs or {})))
        assert self._pool is not None
        pool = self._pool
        target = docker_http.url(self._endpoint, path, *segments, query=query)
        return self._answer(what, subject, lambda: _decoded(pool.request("GET", target, max_body=max_body)))

    def _answer(self, what: str, subject: str, call: Callable[[], Answered]) -> Answered:
        """`call`'s result, its failure said as DockerUnavailable (about `subject`) or
        DockerUnreachable; dockerd answering at all is liveness."""
        about = f" {printable(subject, 80)}" if subject else ""
        try:
            answered = call()
        except PoolTimeout as error:  # every connection busy with other calls: dockerd is slow, not gone
            raise DockerUnavailable(f"docker ({self.description}): could not {what}{about}: "
                                    f"{_describe(error)}") from None
        except BodyTooLarge as error:  # dockerd answered: about this call only
            self.liveness.ok()
            raise DockerUnavailable(f"docker ({self.description}): could not {what}{about}: "
                                    f"{_describe(error)}") from None
        except (docker_http.Unreachable, *TRANSPORT_ERRORS) as error:
            reason = f"docker ({self.description}): could not {what}: {_describe(error)}"
            self.liveness.failed(reason)
            raise DockerUnreachable(reason) from None
        if not isinstance(answered, Pending):
            self.liveness.ok()  # dockerd answered
        return answered

    def read_file(self, container_id: str, path: str, limit_bytes: int,
                  timeout_seconds: float = READ_TIMEOUT) -> str | None:
        """A file's text from inside the container (Docker's archive API, no exec); None
        when it does not exist. Raises FileUnreadable (a ValueError) when it is not a
        regular file of at most `limit_bytes` readable within `timeout_seconds`, and
        DockerUnavailable when dockerd cannot be reached. Thread-safe."""
        try:
            return container_files.read_file(self._endpoint, container_id, path, limit_bytes, timeout_seconds)
        except docker_http.Unreachable as error:
            raise DockerUnavailable(f"docker ({self.description}): could not read a file: {error}") from None

    def exec_in_container(self, container_id: str, command: str, timeout_seconds: float,
                          output_limit: int = 4096) -> tuple[int, str]:
        """Run `sh -c command` in the container: (exit code, the output's last `output_limit`
        bytes). Past `timeout_seconds` the command is killed and the exit code is -1, as
        for any failure; the output says why. Never raises for Docker's sake. Thread-safe."""
        from consul_reg.docker import execs  # only a daemon that runs exec checks needs it

        return execs.exec_in_container(self._endpoint, container_id, command, timeout_seconds, output_limit)

    def follow_events(self, post: Callable[[Message], None], stop: threading.Event, retry_interval: float = 1.0,
                      max_backoff: float = 30.0) -> threading.Thread:
        """docker/events.py's `follow`: the reader thread, started once it has subscribed."""
        return follow(self, post, stop, retry_interval, max_backoff)

    def events(self, since: str | None) -> Iterator[Any]:
        """Docker's stream of container events, each decoded (each at most MAX_EVENT_BYTES),
        its head answered when this returns (past READ_TIMEOUT: docker_http.Timeout; through
        docker-py, for an endpoint that is not plain HTTP, the head has no deadline).
        Read on an exchange of its own, without a deadline once the head came."""
        if self._docker_py is not None:
            return self._docker_py.events(since, self.event_filters())
        query = {"filters": json.dumps(self.event_filters()), **({"since": since} if since else {})}
        stream = docker_http.Exchange(self._endpoint, "GET", docker_http.url(self._endpoint, "/events", query=query),
                                      time.monotonic() + READ_TIMEOUT)
        try:
            if stream.status != 200:
                stream.deadline = time.monotonic() + READ_TIMEOUT
                text = stream.read_all(MAX_EVENT_BYTES).decode("utf-8", "replace")
                raise DockerUnavailable(f"docker ({self.description}): the event stream answered {stream.status} "
                                        f"{_describe(ValueError(text))}")
            stream.deadline = math.inf  # the stream is quiet while nothing happens
        except BaseException:
            stream.close()
            raise
        return decoded_events(stream)

    def restart(self, container_id: str, stop_timeout: float, timeout_seconds: float) -> None:
        """Restart the container as `docker restart -t <stop_timeout>` does (always named:
        a container created with `--stop-timeout -1` would make dockerd wait forever; a
        negative one is Docker's default 10 s, at most MAX_RESTART_STOP_SECONDS), on a
        connection of its own, within `timeout_seconds` (the stop and the start). Raises
        DockerUnavailable (why, dockerd's message included) when it was not restarted or
        not within that time. Thread-safe."""
        about = printable(container_id, 80)
        seconds = restart_stop_seconds(stop_timeout)
        if self._docker_py is not None:
            try:
                status, body = self._docker_py.call("restart", container_id, timeout=seconds)
            except docker_http.Unreachable as error:
                raise DockerUnavailable(f"docker ({self.description}): could not restart {about}: "
                                        f"{_describe(error)}") from None
            if status >= 300:
                raise DockerUnavailable(f"docker ({self.description}): could not restart {about}: "
                                        f"{_answered(status, body)}")
            return
        target = docker_http.url(self._endpoint, "/containers/{}/restart", container_id, query={"t": str(seconds)})
        try:
            with docker_http.Exchange(self._endpoint, "POST", target,
                                      docker_http.deadline_after(timeout_seconds)) as exchange:
                if exchange.status >= 300:
                    raise DockerUnavailable(f"docker ({self.description}): could not restart {about}: "
                                            f"{printable(exchange.error_message(), 300)}")
        except (docker_http.Unreachable, docker_http.Timeout, docker_http.BrokenExchange, OSError) as error:
            raise DockerUnavailable(f"docker ({self.description}): could not restart {about} within "
                                    f"{timeout_seconds:g}s: {_describe(error)}") from None

    def close(self) -> None:
        for pool in (self._pool, self._early):
            if pool is not None:
                pool.close()
        if self._docker_py is not None:
            self._docker_py.close()


def _decoded(answer: Answer) -> tuple[int, Any]:
    """(status, decoded body or None) of one of dockerd's answers."""
    try:
        return answer.status_code, answer.json()
    except ValueError:  # a proxy's page, say: its text is the message
        return answer.status_code, None if answer.status_code == 200 else {"message": printable(answer.text, 200)}


class _InspectLater:
    """An inspect sent by `inspect_later`, answered once (or cancelled) by one thread."""

    def __init__(self, client: DockerSource, pending: Pending, container_id: str) -> None:
        self._client, self._pending, self._container_id = client, pending, container_id

    def result(self) -> dict[str, Any] | None:
        pending = self._pending
        return self._client._inspected(*self._client._answer("inspect a container", self._container_id,
                                                             lambda: _decoded(pending.answer())))

    def cancel(self) -> None:
        self._pending.cancel()


def _message(body: Any) -> str:
    """dockerd's {"message": ...} of a failed call."""
    message = body.get("message") if isinstance(body, dict) else None
    return message if isinstance(message, str) else ""


def _not_found(status: int, body: Any) -> bool:
    return status == 404 or "no such container" in _message(body)  # Podman answers 500


def _answered(status: int, body: Any) -> str:
    return f"{status} {_describe(ValueError(_message(body) or 'not the JSON expected'))}"


def restart_stop_seconds(stop_timeout: float) -> int:
    """The `t=` of a restart: whole seconds, Docker's default 10 for a negative (or not a
    number), at most MAX_RESTART_STOP_SECONDS."""
    if not isinstance(stop_timeout, (int, float)) or isinstance(stop_timeout, bool) or not stop_timeout >= 0:
        return DEFAULT_STOP_SECONDS
    return int(min(stop_timeout, MAX_RESTART_STOP_SECONDS))
