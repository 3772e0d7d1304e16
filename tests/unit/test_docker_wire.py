"""docker_source's reads over the shared h11 wire, against a scripted dockerd on a
unix socket: an inspect answer over its limit is refused for that container only
(dockerd stays "reachable"), and an event over its limit is skipped while the
events around it still arrive, however the stream is cut."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Callable, Iterator

import pytest

from consul_reg.docker import events as docker_events

from consul_reg.docker import connection as docker_http

from consul_reg.docker import client as docker_source

from consul_reg.transport import pool as http_pool
from consul_reg.core.backoff import Backoff
from consul_reg.core.messages import CONTAINER_ACTIONS, DockerEvent, DockerReconnected, EventsSkipped, Message
from consul_reg.docker.events import _json_lines
from consul_reg.docker.client import MAX_EVENT_BYTES, MAX_INSPECT_BYTES, DockerSource, DockerUnavailable
from consul_reg.docker.events import OVERSIZED
from tests.unit.sockets import read_head


def serve_once(path: str, reply: Callable[[bytes], bytes]) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(4)

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                request = read_head(conn)
                try:
                    conn.sendall(reply(request))
                except OSError:
                    pass  # the client hung up: it read no further
    threading.Thread(target=accept, daemon=True).start()
    return listener


@pytest.fixture
def source(tmp_path: Path, monkeypatch) -> Iterator[Callable[[Callable[[bytes], bytes]], DockerSource]]:
    made: list[tuple[socket.socket, DockerSource]] = []

    def start(reply: Callable[[bytes], bytes]) -> DockerSource:
        path = str(tmp_path / f"d{len(made)}.sock")
        listener = serve_once(path, reply)
        monkeypatch.setenv("DOCKER_HOST", f"unix://{path}")
        made.append((listener, DockerSource(timeout=5)))
        return made[-1][1]
    yield start
    for listener, made_source in made:
        made_source.close()
        listener.close()


def chunked(*parts: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + \
        b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in parts) + b"0\r\n\r\n"


def test_an_inspect_over_its_limit_is_refused_for_that_container_only(source) -> None:
    body = json.dumps({"Id": "big", "Config": {"Labels": {"x": "y" * MAX_INSPECT_BYTES}}}).encode()
    docker = source(lambda request: b"HTTP/1.1 200 OK\r\nContent-Length: " + str(len(body)).encode() +
                    b"\r\n\r\n" + body)
    with pytest.raises(DockerUnavailable) as refused:
        docker.inspect("big")
    assert not isinstance(refused.value, docker_source.DockerUnreachable)
    assert "big" in str(refused.value) and "limit of 8 MiB" in str(refused.value)
    assert docker.liveness.state.ok  # dockerd answered


def test_an_inspect_at_a_normal_size_is_read(source) -> None:
    body = json.dumps({"Id": "c1", "Config": {"Labels": {"SERVICE_NAME": "web"}}}).encode()
    docker = source(lambda request: b"HTTP/1.1 200 OK\r\nContent-Length: " + str(len(body)).encode() +
                    b"\r\n\r\n" + body)
    assert docker.inspect("c1") == json.loads(body)


def event(action: str, container: str, label: str = "") -> bytes:
    return json.dumps({"Action": action, "Actor": {"ID": container, "Attributes": {"big": label}},
                       "timeNano": 1}).encode() + b"\n"


def test_an_event_over_its_limit_asks_for_a_full_pass_and_the_stream_goes_on(source) -> None:
    events = [event("start", "a"), event("start", "huge", "x" * MAX_EVENT_BYTES), event("die", "b")]
    docker = source(lambda request: chunked(*events))
    with following(docker, 3) as posted:
        pass
    # whose the skipped event was is unknown: every container is looked at again
    assert [described(m) for m in posted[:3]] == [("start", "a"), ("EventsSkipped", ""), ("die", "b")]


def described(message: Message) -> tuple[str, str]:
    """A Docker event as (action, container); any other message by its type's name."""
    if isinstance(message, DockerEvent):
        return message.action, message.container_id
    return type(message).__name__, ""


@contextlib.contextmanager
def following(docker: DockerSource, until: int) -> Iterator[list[Message]]:
    """The reader started (follow_events has returned): what it posts, until `until`
    hints arrived after the block; then it is stopped."""
    posted: list[Message] = []
    enough = threading.Event()

    def post(hint: Message) -> None:
        posted.append(hint)
        if len(posted) >= until:
            enough.set()
    stop = threading.Event()
    reader = docker.follow_events(post, stop, retry_interval=0.05)
    try:
        yield posted
        assert enough.wait(10), posted
    finally:
        stop.set()
        reader.join(10)


def first_line(request: bytes) -> str:
    return urllib.parse.unquote(request.split(b"\r\n")[0].decode())


def test_the_start_waits_for_the_event_subscription_which_replays_the_last_second(source) -> None:
    """The daemon's first listing comes right after follow_events: a container started
    around it must reach the stream. dockerd subscribes just after sending the answer's
    head, so the first subscription also asks for what happened since a second ago."""
    lines: list[str] = []

    def reply(request: bytes) -> bytes:
        lines.append(first_line(request))
        if len(lines) == 1:
            time.sleep(0.3)  # a slow dockerd: the head comes 0.3 s after the request
        return chunked(event("start", "a"))
    docker = source(reply)
    began, wall = time.monotonic(), time.time()
    with following(docker, 1) as posted:
        assert time.monotonic() - began >= 0.3  # it waited for the answer's head
    since = float(urllib.parse.parse_qs(urllib.parse.urlsplit(lines[0].split()[1]).query)["since"][0])
    assert wall - 3 < since <= wall - 1 + 0.01
    assert [described(m) for m in posted[:1]] == [("start", "a")]  # no full pass asked first


def test_a_first_subscription_that_failed_is_made_by_the_reader_with_a_full_pass(source) -> None:
    answers = iter([b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nbusy"])

    def reply(request: bytes) -> bytes:
        return next(answers, chunked(event("start", "a")))
    docker = source(reply)
    with following(docker, 2) as posted:
        pass
    # the listing may have run before this subscription: it asks for another
    assert [described(m) for m in posted[:2]] == [("DockerReconnected", ""), ("start", "a")]


def test_a_dockerd_that_does_not_answer_the_subscription_holds_the_start_only_so_long(source, monkeypatch) -> None:
    monkeypatch.setattr(docker_events, "SUBSCRIBE_WAIT", 0.3)
    monkeypatch.setattr(docker_source, "READ_TIMEOUT", 30.0)  # the head's own deadline is not what frees the start
    release = threading.Event()
    answered: list[bool] = []

    def reply(request: bytes) -> bytes:
        if not answered:
            release.wait(10)  # dockerd hung on the first subscription, until the test releases it
        answered.append(True)
        return chunked(event("start", "a"))
    docker = source(reply)
    with following(docker, 2) as posted:  # follow_events returned: the caller goes on to list
        assert not answered  # it went on before dockerd answered
        release.set()
    assert [described(m) for m in posted[:2]] == [("DockerReconnected", ""), ("start", "a")]


def test_the_event_stream_stays_open_while_quiet_past_the_heads_deadline(tmp_path: Path, monkeypatch) -> None:
    """READ_TIMEOUT bounds the wait for the stream's head only: a stream quiet for longer
    is neither a failure nor reopened (no full pass asked)."""
    monkeypatch.setattr(docker_source, "READ_TIMEOUT", 0.3)
    path = str(tmp_path / "quiet.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(4)
    subscriptions: list[bytes] = []
    done = threading.Event()

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                subscriptions.append(conn.recv(65536))
                conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                time.sleep(1.0)  # nothing happens: more than three times the head's deadline
                body = event("start", "a")
                try:
                    conn.sendall(f"{len(body):x}\r\n".encode() + body + b"\r\n")
                except OSError:
                    continue  # the reader had given up on this stream
                done.wait(10)
    threading.Thread(target=serve, daemon=True).start()
    monkeypatch.setenv("DOCKER_HOST", f"unix://{path}")
    docker = DockerSource(timeout=5)
    posted: list[Hint] = []
    arrived, stop = threading.Event(), threading.Event()
    reader = docker.follow_events(lambda hint: (posted.append(hint), arrived.set()), stop, retry_interval=0.05)
    try:
        assert arrived.wait(10)
    finally:
        stop.set()
        done.set()  # the server ends the stream: the reader sees it stopped
        reader.join(10)
        docker.close()
        listener.close()
    assert [(h.action, h.container_id) for h in posted] == [("start", "a")]
    assert len(subscriptions) == 1


class CountedBackoff(Backoff):
    def __init__(self, stop: threading.Event, opens: int) -> None:
        super().__init__(0.01, 0.02)
        self.stop, self.opens, self.failures, self.successes = stop, opens, 0, 0

    def succeeded(self) -> None:
        super().succeeded()
        self.successes += 1
        if self.successes >= self.opens:  # the reader's last opening: it stops after this stream
            self.stop.set()

    def failed(self) -> float:
        self.failures += 1
        return super().failed()


def test_a_stream_that_ends_at_once_is_reopened_on_the_backoff(source) -> None:
    docker = source(lambda request: chunked())  # every subscription ends right after its head
    stop = threading.Event()
    backoff = CountedBackoff(stop, opens=3)
    posted: list[Message] = []
    docker_events.read_events(docker, posted.append, stop, backoff, docker_events.FirstSubscription())
    assert (backoff.successes, backoff.failures) == (3, 2)  # each end waited its turn (the last one: stopped)
    assert [type(m) for m in posted] == [DockerReconnected] * 2  # each reopening asks for a full pass


class Pieces:
    def __init__(self, data: bytes, size: int) -> None:
        self.pieces = [data[i:i + size] for i in range(0, len(data), size)]

    def read1(self, size: int) -> bytes:
        return self.pieces.pop(0) if self.pieces else b""


@pytest.mark.parametrize("size", [65536, 65535, 1000003])
def test_the_event_after_an_oversized_one_survives_any_cut(size: int) -> None:
    data = event("start", "a") + event("start", "huge", "x" * MAX_EVENT_BYTES) + event("die", "b") + \
        event("stop", "c")
    decoded = list(_json_lines(Pieces(data, size)))
    assert [e if e is OVERSIZED else e["Actor"]["ID"] for e in decoded] == ["a", OVERSIZED, "b", "c"]


def test_the_stream_asks_only_for_the_actions_the_daemon_acts_on_as_each_engine_spells_them(source) -> None:
    """A HEALTHCHECK probe's exec_* events carry every label of its container: they are
    not asked for. Each action the router acts on is, in Docker's and Podman's words."""
    targets: list[str] = []

    def reply(request: bytes) -> bytes:
        targets.append(request_target(request))
        return chunked(event("start", "a"))
    docker = source(reply)
    docker.filters = {"label": ["project=shop"]}
    with following(docker, 1):
        pass
    asked = json.loads(urllib.parse.parse_qs(urllib.parse.urlsplit(targets[0]).query)["filters"][0])
    assert asked["type"] == ["container"] and asked["label"] == ["project=shop"]
    events = set(asked["event"])
    assert CONTAINER_ACTIONS <= events  # Docker's names; "health_status" also matches "health_status: healthy"
    assert {"died", "remove", "health_status: healthy", "health_status: unhealthy"} <= events  # Podman's, exact
    assert not {e for e in events if e.startswith("exec")}
    for action in events:  # nothing is asked that the reader then drops
        hint = docker_events.message_from_event({"Action": action, "Actor": {"ID": "c1"}, "timeNano": 1})
        assert hint is not None and hint.action in CONTAINER_ACTIONS, action


def test_each_event_is_parsed_once_however_many_pieces_bring_a_closing_brace(monkeypatch) -> None:
    """A 7 MiB event cut in 64 KiB pieces that each hold a `}`: one decode per event,
    not one per piece."""
    calls: list[int] = []  # each decode tried, and the characters it read when it succeeded
    real = json.JSONDecoder.raw_decode

    def counted(self: json.JSONDecoder, text: str, at: int = 0) -> tuple[object, int]:
        calls.append(0)
        value, end = real(self, text, at)
        calls[-1] = end - at
        return value, end
    monkeypatch.setattr(json.JSONDecoder, "raw_decode", counted)
    labels = {f"l{n}": "x}" * 32000 for n in range(115)}
    data = event("start", "a") + json.dumps({"Action": "exec_start", "Actor": {"ID": "b", "Attributes": labels}}
                                            ).encode() + b"\n" + event("die", "c")
    assert len(data) > 7 * 1024 * 1024
    decoded = list(_json_lines(Pieces(data, 65536)))
    assert [e["Actor"]["ID"] for e in decoded] == ["a", "b", "c"]
    assert len(calls) == 3 and sum(calls) == len(data) - 3  # every byte but the newlines decoded once


def test_a_line_that_is_not_json_ends_the_stream_without_showing_it() -> None:
    data = event("start", "a") + b'{"Action": "start", "secret": "hunter2"\n' + event("die", "b")
    decoded = []
    with pytest.raises(ValueError) as refused:
        for value in _json_lines(Pieces(data, 7)):
            decoded.append(value)
    assert [e["Actor"]["ID"] for e in decoded] == ["a"] and "hunter2" not in str(refused.value)


def test_skipped_events_ask_for_at_most_one_full_pass_per_window_and_none_is_lost() -> None:
    posted: list[Message] = []
    second = threading.Event()

    def post(hint: Message) -> None:
        posted.append(hint)
        if len(posted) == 2:
            second.set()
    skipped = docker_events.SkippedEvents(post, interval=0.2)
    for _ in range(50):  # a healthcheck's exec events of a container with huge labels
        skipped.notice()
    assert [type(m) for m in posted] == [EventsSkipped]  # one at once, the rest wait for the window
    assert second.wait(5)  # the ones noticed meanwhile: one more full pass when the window ends
    assert [type(m) for m in posted] == [EventsSkipped, EventsSkipped]


def answer(status: str, body: bytes, content_type: str = "application/json") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
            .encode() + body)


def request_target(request: bytes) -> str:
    return request.split(b" ", 2)[1].decode()


def test_the_listing_asks_for_every_container_with_the_filter_and_reads_the_summaries(source) -> None:
    seen: list[str] = []

    def reply(request: bytes) -> bytes:
        seen.append(request_target(request))
        return answer("200 OK", json.dumps([{"Id": "c1", "Labels": {}}, "not a summary"]).encode())
    docker = source(reply)
    docker.filters = {"label": ["project=shop"]}
    assert docker.list_containers() == [{"Id": "c1", "Labels": {}}]
    assert docker.list_containers(filters={}) == [{"Id": "c1", "Labels": {}}]
    first, second = (urllib.parse.urlsplit(target) for target in seen)
    assert first.path == second.path == "/v1.41/containers/json"
    assert urllib.parse.parse_qs(first.query) == {"all": ["1"], "filters": ['{"label": ["project=shop"]}']}
    assert urllib.parse.parse_qs(second.query) == {"all": ["1"]}


def test_a_listing_over_its_bound_or_refused_is_docker_unavailable_not_unreachable(source, monkeypatch) -> None:
    monkeypatch.setattr(docker_source, "MAX_LIST_BYTES", 1000)
    big = source(lambda request: answer("200 OK", json.dumps([{"Id": "x" * 2000}]).encode()))
    with pytest.raises(DockerUnavailable) as refused:
        big.list_containers()
    assert not isinstance(refused.value, docker_source.DockerUnreachable) and "1000" in str(refused.value)
    failing = source(lambda request: answer("500 Internal Server Error", b'{"message": "database is locked"}'))
    with pytest.raises(DockerUnavailable) as failed:
        failing.list_containers()
    assert "could not list containers: 500 database is locked" in str(failed.value)
    assert not isinstance(failed.value, docker_source.DockerUnreachable) and failing.liveness.state.ok


def test_no_dockerd_is_unreachable_and_not_alive(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nobody.sock")
    docker = DockerSource(timeout=2)
    try:
        for call in (docker.ping, docker.list_containers, lambda: docker.inspect("c1")):
            with pytest.raises(docker_source.DockerUnreachable):
                call()
        assert not docker.liveness.state.ok
    finally:
        docker.close()


def test_ping_inspect_and_swarm_answers(source) -> None:
    routes = {"/v1.41/_ping": answer("200 OK", b"OK", "text/plain"),
              "/v1.41/containers/gone/json": answer("404 Not Found", b'{"message": "No such container: gone"}'),
              "/v1.41/containers/podman-gone/json": answer("500 Internal Server Error",
                                                           b'{"message": "no such container"}'),
              "/v1.41/services/s1": answer("503 Service Unavailable",
                                           b'{"message": "This node is not a swarm manager."}'),
              "/v1.41/services/gone": answer("404 Not Found", b'{"message": "service gone not found"}'),
              "/v1.41/services/s2": answer("200 OK", b'{"ID": "s2", "Endpoint": {}}'),
              "/v1.41/tasks/t1": answer("503 Service Unavailable", b'{"message": "This node is not a swarm manager."}'),
              "/v1.41/tasks/gone": answer("404 Not Found", b'{"message": "task gone not found"}'),
              "/v1.41/tasks/t2": answer("200 OK", b'{"ID": "t2", "ServiceID": "s2"}')}
    docker = source(lambda request: routes.get(request_target(request), answer("400 Bad Request", b"{}")))
    docker.ping()
    assert docker.inspect("gone") is None and docker.inspect("podman-gone") is None
    with pytest.raises(docker_source.NotASwarmManager):
        docker.swarm_service("s1")
    assert docker.swarm_service("gone") is None
    assert docker.swarm_service("s2") == {"ID": "s2", "Endpoint": {}}
    with pytest.raises(docker_source.NotASwarmManager):
        docker.swarm_task("t1")
    assert docker.swarm_task("gone") is None
    assert docker.swarm_task("t2") == {"ID": "t2", "ServiceID": "s2"}
    with pytest.raises(DockerUnavailable, match="could not inspect a container: 400"):
        docker.inspect("../../etc")  # percent-encoded: never another path of dockerd's


def test_a_unix_socket_needs_no_docker_py() -> None:
    """docker-py (with requests behind it, ~9 MB) is imported only for an endpoint that is not plain HTTP."""
    code = ("import sys, consul_reg.app.daemon\n"
            "from consul_reg.docker.client import DockerSource\n"
            "DockerSource().close()\n"
            "print(sorted(m for m in ('docker', 'requests', 'urllib3') if m in sys.modules))")
    for host in ("", "unix:///var/run/docker.sock"):
        env = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"} | ({"DOCKER_HOST": host} if host else {})
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "[]", (host, out.stdout)


def test_docker_py_answers_as_the_wire_does(source, tmp_path, monkeypatch) -> None:
    """The fallback for endpoints that are not plain HTTP (ssh://), here driven over a unix socket."""
    from consul_reg.docker.ssh import DockerPy

    routes = {"/v1.41/containers/json": answer("200 OK", b'[{"Id": "c1"}]'),
              "/v1.41/containers/gone/json": answer("404 Not Found", b'{"message": "No such container: gone"}')}
    source(lambda request: routes.get(urllib.parse.urlsplit(request_target(request)).path,
                                      answer("500 Internal Server Error", b'{"message": "boom"}')))
    fallback = DockerPy(timeout=5, api_version="1.41")
    try:
        assert fallback.call("containers", all=True) == (200, [{"Id": "c1"}])
        assert fallback.call("inspect_container", "gone") == (404, {"message": "No such container: gone"})
        assert fallback.call("inspect_service", "s1")[0] == 500
    finally:
        fallback.close()
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nobody.sock")
    nobody = DockerPy(timeout=2, api_version="1.41")
    with pytest.raises(docker_http.Unreachable):
        nobody.call("ping")


def test_an_ssh_docker_host_goes_through_docker_py_and_says_what_it_lacks(monkeypatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "ssh://nobody@127.0.0.1:1")
    with pytest.raises(DockerUnavailable, match="docker: .*paramiko"):
        DockerSource(timeout=2)


def test_every_connection_busy_is_docker_unavailable_not_unreachable(source, monkeypatch) -> None:
    """Listing and Swarm reads share the pool with the loop's overlapped inspects: waiting
    for a connection past the timeout says dockerd is slow, not that it is gone."""
    docker = source(lambda request: answer("200 OK", b"[]"))

    def busy(*args, **kwargs):
        raise http_pool.PoolTimeout("no free connection within 5s")
    monkeypatch.setattr(docker._pool, "request", busy)
    for call in (docker.list_containers, lambda: docker.swarm_service("s1"), lambda: docker.inspect("c1")):
        with pytest.raises(DockerUnavailable, match="no free connection") as refused:
            call()
        assert not isinstance(refused.value, docker_source.DockerUnreachable)


def test_an_error_answer_that_is_not_json_keeps_its_text(source) -> None:
    docker = source(lambda request: answer("502 Bad Gateway", b"<html>bad gateway</html>", "text/html"))
    with pytest.raises(DockerUnavailable, match="could not list containers: 502 <html>bad gateway</html>"):
        docker.list_containers()


@pytest.mark.parametrize("host, path", [
    ("unix:///var/run/docker.sock", "/var/run/docker.sock"),
    ("unix:///var/run/docker.sock/", "/var/run/docker.sock"),  # docker-py strips the slash: so do we
    ("unix:///var/run/docker.sock\n", "/var/run/docker.sock"),
    ("unix://var/run/docker.sock", "/var//run/docker.sock"),  # docker-py's legacy form, as its adapter reads it
    ("unix://", "/var/run/docker.sock"),
])
def test_docker_host_unix_forms_read_as_docker_py_reads_them(host: str, path: str) -> None:
    assert docker_http.endpoint_from(None, {"DOCKER_HOST": host}, "1.41").unix_path == path


def test_https_without_tls_variables_is_verified_as_docker_py_verifies_it(tmp_path) -> None:
    verified = docker_http.endpoint_from(None, {"DOCKER_HOST": "https://dockerd.example:2376"}, "1.41")
    assert verified.ssl_context is not None and verified.ssl_context.check_hostname
    assert verified.ssl_context.verify_mode == ssl.CERT_REQUIRED
    plain = docker_http.endpoint_from(None, {"DOCKER_HOST": "tcp://127.0.0.1:2375"}, "1.41")
    assert plain.ssl_context is None and (plain.host, plain.port) == ("127.0.0.1", 2375)
