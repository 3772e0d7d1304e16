"""Bounded reads and execs against the real dockerd, with hostile container contents:
a directory holding a sparse terabyte, files rewritten while read, fifos and
devices, `yes`, commands that outlive their timeout, a /bin/sh that floods,
and dockerd's answers cut off or stalled mid-stream (a proxy in front of the
real socket)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import docker
import pytest

from consul_reg.docker import execs as container_exec
from consul_reg.docker.client import DockerSource, FileUnreadable
from consul_reg.core.errors import DockerUnavailable
from tests.integration.conftest import IMAGE, RUN_ID, TEST_LABEL, wait_until
from tests.integration.test_docker_restart import own_dockerd  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration

LIMIT = 64 * 1024
TERABYTE = 1 << 40
DOCKER_SOCKET = "/var/run/docker.sock"


def memory_kib() -> dict[str, int]:
    with open("/proc/self/status") as status:
        return {key: int(value.split()[0]) for key, value in (line.split(":", 1) for line in status)
                if key in ("VmRSS", "VmHWM")}


def measured(action: Callable[[], Any]) -> tuple[Any, float, int]:
    """(result or the exception raised, seconds, peak RSS growth in KiB during the call)."""
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # VmHWM := VmRSS, so VmHWM afterwards is this call's peak
    before = memory_kib()["VmRSS"]
    started = time.monotonic()
    try:
        result: Any = action()
    except Exception as error:  # returned for the test to check
        result = error
    elapsed = time.monotonic() - started
    return result, elapsed, memory_kib()["VmHWM"] - before


def native_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def processes(container) -> set[tuple[str, str]]:
    """(PID, command line) of the container's processes, from `docker top` (no exec: dockerd
    delays an exec's end while another exec's output is unread). Busybox runs `yes` and
    `sleep` inside the shell, so an exec's command shows as `/bin/sh -c ...`."""
    return {(row[1], row[-1]) for row in container.top()["Processes"]}


def only_these_left(container, before: set[tuple[str, str]]) -> None:
    """The exec's processes are gone: the container runs exactly what it ran before."""
    wait_until(lambda: processes(container) == before, timeout=5,
               message=f"only {sorted(before)} left in the container (now {sorted(processes(container))})")


@pytest.fixture
def source() -> Iterator[DockerSource]:
    docker_source = DockerSource()
    yield docker_source
    docker_source.close()


def ready(container, test: str) -> None:
    wait_until(lambda: container.exec_run(["sh", "-c", test]).exit_code == 0, message=f"container ready: {test}")


# --- env files through the archive API --------------------------------------------------------------

def test_directory_holding_a_sparse_terabyte_is_refused_quickly(source, run_container):
    container = run_container(["sh", "-c", f"mkdir /data && truncate -s {TERABYTE} /data/big && sleep 600"])
    ready(container, "test -f /data/big")
    for path, reason in (("/data", "is a directory, not a regular file"),
                         ("/data/big", f"is {TERABYTE} bytes, more than the limit of {LIMIT}")):
        result, seconds, growth = measured(lambda: source.read_file(container.id, path, LIMIT, 10))
        assert isinstance(result, FileUnreadable) and str(result) == f"{path} {reason}"
        assert seconds < 2.0
        assert growth < 4 * 1024, f"RSS grew by {growth} KiB reading {path}"


def test_regular_file_bigger_than_the_cap_is_refused(source, run_container):
    container = run_container(["sh", "-c", "head -c 10485760 /dev/zero > /big.env && sleep 600"])
    ready(container, "test $(wc -c < /big.env) = 10485760")
    result, seconds, growth = measured(lambda: source.read_file(container.id, "/big.env", LIMIT, 10))
    assert isinstance(result, FileUnreadable)
    assert str(result) == f"/big.env is 10485760 bytes, more than the limit of {LIMIT}"
    assert growth < 4 * 1024


def test_file_growing_while_read_is_bounded(source, run_container):
    """The stat says small, then the file grows without end while dockerd tars it."""
    container = run_container(["sh", "-c", "while :; do echo A=1 > /grow.env; cat /bin/busybox >> /grow.env; done"])
    ready(container, "test -s /grow.env")
    outcomes: dict[str, int] = {}
    for _ in range(50):
        result, seconds, growth = measured(lambda: source.read_file(container.id, "/grow.env", LIMIT, 10))
        assert isinstance(result, (str, FileUnreadable)), repr(result)
        assert len(result if isinstance(result, str) else "") <= LIMIT
        assert growth < 4 * 1024 and seconds < 10.5
        outcomes[type(result).__name__] = outcomes.get(type(result).__name__, 0) + 1
    assert outcomes.get("FileUnreadable"), outcomes


def test_file_rewritten_in_a_tight_loop(source, run_container):
    second = "SERVICE_B=2\n" * 3000
    container = run_container(["sh", "-c", """
        yes SERVICE_A=1 | head -n 2000 > /a
        yes SERVICE_B=2 | head -n 3000 > /b
        while :; do cat /a > /svc.env; cat /b > /svc.env; rm -f /svc.env; cp /a /tmp/x; mv /tmp/x /svc.env; done"""])
    ready(container, f"test $(wc -c < /b) = {len(second)}")
    seen: dict[str, int] = {}
    for _ in range(200):
        try:
            result = source.read_file(container.id, "/svc.env", 40 * 1024, 5)
        except FileUnreadable as error:
            kind = "unreadable"
            assert error.path == "/svc.env" and str(error).startswith("/svc.env ")
        else:
            kind = "missing" if result is None else "text"
            assert result is None or len(result) <= 40 * 1024
        seen[kind] = seen.get(kind, 0) + 1
    assert seen.get("text", 0) > 0, seen


@pytest.mark.parametrize("make,path,reason", [
    ("mkfifo /p", "/p", "is a named pipe (fifo), not a regular file"),
    ("echo A=1 > /f; ln -s /f /l", "/l", "is a symbolic link (to /f), not a regular file"),
    ("mknod /zero c 1 5", "/zero", "is a character device, not a regular file"),
    ("mkdir -p /d/e; mkfifo /d/e/p; ln -s /d /dl", "/dl/.", "is a directory, not a regular file"),
])
def test_special_files_are_refused(source, run_container, make, path, reason):
    container = run_container(["sh", "-c", f"{make} && sleep 600"])
    ready(container, f"test -e {path} -o -L {path}")
    result, seconds, _ = measured(lambda: source.read_file(container.id, path, LIMIT, 10))
    assert isinstance(result, FileUnreadable) and str(result) == f"{path} {reason}"
    assert seconds < 2.0


def test_symlinks_resolve_inside_the_container(source, run_container):
    container = run_container(["sh", "-c", "ln -s /../../../../../../etc /escape && sleep 600"])
    ready(container, "test -L /escape")
    text = source.read_file(container.id, "/escape/hostname", LIMIT, 10)
    assert text is not None and text.strip() == container.attrs["Config"]["Hostname"]


def test_missing_file_and_missing_container_are_none(source, run_container):
    container = run_container()
    assert source.read_file(container.id, "/no/such.env", LIMIT, 10) is None
    assert source.read_file("0" * 64, "/etc/hostname", LIMIT, 10) is None
    assert source.read_file(container.id, "/etc/hostname", LIMIT, 10).strip() == container.attrs["Config"]["Hostname"]


# --- daemon-run exec checks -----------------------------------------------------------------------

def test_normal_command_exit_code_and_output_are_exact(source, run_container):
    container = run_container()
    assert source.exec_in_container(container.id, "printf 'hello\\nworld\\n'; exit 3", 10) == (3, "hello\nworld")
    assert source.exec_in_container(container.id, "echo oops >&2", 10) == (0, "oops")
    assert source.exec_in_container(container.id, "echo 'a  b' \"$0\" c", 10) == (0, "a  b /bin/sh c")
    assert source.exec_in_container(container.id, "exit 0", 10) == (0, "")
    code, output = source.exec_in_container(container.id, "no-such-command", 10)
    assert code == 127 and "no-such-command: not found" in output


@pytest.mark.parametrize("host_kill", [True, False], ids=["killed-from-host", "killed-inside-container"])
def test_yes_is_capped_killed_and_leaves_no_thread(source, run_container, monkeypatch, host_kill):
    if not host_kill:  # as when the daemon runs in a container of its own, without the host's PIDs
        monkeypatch.setattr(container_exec, "_host_kill", lambda pid, container_id: False)
    container = run_container(init=True)
    source.exec_in_container(container.id, "true", 10)  # warm up imports and sockets before counting
    before = processes(container)
    threads, tasks, fds = threading.active_count(), native_threads(), open_fds()
    result, seconds, growth = measured(lambda: source.exec_in_container(container.id, "yes", 2))
    assert (threading.active_count(), native_threads(), open_fds()) == (threads, tasks, fds)
    code, output = result
    assert code == -1 and len(output) <= 4096
    assert output.startswith("timed out after 2s; the command was killed "
                             f"({'from the host' if host_kill else 'inside the container'})\ny\ny\n")
    assert seconds < 2 + 1.5
    assert growth < 8 * 1024, f"RSS grew by {growth} KiB"
    only_these_left(container, before)


def test_command_sleeping_past_its_timeout_is_killed_with_its_group(source, run_container):
    container = run_container(init=True)
    before = processes(container)
    code, output = source.exec_in_container(container.id, "sleep 301 & sleep 302 & echo started; sleep 303", 1)
    assert code == -1 and output == "timed out after 1s; the command was killed (from the host)\nstarted"
    only_these_left(container, before)  # the background sleeps too; the container's own `sleep 600` stays


def test_command_that_closes_its_output_and_runs_on_is_killed(source, run_container):
    """dockerd ends an exec's stream when its process exits, not when the process closes its output."""
    container = run_container(init=True)
    before = processes(container)
    started = time.monotonic()
    code, output = source.exec_in_container(container.id, "exec >&- 2>&-; sleep 304", 1.5)
    assert (code, output) == (-1, "timed out after 1.5s; the command was killed (from the host)")
    assert time.monotonic() - started < 1.5 + 2.5
    only_these_left(container, before)


def test_flooding_shell_without_a_pid_line_is_still_killed(source, run_container):
    """An image whose /bin/sh is `yes`: our wrapper never runs, no PID line comes."""
    container = run_container(["/bin/busybox", "sh", "-c", "printf '#!/bin/busybox yes\\n' > /tmp/sh && "
                                                          "chmod +x /tmp/sh && mv /tmp/sh /bin/sh && exec sleep 600"],
                              init=True)
    wait_until(lambda: container.exec_run(["/bin/busybox", "head", "-c", "2", "/bin/sh"]).output == b"#!",
               message="/bin/sh replaced")
    before = processes(container)
    code, output = source.exec_in_container(container.id, "true", 1)
    assert code == -1 and output.startswith("timed out after 1s; the command was killed (from the host)\n")
    assert len(output) <= 4096
    assert "\n/bin/sh -c echo \"$$\"; exec /bin/sh -c \"$1\" consul-reg-check true\n" in output
    only_these_left(container, before)


def test_exec_in_a_stopped_or_missing_container_says_why(source, run_container):
    container = run_container()
    container.stop(timeout=1)
    code, output = source.exec_in_container(container.id, "true", 5)
    assert code == -1 and output.startswith("docker exec refused: 409 ") and "not running" in output
    code, output = source.exec_in_container("0" * 64, "true", 5)
    assert code == -1 and output.startswith("docker exec refused: 404 ")


def test_concurrent_reads_and_execs(source, run_container):
    container = run_container(["sh", "-c", "echo SERVICE_X=1 > /x.env && sleep 600"])
    ready(container, "test -s /x.env")
    results: list[Any] = []

    def work(index: int) -> None:
        for _ in range(5):
            results.append(source.read_file(container.id, "/x.env", LIMIT, 10))
            results.append(source.exec_in_container(container.id, f"echo {index}", 10))

    workers = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert sorted(r for r in results if isinstance(r, tuple)) == sorted((0, str(i)) for i in range(6) for _ in range(5))
    assert [r for r in results if not isinstance(r, tuple)] == ["SERVICE_X=1\n"] * 30


# --- dockerd failing mid-stream ---------------------------------------------------------------------

class FaultyProxy:
    """A unix socket in front of the real dockerd. Each connection's answer is relayed
    up to `budget` bytes, then cut (connection closed) or stalled (kept open, silent)."""

    def __init__(self, directory: Path, budget: int, mode: str) -> None:
        self.path = str(directory / "p.sock")
        self.budget, self.mode = budget, mode
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(self.path)
        self.server.listen(16)
        self.server.settimeout(0.1)
        self.stop = threading.Event()
        self.sockets: list[socket.socket] = []
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                client, _ = self.server.accept()
            except OSError:
                continue
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(DOCKER_SOCKET)
            self.sockets += [client, upstream]
            for args in ((client, upstream, None), (upstream, client, self.budget)):
                thread = threading.Thread(target=self._relay, args=args, daemon=True)
                thread.start()
                self.threads.append(thread)

    def _relay(self, source: socket.socket, sink: socket.socket, budget: int | None) -> None:
        """Client -> dockerd as is; dockerd -> client up to the budget. Then "cut" closes both
        sides (dockerd died); "stall" sends nothing more but keeps draining dockerd, so only
        this client sees a stalled dockerd (an unread exec stream would wedge the real one)."""
        sent = 0
        try:
            while not self.stop.is_set():
                data = source.recv(65536)
                if not data:
                    break
                if budget is not None and sent < budget:
                    sink.sendall(data[:budget - sent])
                    sent += len(data)
                    if sent >= budget and self.mode == "cut":
                        break
                elif budget is None:
                    sink.sendall(data)
        except OSError:
            pass
        finally:
            if budget is None:
                try:
                    sink.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
            elif self.mode == "cut":
                for sock in (source, sink):
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

    def close(self) -> None:
        self.stop.set()
        for sock in [self.server, *self.sockets]:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        for thread in self.threads:
            thread.join(5)


@pytest.fixture
def proxied(tmp_path_factory, monkeypatch) -> Iterator[Callable[[int, str], DockerSource]]:
    made: list[tuple[FaultyProxy, DockerSource]] = []

    def make(budget: int, mode: str) -> DockerSource:
        proxy = FaultyProxy(Path(tmp_path_factory.mktemp("px", numbered=True)), budget, mode)
        monkeypatch.setenv("DOCKER_HOST", f"unix://{proxy.path}")
        made.append((proxy, DockerSource()))
        return made[-1][1]

    yield make
    for proxy, docker_source in made:
        docker_source.close()
        proxy.close()


@pytest.mark.parametrize("mode,reason", [("cut", "the archive from Docker is broken or was cut off"),
                                         ("stall", "was not read within 2s")])
def test_archive_cut_or_stalled_mid_stream(proxied, run_container, mode, reason):
    container = run_container(["sh", "-c", "yes SERVICE_A=1 | head -c 50000 > /a.env && sleep 600"])
    ready(container, "test $(wc -c < /a.env) = 50000")
    faulty = proxied(8000, mode)
    result, seconds, growth = measured(lambda: faulty.read_file(container.id, "/a.env", LIMIT, 2))
    assert isinstance(result, FileUnreadable) and reason in str(result), repr(result)
    assert seconds < 2 + 0.5 and growth < 4 * 1024


@pytest.mark.parametrize("mode", ["cut", "stall"])
def test_exec_stream_cut_or_stalled_mid_stream_still_kills(proxied, run_container, mode):
    container = run_container(init=True)
    before = processes(container)
    faulty = proxied(200_000, mode)  # exec create/inspect answers pass, the output stream breaks
    started = time.monotonic()
    code, output = faulty.exec_in_container(container.id, "yes", 2)
    assert code == -1 and "the command was killed (from the host)" in output.splitlines()[0]
    assert time.monotonic() - started < 2 + 1.5
    only_these_left(container, before)


def test_docker_down_is_docker_unavailable(tmp_path, monkeypatch, run_container):
    container = run_container()
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nobody.sock")
    down = DockerSource()
    with pytest.raises(DockerUnavailable, match="could not read a file: cannot connect"):
        down.read_file(container.id, "/etc/hostname", LIMIT, 5)
    code, output = down.exec_in_container(container.id, "true", 5)
    assert code == -1 and output.startswith("docker exec failed: cannot connect")
    down.close()


@pytest.fixture
def unmounted_after() -> Iterator[list[Path]]:
    """Set up before own_dockerd, so torn down after it: unmount what that dockerd left
    mounted under its directory (its data root, its network namespace), then remove it."""
    directories: list[Path] = []
    yield directories
    for directory in directories:
        for mount in (directory / "exec" / "netns" / "default", directory / "root"):
            subprocess.run(["umount", str(mount)], capture_output=True)
        shutil.rmtree(directory, ignore_errors=True)


def test_dockerd_killed_mid_stream(unmounted_after, own_dockerd):
    """dockerd dies (SIGKILL) while an exec streams and files are read: every call returns in
    time with a Docker error, and the exec's process is still killed (found by the PID it printed)."""
    unmounted_after.append(own_dockerd.dir)
    client = docker.DockerClient(base_url=own_dockerd.host, timeout=30)
    container = client.containers.run(IMAGE, ["sh", "-c", "yes SERVICE_A=1 | head -c 60000 > /a.env; exec sleep 600"],
                                      detach=True, init=True, network_mode="host", labels={TEST_LABEL: RUN_ID})
    wait_until(lambda: container.exec_run(["sh", "-c", "test $(wc -c < /a.env) = 60000"]).exit_code == 0,
               message="env file written")
    saved = os.environ.get("DOCKER_HOST")
    os.environ["DOCKER_HOST"] = own_dockerd.host
    try:
        source = DockerSource()
    finally:
        os.environ.pop("DOCKER_HOST") if saved is None else os.environ.__setitem__("DOCKER_HOST", saved)
    assert source.read_file(container.id, "/a.env", LIMIT, 5) == "SERVICE_A=1\n" * 5000
    results: dict[str, Any] = {}

    def run_exec() -> None:
        started = time.monotonic()
        results["exec"] = source.exec_in_container(container.id, "yes", 8), time.monotonic() - started

    def read_files() -> None:
        outcomes, started = set(), time.monotonic()
        while time.monotonic() - started < 3:
            try:
                outcomes.add("text" if source.read_file(container.id, "/a.env", LIMIT, 5) else "none")
            except (FileUnreadable, DockerUnavailable) as error:
                outcomes.add(type(error).__name__)
        results["reads"] = outcomes

    threads = [threading.Thread(target=run_exec), threading.Thread(target=read_files)]
    try:
        for thread in threads:
            thread.start()
        wait_until(lambda: any(p[-1] == "/bin/sh -c yes" for p in container.top()["Processes"]), message="yes running")
        yes_pid = next(int(p[1]) for p in container.top()["Processes"] if p[-1] == "/bin/sh -c yes")
        own_dockerd.process.send_signal(signal.SIGKILL)
        own_dockerd.process.wait(10)
        for thread in threads:
            thread.join(8 + 4)
        assert not any(thread.is_alive() for thread in threads)
        (code, output), seconds = results["exec"]
        assert code == -1 and seconds < 8 + 4
        assert output.splitlines()[0].endswith("the command was killed (from the host, found by its PID in the container)")
        assert results["reads"] <= {"text", "DockerUnavailable", "FileUnreadable"} and "DockerUnavailable" in results["reads"]
        assert not os.path.exists(f"/proc/{yes_pid}") or open(f"/proc/{yes_pid}/stat").read().split(") ")[1][0] == "Z"
    finally:
        if own_dockerd.process.poll() is not None:
            own_dockerd.start()  # so the fixture can remove the container
