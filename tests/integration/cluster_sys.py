"""The machine side of the cluster harness (tests/integration/cluster.py): a run's
directory, cgroup, loopback addresses, bridges and ports, and the sweep of what
a killed run left behind.

Every process of a run (Consul agents, dockerds with their containerd, shims,
docker-proxies and containers, daemons, etcd, ZooKeeper) is started inside the
run's cgroup `crf-<tag>` (containers through dockerd's --cgroup-parent), so a
host is lost by SIGKILLing its cgroup, and a run is cleaned up, even after
pytest itself was killed, by killing whatever is left in it. The run directory
/tmp/crf-<tag> holds `owner` (pid and start time of the process that owns the
run): a run whose owner is gone is stale and swept by the next one."""

from __future__ import annotations

import ipaddress
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

from tests.integration.conftest import wait_until

RUN_ROOT = Path("/tmp")
CGROUP_FS = Path("/sys/fs/cgroup")
# Consul's default ports, each agent on its own loopback address (never 127.0.0.1).
CONSUL_TCP_PORTS = (8300, 8301, 8302, 8500, 8600)
CONSUL_UDP_PORTS = (8301, 8302, 8600)
# Published container ports come from below Linux's ephemeral range, where
# neither outgoing connections nor other dockerds' random ports land.
CONTAINER_PORTS = (20000, 32000)
BRIDGE_NAME = re.compile(r"^crf([0-9a-f]{6})h\d$")
WRAP = 'echo $$ > "$0/cgroup.procs" && exec "$@"'  # enter the cgroup, then become the command


def cgroup_root() -> Path:
    """The hierarchy whose cgroup.procs lists a run's processes: cgroup v1's
    pids controller, or the unified hierarchy on a cgroup-v2-only machine."""
    v1 = CGROUP_FS / "pids"
    return v1 if (v1 / "cgroup.procs").exists() else CGROUP_FS


def spawn(args: list[str], log_path: Path, cgroup: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a process inside `cgroup` (its children stay in it), in a session of its own."""
    log = open(log_path, "ab")
    try:
        return subprocess.Popen(["sh", "-c", WRAP, str(cgroup), *args], stdout=log, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
    finally:
        log.close()


def cgroup_pids(cgroup: Path) -> set[int]:
    pids: set[int] = set()
    for procs in cgroup.rglob("cgroup.procs") if cgroup.is_dir() else ():
        try:
            pids.update(int(line) for line in procs.read_text().split())
        except (FileNotFoundError, ProcessLookupError, OSError):
            continue  # a container's cgroup removed meanwhile
    return pids


def kill_cgroup(cgroup: Path, timeout: float = 60.0) -> None:
    """SIGKILL every process in `cgroup` and below, until none is left."""
    def empty() -> bool:
        pids = cgroup_pids(cgroup)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return not pids
    wait_until(empty, timeout=timeout, interval=0.05, message=f"every process of {cgroup} gone")


def remove_cgroups(name: str) -> None:
    """rmdir `name` (and what dockerd made below it) in every hierarchy."""
    hierarchies = [CGROUP_FS, *(p for p in CGROUP_FS.iterdir() if p.is_dir())] if CGROUP_FS.is_dir() else []
    for hierarchy in hierarchies:
        top = hierarchy / name
        if not top.is_dir():
            continue
        for directory, _, _ in sorted(os.walk(top), key=lambda entry: -len(entry[0])):
            try:
                os.rmdir(directory)
            except OSError:
                pass


def unmount_under(directory: Path) -> None:
    """Lazily unmount what dockerds left mounted under `directory` (network
    namespaces, overlay roots) when they were killed."""
    with open("/proc/mounts", encoding="utf-8") as mounts:
        points = [line.split()[1] for line in mounts if line.split()[1].startswith(f"{directory}/")]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22: start time in clock ticks


def make_run_dir(run_dir: Path) -> None:
    """Create `run_dir` with its `owner` already inside (a rename), so that a sweep
    running at the same moment never sees this run without an owner."""
    staging = Path(tempfile.mkdtemp(prefix=".crf-new-", dir=run_dir.parent))
    (staging / "owner").write_text(f"{os.getpid()} {_start_time(os.getpid())}\n")
    staging.rename(run_dir)


def owner_alive(run_dir: Path) -> bool:
    try:
        pid, started = (run_dir / "owner").read_text().split()
    except (OSError, ValueError):
        return False
    return _start_time(int(pid)) == started


def bridges() -> list[str]:
    listed = subprocess.run(["ip", "-o", "link", "show", "type", "bridge"], capture_output=True, text=True).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in listed.splitlines() if ":" in line]


def teardown_run(tag: str) -> None:
    """Everything of run `tag`: processes, mounts, files, bridges, cgroups."""
    name = f"crf-{tag}"
    kill_cgroup(cgroup_root() / name)
    run_dir = RUN_ROOT / name
    unmount_under(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    for bridge in bridges():
        match = BRIDGE_NAME.match(bridge)
        if match and match.group(1) == tag:
            subprocess.run(["ip", "link", "delete", bridge], capture_output=True)
    remove_cgroups(name)


def sweep_stale() -> list[str]:
    """Tear down every run whose owner is gone (pytest killed, a crashed hand run).
    A live run is never touched: its directory exists before anything else of it."""
    tags: set[str] = set()
    for run_dir in RUN_ROOT.glob("crf-*"):
        if run_dir.is_dir() and not owner_alive(run_dir):
            tags.add(run_dir.name[4:])
    root = cgroup_root()
    for group in root.glob("crf-*") if root.is_dir() else ():
        if not (RUN_ROOT / group.name).exists():
            tags.add(group.name[4:])
    for bridge in bridges():
        match = BRIDGE_NAME.match(bridge)
        if match and not (RUN_ROOT / f"crf-{match.group(1)}").exists():
            tags.add(match.group(1))
    for tag in sorted(tags):
        teardown_run(tag)
    for staging in RUN_ROOT.glob(".crf-new-*"):  # a run killed between its mkdtemp and its rename
        if not owner_alive(staging):
            shutil.rmtree(staging, ignore_errors=True)
    return sorted(tags)


def bindable(ip: str, port: int, kind: int = socket.SOCK_STREAM) -> bool:
    """Whether `ip:port` can be bound now (as Go and docker-proxy bind: SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((ip, port))
        except OSError:
            return False
    return True


def pick_loopback_block(count: int) -> str:
    """`127.X.Y` whose .1 to .count all have Consul's ports free: each run its own block."""
    for _ in range(200):
        block = f"127.{random.randint(100, 199)}.{random.randint(1, 254)}"
        ips = [f"{block}.{i}" for i in range(1, count + 1)]
        if all(bindable(ip, port) for ip in ips for port in CONSUL_TCP_PORTS) and \
                all(bindable(ip, port, socket.SOCK_DGRAM) for ip in ips for port in CONSUL_UDP_PORTS):
            return block
    raise RuntimeError("no free 127.X.Y block for the cluster's agents")


def pick_subnets(count: int) -> list[ipaddress.IPv4Network]:
    """`count` /24s in 10.0.0.0/8 that no interface address or route of this machine overlaps."""
    used: list[ipaddress.IPv4Network] = []
    for command in (["ip", "-4", "-o", "addr", "show"], ["ip", "-4", "route", "show", "table", "all"]):
        for word in subprocess.run(command, capture_output=True, text=True).stdout.split():
            try:
                used.append(ipaddress.ip_interface(word).network)
            except ValueError:
                continue
    for _ in range(200):
        # 10.240-254: clear of the other tests' fixed bridges (10.213.77-95) and Podman's 10.88
        second, third = random.randint(240, 254), random.randint(0, 255 - count)
        nets = [ipaddress.ip_network(f"10.{second}.{third + i}.0/24") for i in range(count)]
        if not any(net.overlaps(other) for net in nets for other in used if other.prefixlen > 0):
            return nets
    raise RuntimeError("no free 10.x.y.0/24 subnets for the hosts' bridges")


def make_bridge(name: str, gateway: str) -> None:
    subprocess.run(["ip", "link", "delete", name], capture_output=True)  # a leftover of a killed run
    subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)
    subprocess.run(["ip", "addr", "add", gateway, "dev", name], check=True)
    subprocess.run(["ip", "link", "set", name, "up"], check=True)


class PortPool:
    """Host ports for published container ports: a run-specific window, each
    checked free on the host's address (and so not held on the wildcard)."""

    def __init__(self) -> None:
        self.next = random.randint(CONTAINER_PORTS[0], CONTAINER_PORTS[1] - 2000)
        self.given: set[int] = set()

    def take(self, ip: str) -> int:
        for _ in range(2000):
            port, self.next = self.next, self.next + 1
            if self.next >= CONTAINER_PORTS[1]:
                self.next = CONTAINER_PORTS[0]
            if port not in self.given and bindable(ip, port) and bindable("0.0.0.0", port):
                self.given.add(port)
                return port
        raise RuntimeError("no free port for a container")
