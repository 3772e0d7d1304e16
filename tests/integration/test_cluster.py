"""Many hosts on a real Consul cluster (issue 14): 3 servers, 3 hosts of a client
agent + dockerd + consul-reg each, shared etcd / ZooKeeper / Consul KV mirrors
(tests/integration/cluster.py). The cluster is started once for the module;
each test starts from every host up and no container anywhere."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from tests.integration import cluster_sys as system
from tests.integration.cluster import PREFIX, Cluster, Host
from tests.integration.conftest import free_port, wait_until

pytestmark = pytest.mark.integration
# Consul marks a lost node failed in ~3 s here (cluster.GOSSIP_LAN; 12 s at
# most), the leader then sets serfHealth critical; etcd leases lapse in 8 s,
# ZooKeeper sessions in 6 s. The deadlines leave room for a starved machine.
LOSS_DEADLINE = 60.0
DEADLINE = 45.0
METRICS = "printf 'fleet_demo_up 1\\n' > /www/metrics && exec httpd -f -p 80 -h /www"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    fleet = Cluster()
    try:
        fleet.start()
        yield fleet
    finally:  # every log stays in pytest's temporary directory (the last three runs are kept)
        fleet.stop(keep_logs_in=tmp_path_factory.mktemp("cluster-logs"))


@pytest.fixture
def fleet(cluster: Cluster) -> Iterator[Cluster]:
    """The module's cluster with every host up; what a test started is removed after it
    and the test after it starts from an empty catalog, KV prefix, etcd prefix and znode tree."""
    _repair(cluster)
    yield cluster
    for extra in list(cluster.extra_hosts):
        cluster.drop_extra_host(extra)
    _repair(cluster)
    wait_until(lambda: _forget_extra_hosts(cluster), timeout=DEADLINE, message="agent-less hosts' services removed")
    for host in cluster.hosts:
        for container in host.containers():
            container.remove(force=True)
    wait_until(lambda: _empty(cluster), timeout=DEADLINE, message="every service and mirror key of the test gone")


def _repair(cluster: Cluster) -> None:
    """Boot again any host a failed test left down (a Consul KV key is only removed by its host)."""
    for host in cluster.hosts:
        if not host.up:
            host.lose()
            cluster.come_back(host)


def _forget_extra_hosts(cluster: Cluster) -> bool:
    """What agent-less hosts registered through a host's agent stays there when they are gone: remove it."""
    for host in cluster.hosts:
        assert host.agent is not None
        for service_id, service in host.agent.http.get("/v1/agent/services").json().items():
            if (service.get("Meta") or {}).get("consul_reg_host") != host.name:
                host.agent.http.put(f"/v1/agent/service/deregister/{service_id}").raise_for_status()
    for key in cluster.kv(cluster.servers[0]):
        if not any(f"/{h.name}:" in key for h in cluster.hosts):
            cluster.servers[0].http.delete(f"/v1/kv/{key}").raise_for_status()
    return True


def _empty(cluster: Cluster) -> bool:
    server = cluster.servers[0]
    for host in cluster.hosts:
        if host.up and server.http.get(f"/v1/catalog/node/{host.name}").json()["Services"]:
            return False
    zk = cluster.zk
    znodes = any(zk.get_children(f"/{PREFIX}/{name}") for name in (zk.get_children(f"/{PREFIX}")
                                                                    if zk.exists(f"/{PREFIX}") else []))
    return not znodes and not cluster.kv(server) and not cluster.etcd_keys()


@pytest.fixture
def zookeeper(cluster: Cluster) -> Any:
    return cluster.zk


def _read(fetch: Any) -> Any:
    """One answer from the cluster, retried while it has none (e.g. a leader election)."""
    return wait_until(lambda: (fetch(),), timeout=DEADLINE, message="an answer from the cluster")[0]


def _uid() -> str:
    return uuid.uuid4().hex[:6]


def _instance(host: Host, name: str, container: Any, port: int = 80) -> tuple[str, str, str, int]:
    """(node, service ID, address, port) as the catalog should hold it."""
    return host.name, f"{host.name}:{container.name}:{port}", host.ip, host.published(container, port)


def _addresses(instances: list[tuple[str, str, str, int]]) -> list[tuple[str, int]]:
    return sorted((address, port) for _, _, address, port in instances)


def test_every_agent_lists_every_host_s_containers_in_catalog_and_dns(fleet: Cluster) -> None:
    name = f"web-{_uid()}"
    expected = sorted(_instance(h, name, h.run(f"{name}-{h.index}", {"SERVICE_NAME": name}, (80,)))
                      for h in fleet.hosts)
    for agent in [*(h.agent for h in fleet.hosts if h.agent), *fleet.servers]:
        wait_until(lambda: fleet.passing(name, agent) == expected, timeout=DEADLINE,
                   message=f"the three instances through {agent.name}")
    for host in fleet.hosts:  # <name>.service.consul through host 3's agent lists hosts 1 and 2 too
        wait_until(lambda: fleet.dns(name, host) == _addresses(expected), timeout=DEADLINE,
                   message=f"three SRV answers from {host.name}'s DNS")


def test_a_lost_host_leaves_and_returns_without_duplicates(fleet: Cluster, zookeeper: Any) -> None:
    name = f"loss-{_uid()}"
    host1, host2, host3 = fleet.hosts
    a = host1.run(f"{name}-a", {"SERVICE_NAME": name}, (80,))
    b1 = host2.run(f"{name}-b1", {"SERVICE_NAME": name}, (80,), restart=True)  # comes back with dockerd
    b2 = host2.run(f"{name}-b2", {"SERVICE_NAME": name}, (80,))  # does not: its record must go
    c = host3.run(f"{name}-c", {"SERVICE_NAME": name}, (80,))
    everyone = sorted([_instance(host1, name, a), _instance(host2, name, b1), _instance(host2, name, b2),
                       _instance(host3, name, c)])
    survivors = [i for i in everyone if i[0] != "host2"]
    wait_until(lambda: fleet.passing(name, host3.agent) == everyone, timeout=DEADLINE, message="four instances")
    wait_until(lambda: len(fleet.etcd_keys()) == 4 and len(fleet.znodes(zookeeper, name)) == 4
               and len(fleet.kv(fleet.servers[0])) == 4, timeout=DEADLINE, message="every mirror holds four keys")
    etcd_before, zk_before = fleet.etcd_keys(), fleet.znodes(zookeeper, name)
    kv_before = _read(lambda: fleet.kv(fleet.servers[0]))

    host2.lose()
    wait_until(lambda: fleet.passing(name, host1.agent) == survivors, timeout=LOSS_DEADLINE,
               message="host2's instances out of the passing set (serfHealth)")
    wait_until(lambda: fleet.dns(name, host3) == _addresses(survivors), timeout=DEADLINE,
               message="host2's instances out of DNS")
    # Its ZooKeeper session and its etcd lease lapse: its keys go, the others' stay as they were
    # (the same revision / transaction / index: never removed, written again or taken over).
    wait_until(lambda: fleet.etcd_keys() == {k: v for k, v in etcd_before.items() if "/host2:" not in k},
               timeout=LOSS_DEADLINE, message="host2's etcd keys gone with its lease, only them")
    wait_until(lambda: fleet.znodes(zookeeper, name) == {k: v for k, v in zk_before.items()
                                                          if not k.startswith(f"{host2.ip}:")},
               timeout=LOSS_DEADLINE, message="host2's znodes gone with its session, only them")
    assert _read(lambda: fleet.kv(fleet.servers[0])) == kv_before  # no lease in Consul KV: only its owner removes a key

    b3: list[Any] = []  # started on host2 after its dockerd is back, before its daemon is
    fleet.come_back(host2, before_daemon=lambda: b3.append(host2.run(f"{name}-b3", {"SERVICE_NAME": name}, (80,))))
    back = sorted([*survivors, _instance(host2, name, b1), _instance(host2, name, b3[0])])
    wait_until(lambda: fleet.passing(name, host1.agent) == back, timeout=DEADLINE,
               message="host2's running containers back and passing, the one that did not restart gone")
    every_record = _read(lambda: host3.agent.http.get(f"/v1/health/service/{name}").json())  # passing or not
    assert sorted(e["Service"]["ID"] for e in every_record) == [i[1] for i in back]
    wait_until(lambda: fleet.dns(name, host3) == _addresses(back), timeout=DEADLINE, message="DNS has them back")
    host2_keys = {f"{PREFIX}/{name}/{i[1]}" for i in back if i[0] == "host2"}
    others = {k for k in kv_before if "/host2:" not in k}
    wait_until(lambda: set(fleet.kv(fleet.servers[0])) == others | host2_keys, timeout=DEADLINE,
               message="host2's KV keys: the one of the container that did not restart removed by its daemon")
    wait_until(lambda: set(fleet.etcd_keys()) == {f"/{k}" for k in others | host2_keys}, timeout=DEADLINE,
               message="host2's etcd keys back")
    wait_until(lambda: len(fleet.znodes(zookeeper, name)) == 4, timeout=DEADLINE, message="host2's znodes back")
    # The other hosts' keys were never removed nor written again meanwhile.
    kv_after, etcd_after = _read(lambda: fleet.kv(fleet.servers[0])), fleet.etcd_keys()
    zk_after = fleet.znodes(zookeeper, name)
    assert {k: kv_after[k] for k in others} == {k: kv_before[k] for k in others}
    assert {k: etcd_after[f"/{k}"] for k in others} == {k: etcd_before[f"/{k}"] for k in others}
    assert {k: v for k, v in zk_after.items() if not k.startswith(f"{host2.ip}:")} == \
        {k: v for k, v in zk_before.items() if not k.startswith(f"{host2.ip}:")}


def test_stopped_containers_remove_only_their_host_s_mirror_keys(fleet: Cluster, zookeeper: Any) -> None:
    name = f"mirror-{_uid()}"
    host1 = fleet.hosts[0]
    mine = [host1.run(f"{name}-1{i}", {"SERVICE_NAME": name}, (80,)) for i in range(2)]
    for host in fleet.hosts[1:]:
        host.run(f"{name}-{host.index}", {"SERVICE_NAME": name}, (80,))
    wait_until(lambda: len(fleet.etcd_keys()) == 4 and len(fleet.znodes(zookeeper, name)) == 4
               and len(fleet.kv(fleet.servers[0])) == 4, timeout=DEADLINE, message="every mirror holds four keys")
    etcd_before, zk_before = fleet.etcd_keys(), fleet.znodes(zookeeper, name)
    kv_before = _read(lambda: fleet.kv(fleet.servers[0]))
    for container in mine:
        container.kill()
    wait_until(lambda: fleet.etcd_keys() == {k: v for k, v in etcd_before.items() if "/host1:" not in k},
               timeout=DEADLINE, message="host1's etcd keys removed, the others untouched")
    wait_until(lambda: fleet.znodes(zookeeper, name) == {k: v for k, v in zk_before.items()
                                                          if not k.startswith(f"{host1.ip}:")},
               timeout=DEADLINE, message="host1's znodes removed, the others untouched")
    wait_until(lambda: fleet.kv(fleet.servers[0]) == {k: v for k, v in kv_before.items() if "/host1:" not in k},
               timeout=DEADLINE, message="host1's KV keys removed, the others untouched")


def _route_source() -> str:
    """This machine's primary address, as `ip route` tells it (the interface of the default route)."""
    words = subprocess.run(["ip", "-4", "-o", "route", "get", "198.51.100.1"], capture_output=True,
                           text=True).stdout.split()
    return words[words.index("src") + 1] if "src" in words else "127.0.0.1"  # no route: the daemon's fallback


def test_daemon_against_another_host_s_agent(fleet: Cluster) -> None:
    name = f"remote-{_uid()}"
    host1, host2 = fleet.hosts[0], fleet.hosts[1]
    host4 = fleet.extra_host()  # a host without an agent of its own: its daemon uses host2's
    host4.start_daemon(agent_url=f"http://{host2.bridge_ip}:8500")  # host2's agent, on a non-loopback address
    container = host4.run(f"{name}-1", {"SERVICE_NAME": name}, (80,), wildcard=True)
    expected = [("host2", f"host4:{container.name}:80", _route_source(), host4.published(container, 80))]
    wait_until(lambda: fleet.passing(name, host1.agent) == expected, timeout=DEADLINE,
               message="registered on host2's node at this host's primary address")
    assert "the Consul agent is not local" in host4.log()
    # The catch: its services belong to host2's node and go with it, though host4 runs on.
    assert host2.agent is not None
    host2.agent.kill()
    wait_until(lambda: fleet.passing(name, host1.agent) == [], timeout=LOSS_DEADLINE,
               message="host4's service gone from the passing set with host2's agent")
    container.reload()
    assert host4.daemon is not None and host4.daemon.poll() is None and container.status == "running"
    host2.agent.start(host2.cgroup)
    wait_until(lambda: fleet.passing(name, host1.agent) == expected, timeout=DEADLINE,
               message="host4's service passing again with host2's agent")
    # The other side of it: host4 lost, nothing removes its services from host2's node (no check
    # ties them to host4), while its etcd keys lapse with its lease.
    fleet.drop_extra_host(host4)
    wait_until(lambda: not [k for k in fleet.etcd_keys() if "/host4:" in k], timeout=LOSS_DEADLINE,
               message="host4's etcd lease lapsed")
    wait_until(lambda: fleet.passing(name, host1.agent) == expected, timeout=DEADLINE,
               message="host4's service still passing on host2's node")


def test_prometheus_finds_other_hosts_containers_through_host3_s_agent(fleet: Cluster, tmp_path: Path) -> None:
    name = f"metrics-{_uid()}"
    host1, host2, host3 = fleet.hosts
    targets = {}
    for host in (host1, host2):
        container = host.run(f"{name}-{host.index}", {"SERVICE_NAME": name, "SERVICE_TAGS": "prometheus"}, (80,),
                             command=["sh", "-c", METRICS])
        targets[f"{host.ip}:{host.published(container, 80)}"] = "up"
    host3.run(f"{name}-untagged", {"SERVICE_NAME": name}, (80,), command=["sh", "-c", METRICS])
    port = free_port()
    (tmp_path / "prometheus.yml").write_text(f"""
scrape_configs:
  - job_name: fleet
    scrape_interval: 1s
    consul_sd_configs:
      - server: {host3.ip}:8500
        services: [{name}]
        refresh_interval: 1s
    relabel_configs:
      - source_labels: [__meta_consul_tags]
        regex: .*,prometheus,.*
        action: keep
""")
    prometheus = system.spawn(["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                  f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                 tmp_path / "prometheus.log", fleet.cgroup / "services")
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5)
    try:
        def scraped() -> dict[str, str]:
            active = api.get("/api/v1/targets").json()["data"]["activeTargets"]
            return {t["labels"]["instance"]: t["health"] for t in active}
        wait_until(lambda: scraped() == targets, timeout=90, message="hosts 1 and 2's containers scraped")
    finally:
        api.close()
        prometheus.kill()
        prometheus.wait(timeout=30)


def test_heartbeats_cause_no_writes_on_the_servers(fleet: Cluster) -> None:
    name = f"worker-{_uid()}"
    host1 = fleet.hosts[0]
    worker = host1.run(f"{name}-1", {"SERVICE_NAME": name, "SERVICE_HEARTBEAT_TTL": "10s",
                                     "SERVICE_HEARTBEAT_INTERVAL": "1s"})
    check_id = f"service:host1:{worker.name}:heartbeat"

    # Every read below is server 1's own (stale): its write counters move when it applies an
    # entry, which a follower does a moment after the leader answered the write.
    def catalog_check() -> dict[str, Any]:
        checks = fleet.servers[0].http.get(f"/v1/health/checks/{name}", params={"stale": ""}).json()
        return {c["CheckID"]: c for c in checks}.get(check_id, {})
    wait_until(lambda: catalog_check().get("Status") == "passing", timeout=DEADLINE, message="the worker passing")
    # The mirrors write the worker's key on their own threads, after the agent: a Consul KV write
    # still to come would count in the window below.
    key = f"/{name}/host1:{worker.name}"
    wait_until(lambda: [k for k in fleet.kv(fleet.servers[0], stale=True) if k.endswith(key)], timeout=DEADLINE,
               message="the worker's Consul KV mirror key written")
    def catalog_writes() -> dict[str, float]:
        applies = _read(fleet.raft_applies)
        return {k: v for k, v in applies.items() if k.split("/")[0] in ("register", "deregister", "kvs", "txn")}

    # A write of the heartbeats would show in every round; one of something else (a node flapping
    # on a starved machine, a write applied late) in one round only.
    for _ in range(3):
        before, sent = catalog_writes(), host1.heartbeats_sent()
        # Five heartbeats the agent took (the daemon counts answered updates); the host agents
        # write a changed output at once (check_update_interval 0s), so any change would show.
        wait_until(lambda: host1.heartbeats_sent() >= sent + 5, timeout=DEADLINE, message="five heartbeats sent")
        after = catalog_writes()
        if after == before:
            break
    assert after == before
    assert _read(catalog_check)["Status"] == "passing"
    # The control: one TTL update with another output is one write on the servers.
    host1.agent.http.put(f"/v1/agent/check/update/{check_id}",
                         json={"Status": "passing", "Output": "control"}).raise_for_status()
    wait_until(lambda: catalog_writes().get("register", 0) > before.get("register", 0), timeout=DEADLINE,
               message="the control's output change written to the catalog")
