"""Daemon-run exec checks: a command in a container, its output streamed and
capped, and its process killed when the wall-clock timeout passes.

The command runs as `/bin/sh -c 'echo "$$"; exec /bin/sh -c "$1"' consul-reg-check <command>`:
its first output line is its PID inside the container, then it becomes the
command (same PID). Docker starts every exec as a session and process group
leader, so on timeout the whole group is killed with SIGKILL:
  - from the host, when this daemon sees the host's /proc (it runs on the
    host, or in a container with --pid=host): the exec's host PID (exec
    inspect) is opened as a pidfd and signalled only if /proc says it is in
    this container's cgroup and still alive; the group goes with it;
  - else by a second exec in the container, `kill -KILL -<pgid>` (then `kill -KILL <pid>`).
The command's children in its process group die with it; a child that left
the group (setsid, a daemonizing service) survives, as under `docker exec`.
Zombies stay until the container's init reaps them.

No thread is started: the caller's thread reads, and every socket read has
the time left before the deadline as its timeout.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from consul_reg.docker import connection as docker_http
from consul_reg.docker.connection import Endpoint

WRAPPER = 'echo "$$"; exec /bin/sh -c "$1"'
KILL_SCRIPT = 'kill -KILL -"$1" 2>/dev/null || kill -KILL "$1"'
KILL_GRACE = 3.0  # seconds after the timeout for killing the command and confirming it is gone
EXIT_REPORT_GRACE = 1.0  # Docker may report an exec's exit a moment after its output ends
POLL_INTERVAL = 0.02
MAX_PID_LINE = 24
# Output past the first MiB is read at most this fast: a `yes` cannot make this
# daemon (and dockerd) spend a core on bytes of which only the last few KiB are kept.
FAST_BYTES = 1024 * 1024
SLOW_BYTES_PER_SECOND = 256 * 1024
STDOUT = 1  # Docker's stream type of a frame (2 stderr, 3 Docker's own error): all are output


@dataclass(frozen=True)
class _Ran:
    container_id: str
    exec_id: str
    outcome: str  # "ended", "timeout", or "broken: <why>"
    output: bytes
    pid: int  # the command's PID inside the container (0: unknown)
    started: tuple[float, float] = (0.0, 0.0)  # CLOCK_BOOTTIME window in which that process started


class ExecRefused(Exception):
    """Docker refused to create or start the exec (no such container, not running, paused)."""


def exec_in_container(endpoint: Endpoint, container_id: str, command: str, timeout_seconds: float,
                      output_limit: int = 4096) -> tuple[int, str]:
    """(exit code, last `output_limit` bytes of stdout+stderr as text). Exit code -1
    when it timed out (the command is killed) or could not run; the output says why."""
    deadline = docker_http.deadline_after(timeout_seconds)
    argv = ["/bin/sh", "-c", WRAPPER, "consul-reg-check", command]
    try:
        ran = _run(endpoint, container_id, argv, deadline, output_limit, pid_line=True)
    except ExecRefused as error:
        return -1, _fit(f"docker exec refused: {error}", b"", output_limit)
    except docker_http.Timeout:
        return -1, _fit(f"timed out after {timeout_seconds:g}s: Docker did not start the command", b"", output_limit)
    except (docker_http.Unreachable, docker_http.BrokenExchange) as error:
        return -1, _fit(f"docker exec failed: {error}", b"", output_limit)
    if ran.outcome == "ended":
        # The output may end before the command does (it closed stdout): wait for its exit until the deadline.
        wait_until = max(deadline, time.monotonic() + EXIT_REPORT_GRACE)
        reason = f"timed out after {timeout_seconds:g}s (its output had ended)"
        try:
            info = _wait(endpoint, ran.exec_id, wait_until,
                         lambda i: not i.get("Running") and i.get("ExitCode") is not None)
        except (ExecRefused, docker_http.Unreachable, docker_http.BrokenExchange) as error:
            info, reason = None, f"Docker did not report how it ended: {error}"
        except docker_http.Timeout:
            info = None
        if info is not None and isinstance(info.get("ExitCode"), int):
            return info["ExitCode"], _fit("", ran.output, output_limit)
    elif ran.outcome == "timeout":
        reason = f"timed out after {timeout_seconds:g}s"
    else:
        reason = f"docker exec failed ({ran.outcome})"
    killed = _kill(endpoint, ran, time.monotonic() + KILL_GRACE)
    return -1, _fit(f"{reason}; {killed}", ran.output, output_limit)


def _run(endpoint: Endpoint, container_id: str, argv: list[str], deadline: float, output_limit: int,
         pid_line: bool) -> _Ran:
    created = _call(endpoint, "POST", docker_http.url(endpoint, "/containers/{}/exec", container_id), deadline,
                    {"AttachStdout": True, "AttachStderr": True, "AttachStdin": False, "Tty": False, "Cmd": argv})
    exec_id = created.get("Id") if isinstance(created, dict) else None
    if not isinstance(exec_id, str) or not exec_id:
        raise docker_http.BrokenExchange("Docker created an exec without an Id")
    output = _Output(output_limit, pid_line)
    outcome = "ended"
    start_asked = time.clock_gettime(time.CLOCK_BOOTTIME)
    try:
        with docker_http.Exchange(endpoint, "POST", docker_http.url(endpoint, "/exec/{}/start", exec_id), deadline,
                                  body={"Detach": False, "Tty": False}) as exchange:
            if exchange.status != 200:
                raise ExecRefused(exchange.error_message())
            received = 0
            slow_since = 0.0
            while piece := exchange.read_some():
                output.feed(piece)
                received += len(piece)
                if received > FAST_BYTES:
                    slow_since = slow_since or time.monotonic()
                    due = slow_since + (received - FAST_BYTES) / SLOW_BYTES_PER_SECOND
                    pause = min(due, deadline) - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)
    except docker_http.Timeout:
        outcome = "timeout"
    except (docker_http.BrokenExchange, docker_http.Unreachable) as error:
        outcome = f"broken: {error}"
    return _Ran(container_id, exec_id, outcome, output.tail(), output.pid, (start_asked, output.pid_seen))


def _kill(endpoint: Endpoint, ran: _Ran, deadline: float) -> str:
    """Kill the command's process group; say what happened. Retried until `deadline`:
    under load Docker may answer the start before the process exists (no PID yet)."""
    try:
        while True:
            info = _call(endpoint, "GET", docker_http.url(endpoint, "/exec/{}/json", ran.exec_id), deadline)
            info = info if isinstance(info, dict) else {}
            container_id = str(info.get("ContainerID") or "")
            if not info.get("Running") and info.get("ExitCode") is not None:
                if ran.pid:  # its group may live on (background children)
                    _container_kill(endpoint, container_id, ran.pid, deadline)
                return "the command had ended"
            if info.get("Running"):
                how = "from the host" if _host_kill(info.get("Pid"), container_id) else ""
                if not how and ran.pid and _container_kill(endpoint, container_id, ran.pid, deadline):
                    how = "inside the container"
                if how:
                    if _wait(endpoint, ran.exec_id, deadline, lambda i: not i.get("Running")) is None:
                        return f"killed {how}, but Docker still reports it running"
                    return f"the command was killed ({how})"
            if time.monotonic() + POLL_INTERVAL >= deadline:
                return ("the command could not be killed (no PID for it)" if info.get("Running")
                        else "the command had not started; it may still start and run")
            time.sleep(POLL_INTERVAL)
    except docker_http.Timeout:
        return "the command could not be killed in time"
    except ExecRefused as error:  # the exec is gone (its container stopped or restarted): so is its process
        return f"the command could not be killed: {error}"
    except (docker_http.Unreachable, docker_http.BrokenExchange) as error:
        # dockerd gone: the PID the command printed may still be found from the host.
        if ran.pid and _host_kill(_host_pid_of(ran, deadline), ran.container_id):
            return "the command was killed (from the host, found by its PID in the container)"
        return f"the command could not be killed: {error}"


def _host_pid_of(ran: _Ran, deadline: float) -> int:
    """The host PID of the command from /proc, 0 if not seen: a process whose innermost PID
    is the one it printed, in this container's cgroup, leading its own session (as Docker
    starts execs), and started between the exec's start and the PID line's arrival."""
    if len(ran.container_id) != 64 or not ran.pid:
        return 0
    wanted, ticks = str(ran.pid).encode(), os.sysconf("SC_CLK_TCK")
    try:
        entries = os.scandir("/proc")
    except OSError:
        return 0
    with entries:
        for entry in entries:
            if time.monotonic() > deadline:
                return 0
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/status", "rb") as status:
                    nspid = next((line.split()[1:] for line in status.read(8192).splitlines()
                                  if line.startswith(b"NSpid:")), [])
                if not nspid or nspid[-1] != wanted:
                    continue
                with open(f"/proc/{entry.name}/stat", "rb") as stat_file:
                    fields = stat_file.read(4096).rsplit(b")", 1)[1].split()
                with open(f"/proc/{entry.name}/cgroup", "rb") as cgroup:
                    in_container = ran.container_id.encode() in cgroup.read(64 * 1024)
                started = int(fields[19]) / ticks
                if (in_container and fields[2] == fields[3] == entry.name.encode()
                        and ran.started[0] - 1 <= started <= ran.started[1] + 1):
                    return int(entry.name)
            except (OSError, ValueError, IndexError):
                continue
    return 0


def _host_kill(pid: object, container_id: object) -> bool:
    """SIGKILL the process group led by `pid` if /proc shows it belongs to this container."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 1 or pid == os.getpid():
        return False
    if not isinstance(container_id, str) or len(container_id) != 64:
        return False
    try:
        pidfd = os.pidfd_open(pid)
    except (OSError, AttributeError):  # not visible from here (own PID namespace), or an old kernel
        return False
    try:
        with open(f"/proc/{pid}/cgroup", "rb") as cgroup_file:
            cgroup = cgroup_file.read(64 * 1024).decode("ascii", "replace")
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            stat = stat_file.read(4096).decode("ascii", "replace")
        if container_id not in cgroup:
            return False  # another process at this PID: we do not see the host's PIDs
        group = int(stat.rsplit(")", 1)[1].split()[2])
        # Signal 0 through the pidfd: the process read above is still the one the pidfd holds.
        signal.pidfd_send_signal(pidfd, 0)
        if group == pid:
            os.killpg(pid, signal.SIGKILL)
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return True  # already gone
    except (OSError, ValueError, IndexError):
        return False
    finally:
        os.close(pidfd)


def _container_kill(endpoint: Endpoint, container_id: str, pid: int, deadline: float) -> bool:
    if not container_id or pid <= 1:
        return False
    try:
        ran = _run(endpoint, container_id, ["/bin/sh", "-c", KILL_SCRIPT, "consul-reg-kill", str(pid)],
                   deadline, 256, pid_line=False)
    except (ExecRefused, docker_http.Timeout, docker_http.Unreachable, docker_http.BrokenExchange):
        return False
    return ran.outcome == "ended"


def _wait(endpoint: Endpoint, exec_id: str, deadline: float,
          done: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
    """Poll exec inspect until done(info); None if the deadline passes first."""
    while True:
        info = _call(endpoint, "GET", docker_http.url(endpoint, "/exec/{}/json", exec_id), deadline)
        if isinstance(info, dict) and done(info):
            return info
        if time.monotonic() + POLL_INTERVAL >= deadline:
            return None
        time.sleep(POLL_INTERVAL)


def _call(endpoint: Endpoint, method: str, target: str, deadline: float, body: Any = None) -> Any:
    with docker_http.Exchange(endpoint, method, target, deadline, body=body) as exchange:
        if exchange.status >= 400:
            raise ExecRefused(exchange.error_message())
        return exchange.read_json()


class _Output:
    """Demultiplexes Docker's stream frames; keeps the last `limit` bytes of output
    (never more than twice that) and, with pid_line, takes the first stdout line as the PID."""

    def __init__(self, limit: int, pid_line: bool) -> None:
        self._limit = max(0, limit)
        self._kept = bytearray()
        self._header = bytearray()
        self._left = 0  # payload bytes left in the current frame
        self._stream = 0
        self._pid_pending: bytearray | None = bytearray() if pid_line else None
        self.pid = 0
        self.pid_seen = 0.0

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._left == 0:
                take = min(8 - len(self._header), len(view))
                self._header += view[:take]
                view = view[take:]
                if len(self._header) == 8:
                    self._stream = self._header[0]
                    self._left = int.from_bytes(self._header[4:8], "big")
                    self._header.clear()
                continue
            take = min(self._left, len(view))
            self._payload(bytes(view[:take]))
            self._left -= take
            view = view[take:]

    def _payload(self, data: bytes) -> None:
        if self._pid_pending is not None and self._stream == STDOUT:
            self._pid_pending += data
            line, newline, rest = self._pid_pending.partition(b"\n")
            if newline and line.isdigit() and len(line) < MAX_PID_LINE:
                self.pid = int(line)
                self.pid_seen = time.clock_gettime(time.CLOCK_BOOTTIME)
            elif not newline and len(self._pid_pending) < MAX_PID_LINE:
                return  # the line is not complete yet
            else:
                rest = self._pid_pending  # not our wrapper's line: it is output
            self._pid_pending = None
            data = bytes(rest)
        if self._limit:
            self._kept += data
            if len(self._kept) > 2 * self._limit:
                del self._kept[:-self._limit]

    def tail(self) -> bytes:
        return bytes(self._kept[-self._limit:]) if self._limit else b""


def _fit(reason: str, output: bytes, limit: int) -> str:
    """The reason line (whole), then as much of the output's end as fits in `limit` characters."""
    text = output.decode("utf-8", "replace").strip()
    if not reason:
        return text[-limit:] if limit > 0 else ""
    room = limit - len(reason) - 1
    tail = text[-room:].lstrip() if room > 0 else ""
    return f"{reason}\n{tail}" if tail else reason
