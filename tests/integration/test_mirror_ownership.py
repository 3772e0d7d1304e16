"""Two hosts' daemons sharing one mirror prefix (real Consul KV of an own agent,
real etcd of the test's own), driven through MirrorWorker as the daemon drives
it, with -resync 0 (no relist after the first): a daemon never writes over or
removes another host's key, warns once naming it and its holder, and takes the
key once the other host released it."""

from __future__ import annotations

import base64
from pathlib import Path
from types import MappingProxyType
from typing import Callable

import pytest
from loguru import logger

from consul_reg.mirrors.worker import MirrorWorker
from consul_reg.core.records import Owner, Service
from consul_reg.consul.agent import ConsulClient, ConsulEndpoint
from consul_reg.mirrors.consulkv import ConsulKVRegistry
from consul_reg.mirrors.etcd import EtcdRegistry
from consul_reg.mirrors.keys import owner_tag
from consul_reg.core.snapshot import Snapshot
from tests.integration.conftest import OwnAgent, wait_until
from tests.integration.servers import Etcd

pytestmark = pytest.mark.integration

PREFIX = "services"


def snapshot(generation: int, *services: Service) -> Snapshot:
    return Snapshot(generation=generation, desired=MappingProxyType({s.id: s for s in services}))


def web(address: str, container_id: str) -> Service:
    """The same custom SERVICE_ID on two hosts (one compose file on both, or a hostile copy)."""
    return Service(id="web", name="web", address=address, port=80, container_id=container_id)


def applied(worker: MirrorWorker, generation: int) -> Callable[[], bool]:
    return lambda: worker._applied >= generation and worker.state == "up"


def run_two_hosts(make: Callable[[Owner], object], read_key: Callable[[], str | None]) -> tuple[list[str], list[str]]:
    """Host A registers web; then host B (listed before A wrote) wants the same key;
    then A's container goes. Returns what the key held at each step, and the warnings."""
    a = MirrorWorker(make(Owner("host-a")), Owner("host-a"), 0.5)
    b = MirrorWorker(make(Owner("host-b")), Owner("host-b"), 0.5)
    history: list[str] = []
    warnings: list[str] = []
    sink = logger.add(lambda message: warnings.append(message.record["message"]), level="WARNING")
    try:
        for worker in (a, b):
            worker.start()
            worker.offer(snapshot(1), relist=True)
            wait_until(applied(worker, 1), message="first listing")
        a.offer(snapshot(2, web("10.0.0.1", "a1")))
        wait_until(applied(a, 2), message="host A's write")
        history.append(f"after A wrote: {read_key()}")
        b.offer(snapshot(2, web("10.0.0.2", "b1")))
        wait_until(applied(b, 2), message="host B's step")
        history.append(f"after B's step: {read_key()}")
        a.offer(snapshot(3))  # host A's container is gone
        wait_until(applied(a, 3), message="host A's removal")
        history.append(f"after A's container left: {read_key()}")
        # Final state: B's container still runs. The key must hold B's record (B writes
        # it once A's own key is gone; a blocked key is looked at again every 5 s).
        final = wait_until(lambda: (value := read_key()) and "10.0.0.2:80" in value and value,
                           message=f"host B's write once A's key is gone (so far: {history})")
        history.append(f"final: {final}")
        return history, warnings
    finally:
        logger.remove(sink)
        a.stop()
        b.stop()


def test_consul_kv_never_writes_over_or_removes_another_hosts_key(tmp_path: Path) -> None:
    """README "Mirror registries": "a daemon only writes over or removes keys that are its
    own". Host B plans against its listing from before A wrote (with -resync 0: its start):
    its write is a check-and-set that finds A's key, so it leaves it (one warning naming
    the key and A's owner tag), and writes its own once A's container left and A removed
    its key."""
    agent = OwnAgent(tmp_path).start()
    api = agent.api()
    key = f"{PREFIX}/web/web"

    def make(owner: Owner) -> ConsulKVRegistry:
        return ConsulKVRegistry(ConsulClient(ConsulEndpoint("http", "127.0.0.1", agent.http_port)), PREFIX, owner)

    def read_key() -> str | None:
        response = api.http.get(f"/v1/kv/{key}")
        entries = response.json() if response.status_code == 200 else []
        if not entries:
            return None
        owner = {owner_tag(Owner("host-a")): "A", owner_tag(Owner("host-b")): "B"}.get(entries[0]["Flags"], "?")
        return f"{base64.b64decode(entries[0]['Value']).decode()} (owner {owner})"

    try:
        history, warnings = run_two_hosts(make, read_key)
    finally:
        api.http.close()
        agent.stop()
    assert history[1] == "after B's step: 10.0.0.1:80 (owner A)" and history[-1] == "final: 10.0.0.2:80 (owner B)", \
        history
    contested = [w for w in warnings if key in w]
    assert len(contested) == 1 and f"owner tag {owner_tag(Owner('host-a'))}" in contested[0] \
        and "'10.0.0.1:80'" in contested[0], warnings


def test_etcd_never_writes_over_or_removes_another_hosts_key(tmp_path: Path) -> None:
    """The same for etcd: "keys of another host, lease or session are never written or
    removed": put and delete are transactions on the mod_revision the owner was read at;
    the warning names the host whose lease marker holds the key's lease."""
    etcd = Etcd(tmp_path).start()
    leases: dict[str, str] = {}

    def make(owner: Owner) -> EtcdRegistry:
        registry = EtcdRegistry("127.0.0.1", etcd.port, PREFIX, owner, 60)
        leases[str(owner)] = ""
        original = registry.etcd.ensure_lease

        def ensure() -> bool:
            new = original()
            leases[str(owner)] = registry.etcd.lease_id
            return new

        registry.etcd.ensure_lease = ensure  # type: ignore[method-assign]
        return registry

    def read_key() -> str | None:
        found = etcd.keys(f"/{PREFIX}/web/web")
        if not found:
            return None
        value, lease = next(iter(found.values()))
        owner = {v: k for k, v in leases.items()}.get(str(lease), "?")
        return f"{value} (owner {'A' if owner == 'host-a' else 'B' if owner == 'host-b' else owner})"

    try:
        history, warnings = run_two_hosts(make, read_key)
    finally:
        etcd.kill()
    assert history[1] == "after B's step: 10.0.0.1:80 (owner A)" and history[-1] == "final: 10.0.0.2:80 (owner B)", \
        history
    contested = [w for w in warnings if f"/{PREFIX}/web/web" in w]
    assert len(contested) == 1 and "host 'host-a'" in contested[0] and leases["host-a"] in contested[0], warnings
