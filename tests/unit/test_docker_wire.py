"""docker_source's reads over the shared h11 wire, against a scripted dockerd on a
unix socket: an inspect answer over its limit is refused for that container only
(dockerd stays "reachable"), and an event over its limit is skipped while the
events around it still arrive, however the stream is cut."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path
from typing import Callable, Iterator

import pytest

from consul_reg import docker_source
from consul_reg.router import EVENT_SKIPPED, Hint
from consul_reg.docker_source import MAX_EVENT_BYTES, MAX_INSPECT_BYTES, OVERSIZED, DockerSource, \
    DockerUnavailable, _json_objects


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
                request = b""
                while b"\r\n\r\n" not in request:
                    data = conn.recv(65536)
                    if not data:
                        break
                    request += data
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
    posted: list[Hint] = []
    got_three = threading.Event()

    def post(hint: Hint) -> None:
        posted.append(hint)
        if len(posted) >= 3:
            got_three.set()
    stop = threading.Event()
    reader = docker.follow_events(post, stop, retry_interval=0.05)
    try:
        assert got_three.wait(10), posted
    finally:
        stop.set()
        reader.join(10)
    # whose the skipped event was is unknown: every container is looked at again
    assert [(h.action, h.container_id) for h in posted[:3]] == [("start", "a"), (EVENT_SKIPPED, ""), ("die", "b")]


class Pieces:
    def __init__(self, data: bytes, size: int) -> None:
        self.pieces = [data[i:i + size] for i in range(0, len(data), size)]

    def read1(self, size: int) -> bytes:
        return self.pieces.pop(0) if self.pieces else b""


@pytest.mark.parametrize("size", [65536, 65535, 1000003])
def test_the_event_after_an_oversized_one_survives_any_cut(size: int) -> None:
    data = event("start", "a") + event("start", "huge", "x" * MAX_EVENT_BYTES) + event("die", "b") + \
        event("stop", "c")
    decoded = list(_json_objects(Pieces(data, size)))
    assert [e if e is OVERSIZED else e["Actor"]["ID"] for e in decoded] == ["a", OVERSIZED, "b", "c"]


def test_skipped_events_ask_for_at_most_one_full_pass_per_window_and_none_is_lost() -> None:
    posted: list[Hint] = []
    second = threading.Event()

    def post(hint: Hint) -> None:
        posted.append(hint)
        if len(posted) == 2:
            second.set()
    skipped = docker_source.SkippedEvents(post, interval=0.2)
    for _ in range(50):  # a healthcheck's exec events of a container with huge labels
        skipped.notice()
    assert [h.action for h in posted] == [EVENT_SKIPPED]  # one at once, the rest wait for the window
    assert second.wait(5)  # the ones noticed meanwhile: one more full pass when the window ends
    assert [h.action for h in posted] == [EVENT_SKIPPED, EVENT_SKIPPED]
