"""A fleet on this one machine: 3 Consul 1.8.7 servers and 3 "hosts", each a
client agent + a dockerd of its own + a consul-reg with --hostname of that
host and -resync 0, all writing one etcd prefix, one ZooKeeper base path and
one Consul KV prefix. Nothing here touches the shared dockerd or the agent on
127.0.0.1:8500.

Each agent listens on its own loopback address with Consul's default ports
(127.X.Y.1-3 servers, .4-.6 the hosts: a block picked per run), so several
runs never clash; a host's agent also answers HTTP on its bridge's address,
a non-loopback address of that host. Each dockerd has its own socket, data
root, exec root and bridge (`--bridge <own> --iptables=false
--ip-forward=false --ip-masq=false`, a fresh data root per run; never
`--bridge none`, which deletes the shared docker0); its containers publish
their ports on their host's address.

By hand (as root):
    .venv/bin/python -m tests.integration.cluster up      # start, print the addresses, Ctrl-C stops it
    .venv/bin/python -m tests.integration.cluster sweep   # remove what killed runs left
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker
import httpx

from tests.integration import cluster_sys as system
from tests.integration.conftest import IMAGE, ROOT, wait_until
from tests.integration.servers import Etcd, ZooKeeper

SERVERS = 3
HOSTS = 3
PREFIX = "fleet"  # the shared mirror prefix / base path
# Failure detection for a test machine: a lost node is marked failed in ~3-5 s
# (suspicion timeout 2 s once others confirm it, 12 s at most), while a live
# node that the machine starved has those seconds to refute a suspicion
# (Consul's defaults: probe 1 s / 500 ms, suspicion_mult 4: ~5-10 s, 24 s at most).
GOSSIP_LAN = {"probe_interval": "500ms", "probe_timeout": "250ms", "suspicion_mult": 4, "gossip_interval": "100ms"}
# Raft timing x3 (leader lease 1.5 s, heartbeat timeout 3 s): no leader election
# because a noisy 2-core machine starved the leader for a second; costs ~2 s at start.
RAFT_MULTIPLIER = 3
ETCD_TTL, ETCD_REFRESH = 8, 2  # the daemons' lease: a lost host's etcd keys go within 8 s


class Agent:
    """One Consul agent on its own loopback address, data kept across restarts."""

    def __init__(self, name: str, ip: str, server: bool, directory: Path, join: list[str],
                 extra_client_addresses: tuple[str, ...] = (), check_update_interval: str | None = None) -> None:
        self.name, self.ip, self.server, self.dir, self.join = name, ip, server, directory, join
        self.check_update_interval = check_update_interval
        self.client_addresses = (ip, *extra_client_addresses)
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"http://{ip}:8500"
        self.http = httpx.Client(base_url=self.url, timeout=10)

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "node_name": self.name, "datacenter": "dc1", "data_dir": str(self.dir / "data"),
            "bind_addr": self.ip, "client_addr": " ".join(self.client_addresses),
            "retry_join": self.join, "retry_interval": "1s", "gossip_lan": GOSSIP_LAN,
            "disable_update_check": True, "log_level": "info", "ports": {"grpc": -1},
            # cumulative counters (Prometheus format) of every Raft apply by type, for the write counts
            "telemetry": {"prometheus_retention_time": "24h", "disable_hostname": True},
        }
        if self.server:
            config.update(server=True, bootstrap_expect=SERVERS, performance={"raft_multiplier": RAFT_MULTIPLIER})
        elif self.check_update_interval is not None:
            config["check_update_interval"] = self.check_update_interval
        return config

    def start(self, cgroup: Path) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "agent.json").write_text(json.dumps(self.config(), indent=2))
        self.process = system.spawn(["consul", "agent", "-config-file", str(self.dir / "agent.json")],
                                    self.dir / "consul.log", cgroup)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    def alive_members(self) -> set[str]:
        return {m["Name"] for m in self.http.get("/v1/agent/members").json() if m.get("Status") == 1}


class Host:
    """A client agent (None for a host whose daemon uses another host's agent),
    a dockerd and a consul-reg."""

    def __init__(self, cluster: "Cluster", index: int, name: str, ip: str, subnet: ipaddress.IPv4Network,
                 agent: Agent | None) -> None:
        self.cluster, self.index, self.name, self.ip, self.agent = cluster, index, name, ip, agent
        self.dir = cluster.dir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cgroup = cluster.cgroup / name
        self.cgroup.mkdir(parents=True, exist_ok=True)
        self.bridge = f"crf{cluster.tag}h{index}"
        self.gateway = f"{next(subnet.hosts())}/{subnet.prefixlen}"
        self.bridge_ip = str(next(subnet.hosts()))
        self.docker_host = f"unix://{self.dir / 'docker.sock'}"
        self.dockerd: subprocess.Popen[bytes] | None = None
        self.daemon: subprocess.Popen[bytes] | None = None
        self.daemon_log: Path | None = None
        self.status_port = 0
        self.docker = docker.DockerClient(base_url=self.docker_host, timeout=60, version="1.41")

    # -- dockerd ---------------------------------------------------------------

    def start_dockerd(self) -> None:
        if self.bridge not in system.bridges():
            system.make_bridge(self.bridge, self.gateway)
        self.dockerd = system.spawn(
            ["dockerd", "--host", self.docker_host, "--data-root", str(self.dir / "root"),
             "--exec-root", str(self.dir / "exec"), "--pidfile", str(self.dir / "docker.pid"),
             "--bridge", self.bridge, "--iptables=false", "--ip-forward=false", "--ip-masq=false",
             "--cgroup-parent", f"/{self.cluster.cgroup.name}/{self.name}/containers", "--log-level", "warn"],
            self.dir / "dockerd.log", self.cgroup)
        wait_until(self.docker.ping, timeout=60, message=f"{self.name}'s dockerd up")
        subprocess.run(["sh", str(ROOT / "scripts" / "make-test-image.sh")], check=True, capture_output=True,
                       env={**os.environ, "DOCKER_HOST": self.docker_host})

    def run(self, name: str, labels: dict[str, str] | None = None, ports: tuple[int, ...] = (),
            command: str | list[str] = "sleep 3600", restart: bool = False, wildcard: bool = False) -> Any:
        """A container publishing each of `ports` on this host's address (or on
        every address with `wildcard`) at a port of the run's own."""
        bind_ip = "0.0.0.0" if wildcard else self.ip
        published = {f"{port}/tcp": (bind_ip, self.cluster.ports.take(self.ip)) for port in ports}
        return self.docker.containers.run(
            IMAGE, command, detach=True, name=name, labels=labels or {}, ports=published, stop_signal="SIGKILL",
            restart_policy={"Name": "always"} if restart else None)

    def published(self, container: Any, port: int) -> int:
        container.reload()
        return int(container.attrs["HostConfig"]["PortBindings"][f"{port}/tcp"][0]["HostPort"])

    # -- consul-reg --------------------------------------------------------------

    def start_daemon(self, agent_url: str | None = None) -> None:
        """consul-reg for this host: its own agent (or `agent_url`), the shared mirrors,
        -resync as the cluster says ("0" in tests)."""
        agent = agent_url or (self.agent.url if self.agent else "")
        consul = agent.replace("http://", "")
        self.status_port = self.status_port or self.cluster.ports.take(self.ip)
        args = [sys.executable, "-m", "consul_reg", "--hostname", self.name, "-resync", self.cluster.resync,
                "--log-level", self.cluster.log_level,
                "-retry-interval", "500", "-ttl", str(ETCD_TTL), "-ttl-refresh", str(ETCD_REFRESH),
                "--status-addr", f"{self.ip}:{self.status_port}", f"consul://{consul}",
                f"{self.cluster.etcd.uri_base}/{PREFIX}", f"{self.cluster.zookeeper.uri_base}/{PREFIX}",
                f"consulkv://{consul}/{PREFIX}"]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CONSUL_", "DOCKER_"))}
        env["DOCKER_HOST"] = self.docker_host
        self.daemon_log = self.dir / f"daemon-{len(list(self.dir.glob('daemon-*.log')))}.log"
        self.daemon = system.spawn(args, self.daemon_log, self.cgroup, env)
        wait_until(lambda: httpx.get(f"http://{self.ip}:{self.status_port}/health", timeout=5).status_code == 200,
                   timeout=60, message=f"{self.name}'s daemon up, with Docker and its agent answering")

    def log(self) -> str:
        return self.daemon_log.read_text(errors="replace") if self.daemon_log and self.daemon_log.exists() else ""

    def heartbeats_sent(self) -> float:
        text = httpx.get(f"http://{self.ip}:{self.status_port}/metrics", timeout=5).text
        return sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith("consul_reg_heartbeats_sent_total"))

    # -- the whole host ------------------------------------------------------------

    def lose(self) -> None:
        """The host dies at once: daemon, agent, dockerd, containerd, shims, containers."""
        system.kill_cgroup(self.cgroup)
        for process in (self.daemon, self.dockerd, self.agent.process if self.agent else None):
            if process is not None:
                process.wait(timeout=30)
        system.unmount_under(self.dir)
        for stale in ("docker.pid", "docker.sock"):
            (self.dir / stale).unlink(missing_ok=True)

    @property
    def up(self) -> bool:
        processes = [self.dockerd, self.daemon, *([self.agent.process] if self.agent else [])]
        return all(p is not None and p.poll() is None for p in processes)

    def containers(self) -> list[Any]:
        return self.docker.containers.list(all=True)


class Cluster:
    def __init__(self, check_update_interval: str | None = "0s", resync: str = "0", log_level: str = "DEBUG") -> None:
        """`check_update_interval`: the client agents' (None: Consul's default, 5m, which
        defers the write of a check output that changed without its status; "0s" writes
        it at once, so a test sees any changing output as a write). `resync`, `log_level`:
        the daemons'."""
        self.check_update_interval, self.resync, self.log_level = check_update_interval, resync, log_level
        self.tag = uuid.uuid4().hex[:6]
        self.dir = system.RUN_ROOT / f"crf-{self.tag}"
        self.cgroup = system.cgroup_root() / f"crf-{self.tag}"
        self.ports = system.PortPool()
        self.servers: list[Agent] = []
        self.hosts: list[Host] = []
        self.extra_hosts: list[Host] = []
        self._zk: Any = None

    def start(self) -> "Cluster":
        if os.geteuid() != 0:
            raise RuntimeError("the cluster starts dockerds, bridges and cgroups: run as root")
        system.sweep_stale()
        system.make_run_dir(self.dir)
        self.cgroup.mkdir()
        self.block = system.pick_loopback_block(SERVERS + HOSTS)
        self.subnets = system.pick_subnets(HOSTS + 1)
        server_ips = [f"{self.block}.{i}" for i in range(1, SERVERS + 1)]
        for i, ip in enumerate(server_ips, 1):
            self.servers.append(Agent(f"server{i}", ip, True, self.dir / f"server{i}", server_ips))
        for i in range(1, HOSTS + 1):
            ip, subnet = f"{self.block}.{SERVERS + i}", self.subnets[i - 1]
            agent = Agent(f"host{i}", ip, False, self.dir / f"host{i}" / "agent", server_ips,
                          (str(next(subnet.hosts())),), self.check_update_interval)
            self.hosts.append(Host(self, i, f"host{i}", ip, subnet, agent))
        for host in self.hosts:  # the bridge first: the agent listens on its address too
            system.make_bridge(host.bridge, host.gateway)
        services = system.cgroup_root() / f"crf-{self.tag}" / "services"
        services.mkdir()
        self.etcd, self.zookeeper = _in_cgroup(Etcd, services)(self.dir), _in_cgroup(ZooKeeper, services)(self.dir)
        with ThreadPoolExecutor(max_workers=HOSTS + 2) as pool:
            for agent in [*self.servers, *(h.agent for h in self.hosts if h.agent)]:
                agent.start(self.cgroup / ("services" if agent.server else agent.name))
            started = [pool.submit(h.start_dockerd) for h in self.hosts]
            started += [pool.submit(self.etcd.start), pool.submit(self.zookeeper.start)]
            for future in started:
                future.result()
        self.wait_formed()
        with ThreadPoolExecutor(max_workers=HOSTS) as pool:
            for future in [pool.submit(h.start_daemon) for h in self.hosts]:
                future.result()
        return self

    def wait_formed(self) -> None:
        everyone = {a.name for a in self.servers} | {h.name for h in self.hosts if h.agent and h.agent.process}
        wait_until(lambda: self.servers[0].http.get("/v1/status/leader").json(), timeout=90, message="a leader")
        wait_until(lambda: self.servers[0].alive_members() >= everyone, timeout=90, message="every agent joined")
        wait_until(lambda: {n["Node"] for n in self.servers[0].http.get("/v1/catalog/nodes").json()} >= everyone,
                   timeout=90, message="every node in the catalog")

    def extra_host(self) -> Host:
        """One more host without an agent of its own (a dockerd only; start its daemon yourself)."""
        index = HOSTS + 1 + len(self.extra_hosts)
        host = Host(self, index, f"host{index}", f"{self.block}.{SERVERS + index}", self.subnets[HOSTS], None)
        self.extra_hosts.append(host)
        host.start_dockerd()
        return host

    def drop_extra_host(self, host: Host) -> None:
        host.lose()
        subprocess.run(["ip", "link", "delete", host.bridge], capture_output=True)
        self.extra_hosts.remove(host)

    def come_back(self, host: Host, before_daemon: Any = None) -> None:
        """A lost host boots: its agent (with its data), its dockerd (same data root),
        `before_daemon()` if given (e.g. a container started before consul-reg runs), its daemon."""
        assert host.agent is not None
        host.agent.start(host.cgroup)
        host.start_dockerd()
        wait_until(lambda: host.name in self.servers[0].alive_members(), timeout=60, message=f"{host.name} rejoined")
        if before_daemon is not None:
            before_daemon()
        host.start_daemon()

    def stop(self, keep_logs_in: Path | None = None) -> None:
        """Remove everything of this run; its logs (agents, dockerds, daemons, etcd,
        ZooKeeper) are copied to `keep_logs_in` first, for a post-mortem."""
        if keep_logs_in is not None:
            for log in [*self.dir.glob("*.log"), *self.dir.glob("*/*.log"), *self.dir.glob("*/*/*.log")]:
                target = keep_logs_in / log.relative_to(self.dir)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(log, target)
        if self._zk is not None:
            self._zk.stop()
            self._zk.close()
        system.teardown_run(self.tag)
        for agent in [*self.servers, *(h.agent for h in self.hosts if h.agent)]:
            agent.http.close()
        for host in [*self.hosts, *self.extra_hosts]:
            host.docker.close()

    @property
    def zk(self) -> Any:
        """A ZooKeeper client for reading the shared base path (one, kept)."""
        if self._zk is None:
            self._zk = self.zookeeper.client()
        return self._zk

    # -- what the cluster says ------------------------------------------------------

    def passing(self, name: str, via: Agent) -> list[tuple[str, str, str, int]]:
        """(node, service ID, address, port) of every passing instance, as `via` answers."""
        entries = via.http.get(f"/v1/health/service/{name}", params={"passing": "1"}).json()
        return sorted((e["Node"]["Node"], e["Service"]["ID"], e["Service"]["Address"], e["Service"]["Port"])
                      for e in entries)

    def dns(self, name: str, via: Host) -> list[tuple[str, int]]:
        """(address, port) of every SRV answer for `<name>.service.consul` from `via`'s agent."""
        answer = subprocess.run(["dig", f"@{via.ip}", "-p", "8600", "+short", "+time=2", "+tries=1",
                                 f"{name}.service.consul", "SRV"], capture_output=True, text=True, timeout=10)
        found = []
        for fields in (line.split() for line in answer.stdout.splitlines()):
            if len(fields) != 4:
                continue
            hexed = re.match(r"^([0-9a-f]{8})\.addr\.", fields[3])  # a service address: <hex of the IP>.addr.<dc>.consul
            target = ".".join(str(int(hexed.group(1)[i:i + 2], 16)) for i in range(0, 8, 2)) if hexed else fields[3]
            found.append((target, int(fields[2])))
        return sorted(found)

    def raft_applies(self, server: Agent | None = None) -> dict[str, float]:
        """Raft log entries `server` applied since it started, by kind ("register",
        "deregister", "kvs/set", "coordinate_batch_update", ...; "all" is the total)."""
        text = (server or self.servers[0]).http.get("/v1/agent/metrics", params={"format": "prometheus"}).text
        counts: dict[str, float] = {}
        for line in text.splitlines():
            name, _, value = line.rpartition(" ")
            if name.startswith("consul_raft_fsm_apply_count"):
                counts["all"] = float(value)
            elif name.startswith("consul_fsm_") and "_count" in name:
                kind, _, labels = name[len("consul_fsm_"):].partition("_count")
                op = labels.partition('op="')[2].partition('"')[0]
                counts[f"{kind}/{op}" if op else kind] = float(value)
        return counts

    def kv(self, via: Agent, stale: bool = False) -> dict[str, tuple[str, int]]:
        """The shared Consul KV prefix: key -> (value, ModifyIndex); `stale`: as `via` itself
        has applied it (a follower applies a write a moment after the leader answers it)."""
        response = via.http.get(f"/v1/kv/{PREFIX}/", params={"recurse": "1", **({"stale": ""} if stale else {})})
        if response.status_code == 404:
            return {}
        return {e["Key"]: (base64.b64decode(e["Value"] or "").decode(), e["ModifyIndex"]) for e in response.json()}

    def etcd_keys(self) -> dict[str, str]:
        """The shared etcd prefix: key -> the revision it was last written at."""
        b64 = base64
        prefix = f"/{PREFIX}/"
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        answer = self.etcd.http.post("/v3/kv/range", json={"key": b64.b64encode(prefix.encode()).decode(),
                                                           "range_end": b64.b64encode(end.encode()).decode()}).json()
        return {b64.b64decode(kv["key"]).decode(): kv["mod_revision"] for kv in answer.get("kvs") or []}

    def znodes(self, client: Any, name: str) -> dict[str, int]:
        """The shared ZooKeeper base path for service `name`: node -> the transaction it was last written in."""
        path = f"/{PREFIX}/{name}"
        if not client.exists(path):
            return {}
        return {child: client.exists(f"{path}/{child}").mzxid for child in client.get_children(path)
                if client.exists(f"{path}/{child}")}


def _in_cgroup(server_class: type, cgroup: Path) -> type:
    """etcd or ZooKeeper of tests/integration/servers.py, started inside the run's cgroup."""
    class InCgroup(server_class):  # type: ignore[misc, valid-type]
        def _spawn(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
            self.process = system.spawn(args, log_path, cgroup, env)
    return InCgroup


def main(argv: list[str]) -> int:
    if argv[:1] == ["sweep"]:
        print("swept:", ", ".join(system.sweep_stale()) or "nothing")
        return 0
    if argv[:1] != ["up"]:
        print(__doc__)
        return 2
    cluster = Cluster()
    try:
        cluster.start()
        print(f"run directory {cluster.dir} (logs), servers:",
              ", ".join(f"{a.name} {a.url}" for a in cluster.servers))
        for host in cluster.hosts:
            print(f"{host.name}: agent {host.agent.url if host.agent else '-'}, DNS {host.ip}:8600, "
                  f"DOCKER_HOST={host.docker_host}, consul-reg log {host.daemon_log}")
        print(f"mirrors: {cluster.etcd.uri_base}/{PREFIX} {cluster.zookeeper.uri_base}/{PREFIX} consulkv://<agent>/{PREFIX}")
        print("Ctrl-C stops and removes everything")
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    sys.exit(main(sys.argv[1:]))
