"""Bounded reads and execs, from plain bytes: the archive reader, the exec stream
demultiplexer, and the HTTP exchange against a local socket that misbehaves as
a failing dockerd would (the real dockerd: tests/integration/test_container_io.py)."""

from __future__ import annotations

import base64
import gzip
import json
import os
import socket
import struct
import subprocess
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consul_reg.docker import execs as container_exec

from consul_reg.docker import connection as docker_http
from consul_reg.docker.files import FileUnreadable, decode_stat, file_kind, read_archive

LIMIT = 64 * 1024
# Modes as the real dockerd 20.10 sent them in X-Docker-Container-Path-Stat.
REAL_MODES = {420: "regular file", 2147484141: "directory", 134218239: "symbolic link",
              33554852: "named pipe (fifo)", 69206436: "character device"}


def stat_header(mode: int = 420, size: int = 10, link: str = "") -> str:
    return base64.b64encode(json.dumps({"name": "f", "size": size, "mode": mode, "linkTarget": link}).encode()).decode()


def tar_of(data: bytes, name: str = "f", kind: bytes = tarfile.REGTYPE, size: int | None = None,
           fmt: int = tarfile.PAX_FORMAT) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if size is None else size
    return info.tobuf(fmt) + data + b"\0" * (-len(data) % 512) + b"\0" * 1024


class FakeBody:
    """An archive answer whose body comes from `pieces`; counts what was taken."""

    def __init__(self, pieces: Iterator[bytes], stat: str | None = None, status: int = 200) -> None:
        self.status = status
        self.headers = {"x-docker-container-path-stat": stat} if stat is not None else {}
        self._pieces = pieces
        self._pending = b""
        self.served = 0

    def read_some(self, max_bytes: int = docker_http.RECV_BYTES) -> bytes:
        if not self._pending:
            self._pending = next(self._pieces, b"")
        piece, self._pending = self._pending[:max_bytes], self._pending[max_bytes:]
        self.served += len(piece)
        return piece

    def error_message(self) -> str:
        return f"{self.status} boom"


def body(data: bytes, stat: str | None = None, chunk: int = 1000) -> FakeBody:
    return FakeBody(iter([data[i:i + chunk] for i in range(0, len(data), chunk)]), stat or stat_header(size=0))


def endless(block: bytes) -> Iterator[bytes]:
    while True:
        yield block


# --- the stat header and the archive -------------------------------------------------------------

@pytest.mark.parametrize("mode,kind", sorted(REAL_MODES.items()))
def test_file_kind_from_real_modes(mode, kind):
    assert file_kind(mode) == kind


@pytest.mark.parametrize("mode", [None, "420", -1, True, 1.5])
def test_a_mode_that_is_not_a_number_is_not_a_regular_file(mode):
    assert file_kind(mode) == "path of unknown kind"


def test_decode_stat():
    assert decode_stat(stat_header(mode=420, size=4))["size"] == 4
    assert decode_stat(stat_header().rstrip("=")) == decode_stat(stat_header())  # padding optional
    for bad in (None, "", "!!!", base64.b64encode(b"[1,2]").decode(), base64.b64encode(b"{").decode()):
        assert decode_stat(bad) == {}


def test_regular_file_is_read():
    assert read_archive(body(tar_of(b"SERVICE_NAME=web\n")), "/f", LIMIT, 5) == "SERVICE_NAME=web\n"


def test_file_of_exactly_the_limit_is_read():
    data = b"x" * LIMIT
    assert read_archive(body(tar_of(data), chunk=7000), "/f", LIMIT, 5) == data.decode()


def test_undecodable_bytes_are_replaced():
    assert read_archive(body(tar_of(b"A=\xff\n")), "/f", LIMIT, 5) == "A=\ufffd\n"


@pytest.mark.parametrize("mode", [m for m, k in REAL_MODES.items() if k != "regular file"] + [-1])
def test_not_a_regular_file_is_refused_before_the_body(mode):
    answer = FakeBody(endless(b"\0" * 65536), stat_header(mode=mode, size=4096, link="/etc/shadow"))
    with pytest.raises(FileUnreadable, match="not a regular file") as caught:
        read_archive(answer, "/data", LIMIT, 5)
    assert answer.served == 0
    assert caught.value.path == "/data"


def test_missing_stat_header_is_refused():
    with pytest.raises(FileUnreadable, match="unknown kind"):
        read_archive(FakeBody(iter([tar_of(b"a")]), None), "/f", LIMIT, 5)


def test_stat_size_over_the_limit_is_refused_before_the_body():
    answer = FakeBody(endless(b"\0" * 65536), stat_header(size=1 << 40))
    with pytest.raises(FileUnreadable, match=f"is {1 << 40} bytes, more than the limit of {LIMIT}"):
        read_archive(answer, "/big", LIMIT, 5)
    assert answer.served == 0


def test_tar_size_over_the_limit_is_refused_without_reading_the_data():
    """The file grew between dockerd's stat and its tar header."""
    answer = FakeBody(iter([tar_of(b"", size=1 << 40, fmt=tarfile.GNU_FORMAT)[:512]] + [b"\0" * 65536] * 1000),
                      stat_header(size=1))
    with pytest.raises(FileUnreadable, match="more than the limit"):
        read_archive(answer, "/f", LIMIT, 5)
    assert answer.served <= 512 + 512


def test_a_pax_header_claiming_a_terabyte_is_bounded():
    header = tar_of(b"", name="x", kind=tarfile.XHDTYPE, size=1 << 40, fmt=tarfile.GNU_FORMAT)[:512]
    answer = FakeBody(_chain(header, endless(b"1" * 65536)), stat_header(size=1))
    with pytest.raises(FileUnreadable):
        read_archive(answer, "/f", LIMIT, 5)
    assert answer.served <= LIMIT + 8 * 512 + 512


def test_first_member_not_a_file_is_refused():
    """The path became a directory (or fifo) between the stat and the tar."""
    for kind in (tarfile.DIRTYPE, tarfile.FIFOTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.GNUTYPE_SPARSE,
                 tarfile.CHRTYPE):
        with pytest.raises(FileUnreadable, match="not a regular file"):
            read_archive(body(tar_of(b"", kind=kind)), "/f", LIMIT, 5)


def test_archive_without_a_member_is_a_missing_file():
    """The file was removed between dockerd's stat and its tar: dockerd sends only the end blocks."""
    assert read_archive(body(b"\0" * 1024), "/f", LIMIT, 5) is None


@pytest.mark.parametrize("name,stream", [
    ("empty", b""),
    ("cut in the header", tar_of(b"A=1\n")[:300]),
    ("cut in the data", tar_of(b"A=1\n" * 1000)[:1500]),
    ("garbage", b"\x13" * 4096),
    ("gzip is not sniffed", gzip.compress(tar_of(b"A=1\n"))),
    ("bad checksum", tar_of(b"A=1\n")[:148] + b"99999999" + tar_of(b"A=1\n")[156:]),
])
def test_broken_archives_are_one_error(name, stream):
    with pytest.raises(FileUnreadable, match="could not be read"):
        read_archive(body(stream), "/f", LIMIT, 5)


def test_transport_errors_in_the_body_are_one_error():
    def failing() -> Iterator[bytes]:
        yield tar_of(b"A=1\n" * 1000)[:700]
        raise docker_http.BrokenExchange("bad HTTP from dockerd: chunk cut off")

    with pytest.raises(FileUnreadable, match="cut off"):
        read_archive(FakeBody(failing(), stat_header(size=4000)), "/f", LIMIT, 5)

    def stalled() -> Iterator[bytes]:
        yield tar_of(b"A=1\n" * 1000)[:700]
        raise docker_http.Timeout("the deadline passed while reading")

    with pytest.raises(FileUnreadable, match="was not read within 5s"):
        read_archive(FakeBody(stalled(), stat_header(size=4000)), "/f", LIMIT, 5)


def test_docker_error_answer_names_the_path():
    with pytest.raises(FileUnreadable, match=r"^/f could not be read: Docker answered 500 boom"):
        read_archive(FakeBody(iter([]), None, status=500), "/f", LIMIT, 5)


def test_control_characters_of_the_path_are_escaped_in_the_message():
    with pytest.raises(FileUnreadable) as caught:
        read_archive(FakeBody(iter([]), stat_header(mode=2147484141)), "/x\nFAKE LOG LINE\x1b[2J", LIMIT, 5)
    assert "\n" not in str(caught.value) and "\x1b" not in str(caught.value)
    assert caught.value.path == "/x\nFAKE LOG LINE\x1b[2J"


def test_file_unreadable_is_a_value_error():
    assert issubclass(FileUnreadable, ValueError)


def _chain(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest


# --- the exec stream ------------------------------------------------------------------------------

def frame(stream: int, data: bytes) -> bytes:
    return struct.pack(">BxxxL", stream, len(data)) + data


def feed_split(output: container_exec._Output, data: bytes, cuts: list[int]) -> None:
    start = 0
    for cut in sorted(set(c % (len(data) + 1) for c in cuts)) + [len(data)]:
        output.feed(data[start:cut])
        start = max(start, cut)


def test_pid_line_is_taken_and_the_rest_is_output():
    output = container_exec._Output(4096, pid_line=True)
    output.feed(frame(1, b"4242\nhello ") + frame(2, b"err ") + frame(1, b"world\n"))
    assert output.pid == 4242
    assert output.tail() == b"hello err world\n"


@given(cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=12))
def test_frames_split_anywhere_give_the_same_output(cuts):
    stream = frame(1, b"17\n") + frame(2, b"warn\n") + frame(1, b"") + frame(1, b"ok " * 20) + frame(3, b"oci")
    output = container_exec._Output(4096, pid_line=True)
    feed_split(output, stream, cuts)
    assert output.pid == 17
    assert output.tail() == b"warn\n" + b"ok " * 20 + b"oci"


@pytest.mark.parametrize("first", [b"abc\n", b"12 34\n", b"-5\n", b"9" * 30 + b"\n", b"\n", b"9" * 40])
def test_a_first_line_that_is_not_a_pid_is_output(first):
    output = container_exec._Output(4096, pid_line=True)
    output.feed(frame(1, first + b"rest"))
    assert output.pid == 0
    assert output.tail() == first + b"rest"


@settings(max_examples=50)
@given(sizes=st.lists(st.integers(min_value=0, max_value=20000), max_size=30),
       limit=st.integers(min_value=1, max_value=5000))
def test_only_the_last_bytes_are_kept_and_memory_stays_bounded(sizes, limit):
    output = container_exec._Output(limit, pid_line=False)
    everything = b""
    for index, size in enumerate(sizes):
        data = bytes([65 + index % 26]) * size
        everything += data
        output.feed(frame(1 + index % 2, data))
        assert len(output._kept) <= 2 * limit
    assert output.tail() == everything[-limit:]


def test_fit_keeps_the_reason_and_the_end_of_the_output():
    assert container_exec._fit("", b"  hi \n", 4096) == "hi"
    fitted = container_exec._fit("timed out after 2s", b"y\n" * 5000, 100)
    assert fitted.startswith("timed out after 2s\n") and len(fitted) == 100 and fitted.endswith("y")
    assert container_exec._fit("x" * 50, b"abc", 20) == "x" * 50  # the reason is never cut for output


def test_host_kill_refuses_a_process_outside_the_container():
    """A PID that, from here, is not in the container's cgroup (the daemon in its own PID namespace)."""
    sleeper = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        assert container_exec._host_kill(sleeper.pid, "a" * 64) is False
        assert container_exec._host_kill(os.getpid(), "a" * 64) is False
        assert container_exec._host_kill(1, "a" * 64) is False
        assert container_exec._host_kill(sleeper.pid, "short") is False
        time.sleep(0.05)
        assert sleeper.poll() is None  # never signalled
    finally:
        sleeper.kill()
        sleeper.wait()


# --- the HTTP exchange against a misbehaving server ------------------------------------------------

@pytest.fixture
def fake_dockerd() -> Iterator[Callable[[Callable[[socket.socket], None]], docker_http.Endpoint]]:
    """A unix socket served by `behave(conn)` for each connection, on threads that end with the test."""
    directory = tempfile.mkdtemp(prefix="fd-")
    path = str(Path(directory) / "d.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(8)
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def start(behave: Callable[[socket.socket], None]) -> docker_http.Endpoint:
        def accept() -> None:
            server.settimeout(0.1)
            while not stop.is_set():
                try:
                    conn, _ = server.accept()
                except OSError:
                    continue
                with conn:
                    conn.settimeout(5)
                    try:
                        conn.recv(65536)
                        behave(conn)
                    except OSError:
                        pass

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        threads.append(thread)
        return docker_http.Endpoint(unix_path=path)

    yield start
    stop.set()
    for thread in threads:
        thread.join(5)
    server.close()
    os.unlink(path)
    os.rmdir(directory)


HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-tar\r\nTransfer-Encoding: chunked\r\n\r\n"


def drain(exchange: docker_http.Exchange) -> bytes:
    data = b""
    while piece := exchange.read_some():
        data += piece
    return data


def test_exchange_reads_a_chunked_body(fake_dockerd):
    endpoint = fake_dockerd(lambda conn: conn.sendall(HEAD + b"5\r\nhello\r\n0\r\n\r\n"))
    with docker_http.Exchange(endpoint, "GET", "/x", time.monotonic() + 5) as exchange:
        assert exchange.status == 200 and drain(exchange) == b"hello"


def test_exchange_stalled_mid_body_times_out_at_the_deadline(fake_dockerd):
    def stall(conn: socket.socket) -> None:
        conn.sendall(HEAD + b"5\r\nhello\r\n")
        time.sleep(3)

    endpoint = fake_dockerd(stall)
    started = time.monotonic()
    with docker_http.Exchange(endpoint, "GET", "/x", started + 0.5) as exchange:
        with pytest.raises(docker_http.Timeout):
            drain(exchange)
    assert time.monotonic() - started < 1.0


def test_exchange_trickling_body_still_ends_at_the_deadline(fake_dockerd):
    def trickle(conn: socket.socket) -> None:
        conn.sendall(HEAD)
        for _ in range(100):
            conn.sendall(b"1\r\nx\r\n")
            time.sleep(0.05)

    endpoint = fake_dockerd(trickle)
    started = time.monotonic()
    with docker_http.Exchange(endpoint, "GET", "/x", started + 0.6) as exchange:
        with pytest.raises(docker_http.Timeout):
            drain(exchange)
    assert time.monotonic() - started < 1.0


def test_exchange_cut_mid_chunk_is_broken(fake_dockerd):
    endpoint = fake_dockerd(lambda conn: conn.sendall(HEAD + b"100\r\nonly a few bytes"))
    with docker_http.Exchange(endpoint, "GET", "/x", time.monotonic() + 5) as exchange:
        with pytest.raises(docker_http.BrokenExchange):
            drain(exchange)


@pytest.mark.parametrize("answer", [b"", b"not http at all\r\n\r\n", b"HTTP/1.1 200 OK\r\nX: " + b"a" * 200_000])
def test_exchange_without_a_proper_answer_is_unreachable(fake_dockerd, answer):
    endpoint = fake_dockerd(lambda conn: conn.sendall(answer))
    with pytest.raises(docker_http.Unreachable):
        docker_http.Exchange(endpoint, "GET", "/x", time.monotonic() + 5)


def test_exchange_to_a_missing_socket_is_unreachable(tmp_path):
    with pytest.raises(docker_http.Unreachable, match="cannot connect"):
        docker_http.Exchange(docker_http.Endpoint(unix_path=str(tmp_path / "none.sock")), "GET", "/x",
                             time.monotonic() + 5)


def test_unsupported_docker_host_is_unreachable_with_the_reason():
    endpoint = docker_http.endpoint_from(None, {"DOCKER_HOST": "ssh://user@host"}, "1.41")
    with pytest.raises(docker_http.Unreachable, match="ssh:// is not supported"):
        docker_http.Exchange(endpoint, "GET", "/x", time.monotonic() + 5)


def test_endpoints_follow_docker_host():
    assert docker_http.endpoint_from("unix:///var/run/docker.sock", {}, "1.41").unix_path == "/var/run/docker.sock"
    tcp = docker_http.endpoint_from(None, {"DOCKER_HOST": "tcp://10.0.0.5:2375"}, "1.41")
    assert (tcp.host, tcp.port, tcp.ssl_context) == ("10.0.0.5", 2375, None)


def test_url_segments_cannot_leave_their_place():
    endpoint = docker_http.Endpoint(unix_path="/x")
    assert docker_http.url(endpoint, "/exec/{}/json", "../../containers/x") == "/v1.41/exec/..%2F..%2Fcontainers%2Fx/json"
    assert docker_http.url(endpoint, "/containers/{}/archive", "c", query={"path": "/a b&c=#"}) == \
        "/v1.41/containers/c/archive?path=%2Fa+b%26c%3D%23"



@pytest.mark.parametrize("seconds,expected", [(float("nan"), 0.0), (float("inf"), 86400.0), (-5, 0.0), (2.5, 2.5)])
def test_deadlines_are_sane_whatever_the_timeout(seconds, expected):
    before = time.monotonic()
    assert before + expected <= docker_http.deadline_after(seconds) <= time.monotonic() + expected


def test_docker_source_with_unusable_tls_files_is_docker_unavailable(monkeypatch, tmp_path):
    from consul_reg.docker.client import DockerSource
    from consul_reg.core.errors import DockerUnavailable

    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:2376")
    monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
    monkeypatch.setenv("DOCKER_CERT_PATH", str(tmp_path))  # no ca.pem, cert.pem, key.pem there
    with pytest.raises(DockerUnavailable):
        DockerSource()


def test_tls_endpoint_from_docker_tls_verify(tmp_path):
    """ca.pem/cert.pem/key.pem as the docker CLI finds them; a self-made pair is enough to load."""
    import ssl

    key_and_cert = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=docker", "-days", "1",
         "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")], capture_output=True)
    if key_and_cert.returncode != 0:
        pytest.skip("openssl is not available")
    (tmp_path / "ca.pem").write_bytes((tmp_path / "cert.pem").read_bytes())
    endpoint = docker_http.endpoint_from(None, {"DOCKER_HOST": "tcp://10.0.0.5:2376", "DOCKER_TLS_VERIFY": "1",
                                                "DOCKER_CERT_PATH": str(tmp_path)}, "1.41")
    assert (endpoint.host, endpoint.port) == ("10.0.0.5", 2376)
    assert endpoint.ssl_context is not None and endpoint.ssl_context.verify_mode == ssl.CERT_REQUIRED
