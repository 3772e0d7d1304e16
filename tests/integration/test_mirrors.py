"""Mirror registries against real servers: Consul KV, etcd v3, SkyDNS2 layout, ZooKeeper."""

from __future__ import annotations

import base64
import json
import signal

import httpx
import pytest
from kazoo.security import make_digest_acl

from tests.integration.conftest import free_port, host_port, status_args, wait_until
from tests.integration.servers import Etcd, ZooKeeper

pytestmark = pytest.mark.integration
HOST_IP = "192.0.2.20"


@pytest.fixture
def etcd(tmp_path):
    server = Etcd(tmp_path).start()
    yield server
    server.thaw() if server.process and server.process.poll() is None else None
    server.kill()


@pytest.fixture
def zookeeper(tmp_path):
    server = ZooKeeper(tmp_path).start()
    yield server
    server.kill()


def kv(consul_api, prefix: str) -> dict[str, str]:
    import base64

    response = consul_api.http.get(f"/v1/kv/{prefix}", params={"recurse": "true"})
    if response.status_code == 404:
        return {}
    return {e["Key"]: base64.b64decode(e["Value"] or "").decode() for e in response.json()}


def test_consulkv_layout_and_removal(start_daemon, run_container, consul_api, hostname):
    prefix = f"kvtest-{hostname}"
    start_daemon("-ip", HOST_IP, "consul://127.0.0.1:8500", f"consulkv://127.0.0.1:8500/{prefix}")
    web = run_container(ports={"80/tcp": None}, labels={"SERVICE_NAME": "web"})
    key = f"{prefix}/web/{hostname}:{web.name}:80"
    wait_until(lambda: kv(consul_api, prefix) == {key: f"{HOST_IP}:{host_port(web, '80/tcp')}"},
               message="KV key with registrator's layout")
    assert f"{hostname}:{web.name}:80" in consul_api.services()  # the primary got it too
    web.stop(timeout=1)
    wait_until(lambda: kv(consul_api, prefix) == {}, message="key removed")


def test_consulkv_alone_and_missing_prefix(start_daemon, run_container, consul_api, hostname):
    prefix = f"kvalone-{hostname}"
    start_daemon("-ip", HOST_IP, f"consulkv://127.0.0.1:8500/{prefix}")
    web = run_container(ports={"80/tcp": None})
    wait_until(lambda: len(kv(consul_api, prefix)) == 1, message="written to KV only")
    assert not any(sid.startswith(hostname) for sid in consul_api.services())
    assert web.name in next(iter(kv(consul_api, prefix)))


def test_etcd_layout_lease_and_expiry_after_daemon_death(etcd, start_daemon, run_container, hostname):
    daemon = start_daemon("-ip", HOST_IP, "-ttl", "4", "-ttl-refresh", "1", f"{etcd.uri_base}/services")
    web = run_container(ports={"80/tcp": None}, labels={"SERVICE_NAME": "web"})
    key = f"/services/web/{hostname}:{web.name}:80"
    value, lease = wait_until(lambda: etcd.keys("/services/").get(key), message="etcd key")
    assert value == f"{HOST_IP}:{host_port(web, '80/tcp')}" and lease not in ("", "0")
    daemon.stop(signal.SIGKILL)
    wait_until(lambda: key not in etcd.keys("/services/"), timeout=15, message="keys expire with the lease")


def test_etcd_converges_after_server_restart_and_primary_is_never_held_up(etcd, start_daemon, run_container,
                                                                         consul_api, hostname):
    start_daemon("-ip", HOST_IP, "-retry-interval", "200", "consul://127.0.0.1:8500", f"{etcd.uri_base}/services")
    first = run_container(ports={"80/tcp": None})
    wait_until(lambda: len(etcd.keys("/services/")) == 1, message="first key")
    etcd.freeze()  # a mirror that hangs: the primary must not wait for it
    second = run_container(ports={"81/tcp": None})
    wait_until(lambda: f"{hostname}:{second.name}:81" in consul_api.services(), message="primary not held up")
    etcd.thaw()
    etcd.kill()
    first.remove(force=True)
    third = run_container(ports={"82/tcp": None})
    wait_until(lambda: f"{hostname}:{third.name}:82" in consul_api.services(), message="primary with etcd down")
    etcd.start()
    wait_until(lambda: sorted(k.rsplit(":", 1)[1] for k in etcd.keys("/services/")) == ["81", "82"], timeout=40,
               message="etcd converged after its restart")


def test_two_daemons_share_a_prefix(etcd, start_daemon, run_container, hostname):
    start_daemon("-ip", HOST_IP, f"{etcd.uri_base}/shared")
    other = start_daemon("--hostname", hostname + "-b", "-ip", HOST_IP, f"{etcd.uri_base}/shared")
    run_container(ports={"80/tcp": None})
    wait_until(lambda: len(etcd.keys("/shared/")) == 2, message="each host wrote its key")
    other.stop(signal.SIGTERM)
    other_daemon = start_daemon("--hostname", hostname + "-b", "-ip", HOST_IP, f"{etcd.uri_base}/shared")
    other_daemon.wait_log(f"mirror etcd 127.0.0.1:{etcd.port}/shared is up")  # after its first sync
    assert len(etcd.keys("/shared/")) == 2  # neither removed the other's key
    assert "deregistered" not in other_daemon.log()


def test_skydns2_layout_and_non_dns_ids(etcd, start_daemon, run_container, hostname):
    daemon = start_daemon("-ip", HOST_IP, "-ttl", "30", "-ttl-refresh", "10", f"skydns2://127.0.0.1:{etcd.port}/"
                          "skydns.local")
    web = run_container(ports={"80/tcp": None}, labels={"SERVICE_NAME": "web", "SERVICE_ID": f"web-{hostname}"})
    run_container(ports={"81/tcp": None}, labels={"SERVICE_NAME": "api"})  # default ID has ':': not a DNS label
    key = f"/skydns/local/skydns/web/web-{hostname}"
    record = wait_until(lambda: etcd.keys("/skydns/").get(key), message="skydns record")
    assert json.loads(record[0]) == {"host": HOST_IP, "port": host_port(web, "80/tcp"), "ttl": 30}
    daemon.wait_log("is not a DNS label")
    # The refusal is logged as the mirror plans its step: a later container's record, written by a
    # step after it, shows that step wrote nothing for "api".
    marker = run_container(ports={"82/tcp": None}, labels={"SERVICE_NAME": "web", "SERVICE_ID": f"m-{hostname}"})
    marker_key = f"/skydns/local/skydns/web/m-{hostname}"
    wait_until(lambda: marker_key in etcd.keys("/skydns/"), message="a later container's record")
    assert sorted(etcd.keys("/skydns/")) == sorted([key, marker_key])
    marker.remove(force=True)


def test_zookeeper_nodes_are_ephemeral_and_recreated(zookeeper, start_daemon, run_container, hostname):
    daemon = start_daemon("-ip", HOST_IP, "-retry-interval", "200", f"{zookeeper.uri_base}/services")
    web = run_container(ports={"80/tcp": None}, labels={"SERVICE_NAME": "web", "SERVICE_TAGS": "a,b",
                                                        "SERVICE_ZONE": "z1"})
    client = zookeeper.client()
    try:
        port = host_port(web, "80/tcp")
        path = f"/services/web/{HOST_IP}:{port}"
        data = wait_until(lambda: client.exists(path) and client.get(path)[0], message="znode")
        assert json.loads(data) == {"Name": "web", "IP": HOST_IP, "PublicPort": port, "PrivatePort": 80,
                                    "ContainerID": web.id[:12], "Tags": ["a", "b"], "Attrs": {"zone": "z1"}}
        assert client.exists(path).ephemeralOwner != 0
        zookeeper.kill()
        zookeeper.start()
        client.stop()
        client = zookeeper.client()
        wait_until(lambda: client.exists(path), timeout=40, message="znode back after the server restart")
        daemon.stop(signal.SIGKILL)
        wait_until(lambda: not client.exists(path), timeout=20, message="ephemeral node gone with the session")
    finally:
        client.stop()


def test_on_success_keeps_a_failed_container_in_mirrors_too(etcd, start_daemon, run_container, consul_api,
                                                            hostname):
    daemon = start_daemon("-ip", HOST_IP, "-deregister", "on-success", *status_args(), "consul://127.0.0.1:8500",
                          f"{etcd.uri_base}/services")
    failing = run_container(["sh", "-c", "sleep 2; exit 3"], ports={"80/tcp": None})
    key = f"/services/busybox/{hostname}:{failing.name}:80"
    wait_until(lambda: key in etcd.keys("/services/"), message="key written")
    wait_until(lambda: failing.reload() or failing.status == "exited", message="container failed")
    for _ in range(2):  # with -resync 0, full passes asked by SIGHUP: they keep it too
        daemon.full_pass_by_sighup()
    # The mirror takes the passes' snapshot on its own thread, later. A container started now is
    # written by a step that begins after them, and removed by the next step: once its key is
    # gone, the step that took their snapshot is over.
    marker = run_container(ports={"81/tcp": None})
    marker_key = f"/services/busybox/{hostname}:{marker.name}:81"
    wait_until(lambda: marker_key in etcd.keys("/services/"), message="a later container's key written")
    marker.remove(force=True)
    wait_until(lambda: marker_key not in etcd.keys("/services/"), message="and removed")
    assert key in etcd.keys("/services/")
    assert f"{hostname}:{failing.name}:80" in consul_api.services()
    failing.remove()
    wait_until(lambda: key not in etcd.keys("/services/"), message="removed with its container")


def _ports(etcd, prefix: str = "/services/") -> list[str]:
    return sorted(k.rsplit(":", 1)[1] for k in etcd.keys(prefix))


def test_etcd_frozen_while_a_container_goes_converges_once_resumed(etcd, start_daemon, run_container, consul_api,
                                                                  hostname):
    start_daemon("-ip", HOST_IP, "-retry-interval", "200", "consul://127.0.0.1:8500", f"{etcd.uri_base}/services")
    leaving = run_container(ports={"80/tcp": None})
    staying = run_container(ports={"81/tcp": None})
    wait_until(lambda: _ports(etcd) == ["80", "81"], message="two keys")
    etcd.freeze()
    leaving.remove(force=True)
    wait_until(lambda: set(consul_api.services_of(hostname)) == {f"{hostname}:{staying.name}:81"},
               message="the primary follows at once")
    etcd.thaw()
    wait_until(lambda: _ports(etcd) == ["81"], timeout=5, message="etcd converged within 5 s of resuming")


def test_etcd_killed_and_restarted_converges_within_seconds(etcd, start_daemon, run_container, consul_api,
                                                           hostname):
    start_daemon("-ip", HOST_IP, "-retry-interval", "200", "consul://127.0.0.1:8500", f"{etcd.uri_base}/services")
    leaving = run_container(ports={"80/tcp": None})
    wait_until(lambda: _ports(etcd) == ["80"], message="first key")
    etcd.kill()
    leaving.remove(force=True)
    arriving = run_container(ports={"82/tcp": None})
    wait_until(lambda: set(consul_api.services_of(hostname)) == {f"{hostname}:{arriving.name}:82"},
               message="the primary follows with etcd down")
    etcd.start()
    wait_until(lambda: _ports(etcd) == ["82"], timeout=5, message="etcd converged within 5 s of its restart")


def test_etcd_lease_lost_between_keepalives_is_replaced_at_the_next_write(etcd, start_daemon, run_container,
                                                                          hostname):
    """etcd lost the daemon's lease between two keep-alives (revoked here; an etcd restarted
    without its data does the same): the write it refuses ("requested lease not found") makes
    the mirror take a new lease at once and put every key again, not at the next keep-alive."""
    start_daemon("-ip", HOST_IP, "-ttl", "120", "-ttl-refresh", "60", f"{etcd.uri_base}/services")
    run_container(ports={"80/tcp": None})
    first = wait_until(lambda: etcd.keys("/services/"), message="first key")
    (lease,) = {lease for _, lease in first.values()}
    etcd.http.post("/v3/lease/revoke", json={"ID": lease}).raise_for_status()
    assert etcd.keys("/services/") == {}
    run_container(ports={"81/tcp": None})
    both = wait_until(lambda: len(keys := etcd.keys("/services/")) == 2 and keys, timeout=15,
                      message="both keys put again well before the next keep-alive (60 s)")
    assert len({lease for _, lease in both.values()} | {lease}) == 2, "on one new lease"


def test_zookeeper_restarted_with_the_session_expired_gets_its_nodes_back(zookeeper, start_daemon, run_container,
                                                                         hostname):
    start_daemon("-ip", HOST_IP, "-retry-interval", "200", "consul://127.0.0.1:8500",
                 f"{zookeeper.uri_base}/services")
    web = run_container(ports={"80/tcp": None}, labels={"SERVICE_NAME": "web"})
    path = f"/services/web/{HOST_IP}:{host_port(web, '80/tcp')}"
    client = zookeeper.client()
    try:
        wait_until(lambda: client.exists(path), message="znode")
        client.stop()
        zookeeper.kill()
        zookeeper.wipe()  # a fresh server: it knows no session, the daemon's is expired
        zookeeper.start()
        client = zookeeper.client()
        # Only a fresh session brings it back (the old one is refused for ever): tried 2 s into the
        # outage (FRESH_SESSION_AFTER_SECONDS), after any call queued meanwhile gave up (CALL_SECONDS).
        wait_until(lambda: client.exists(path), message="znode back on a fresh session")
        assert client.exists(path).ephemeralOwner != 0
    finally:
        client.stop()


def test_zookeeper_node_under_a_foreign_acl_costs_that_node_only(zookeeper, start_daemon, run_container, hostname):
    """Someone else's ACL on /services/payments (digest auth, set before the daemon writes):
    the refused node is warned once and left; every other node is written, before it
    and after it, and the mirror is reported up."""
    owner = zookeeper.client()
    owner.add_auth("digest", "other-tenant:secret")
    foreign_acl = [make_digest_acl("other-tenant", "secret", all=True)]
    owner.ensure_path("/services")  # open, as the daemon would make it
    owner.create("/services/payments", b"not consul-reg's", acl=foreign_acl)
    client = zookeeper.client()
    status = f"127.0.0.1:{free_port()}"
    daemon = start_daemon("-ip", HOST_IP, "-retry-interval", "200", "--status-addr", status,
                          "consul://127.0.0.1:8500", f"{zookeeper.uri_base}/services")
    try:
        # The refused service comes first: nothing planned after it may be lost.
        payments = run_container(ports={"80/tcp": None}, labels={"SERVICE_NAME": "payments"})
        refused = f"/services/payments/{HOST_IP}:{host_port(payments, '80/tcp')}"
        daemon.wait_log(f"{refused} not written: NoAuthError")
        web = run_container(ports={"80/tcp": None}, labels={"SERVICE_NAME": "web"})
        api = run_container(ports={"81/tcp": None}, labels={"SERVICE_NAME": "api"})
        written = [f"/services/web/{HOST_IP}:{host_port(web, '80/tcp')}",
                   f"/services/api/{HOST_IP}:{host_port(api, '81/tcp')}"]
        wait_until(lambda: all(client.exists(path) for path in written), timeout=30,
                   message="the other services' nodes written")
        mirror = f"zookeeper 127.0.0.1:{zookeeper.port}/services"
        assert httpx.get(f"http://{status}/health").json()["mirrors"] == {mirror: "up"}
        # A later pass (one more container, then its removal) writes again, and warns no more.
        marker = run_container(ports={"82/tcp": None}, labels={"SERVICE_NAME": "web"})
        marker_path = f"/services/web/{HOST_IP}:{host_port(marker, '82/tcp')}"
        wait_until(lambda: client.exists(marker_path), message="a later container's node written")
        marker.remove(force=True)
        wait_until(lambda: not client.exists(marker_path), message="and removed")
        assert httpx.get(f"http://{status}/health").json()["mirrors"] == {mirror: "up"}
        assert daemon.log().count(f"{refused} not written") == 1
        assert f"mirror {mirror} is down" not in daemon.log()
        assert owner.get_children("/services/payments") == []
        assert owner.get("/services/payments")[0] == b"not consul-reg's"
        assert owner.get_acls("/services/payments")[0] == foreign_acl
    finally:
        owner.stop()
        client.stop()


def test_consulkv_mirror_converges_after_its_agent_restarted_empty(own_agent, start_daemon, run_container,
                                                                  hostname):
    agent = own_agent()
    api = agent.api()
    prefix = f"kvr-{hostname}"
    start_daemon("-ip", HOST_IP, "-retry-interval", "200", "consul://127.0.0.1:8500",
                 f"consulkv://127.0.0.1:{agent.http_port}/{prefix}")
    web = run_container(ports={"80/tcp": None}, labels={"SERVICE_NAME": "web"})
    key = f"{prefix}/web/{hostname}:{web.name}:80"
    wait_until(lambda: key in kv(api, prefix), message="KV key")
    agent.restart()  # a dev agent comes back with an empty KV store
    wait_until(lambda: key in kv(api, prefix), timeout=5, message="KV key back within 5 s")


def test_deregister_on_exit_empties_every_mirror(etcd, zookeeper, start_daemon, run_container, consul_api,
                                                hostname):
    prefix = f"kvexit-{hostname}"
    daemon = start_daemon("-ip", HOST_IP, "-deregister-on-exit", "consul://127.0.0.1:8500",
                          f"consulkv://127.0.0.1:8500/{prefix}", f"{etcd.uri_base}/services",
                          f"{zookeeper.uri_base}/services")
    web = run_container(ports={"80/tcp": None}, labels={"SERVICE_NAME": "web"})
    client = zookeeper.client()
    try:
        znode = f"/services/web/{HOST_IP}:{host_port(web, '80/tcp')}"
        wait_until(lambda: kv(consul_api, prefix) and etcd.keys("/services/") and client.exists(znode),
                   message="every mirror written")
        lease = next(iter(etcd.keys("/services/").values()))[1]
        assert daemon.stop() == 0
        assert kv(consul_api, prefix) == {}
        assert etcd.keys("/services/") == {}
        assert etcd.lease_ttl(lease) == -1  # revoked, not left to expire
        assert client.exists(znode) is None
        assert consul_api.services_of(hostname) == {}
    finally:
        client.stop()


def test_consulkv_another_hosts_default_id_is_refused_and_the_rightful_host_takes_it_back(
        start_daemon, run_container, consul_api, hostname):
    """Host B's daemon sees a container claiming `<host A>:<container>:80`, a default ID of
    host A: refused (custom IDs are fleet-global in a shared prefix, default IDs their
    host's). And a key of A's default ID that someone else holds (an older consul-reg of a
    host C, which no longer runs, wrote it with C's owner tag): A's daemon writes over it
    once its container runs."""
    from consul_reg.mirrors.keys import owner_tag

    prefix, select, other = f"kvns-{hostname}", f"kvns-{hostname}", f"{hostname}-b"
    victim = f"victim-{hostname}"
    taken, squatted = f"{prefix}/web/{hostname}:{victim}:80", f"{prefix}/web/{hostname}:{victim}-2:80"

    def entry(key: str) -> tuple[str, int] | None:
        response = consul_api.http.get(f"/v1/kv/{key}")
        if response.status_code == 404:
            return None
        found = response.json()[0]
        return base64.b64decode(found["Value"] or "").decode(), found["Flags"]

    consul_api.http.put(f"/v1/kv/{taken}", params={"flags": str(owner_tag(f"{hostname}-c"))},
                        content=b"192.0.2.99:1").raise_for_status()
    try:
        host_b = start_daemon("--hostname", other, "-ip", HOST_IP, "--filter", f"label={select}",
                              f"consulkv://127.0.0.1:8500/{prefix}")
        squatter = run_container(ports={"80/tcp": None}, labels={select: "1", "SERVICE_NAME": "web",
                                                                  "SERVICE_ID": f"{hostname}:{victim}-2:80"})
        host_b.wait_log(f"container {squatter.name}: key 'SERVICE_ID'='{hostname}:{victim}-2:80': it has the shape "
                        f"of host {hostname!r}'s default IDs")
        host_a = start_daemon("-ip", HOST_IP, "--filter", f"label={select}", f"consulkv://127.0.0.1:8500/{prefix}")
        real = run_container(name=victim, ports={"80/tcp": None}, labels={select: "1", "SERVICE_NAME": "web"})
        value = f"{HOST_IP}:{host_port(real, '80/tcp')}"
        wait_until(lambda: entry(taken) == (value, owner_tag(hostname)),
                   message=f"host A's own default ID taken back (now {entry(taken)})")
        # Host B wrote its own key of the later container: it had handled the squatter's start before.
        wait_until(lambda: entry(f"{prefix}/web/{other}:{victim}:80") == (value, owner_tag(other)),
                   message="host B's key of the later container")
        assert entry(squatted) is None, "host B wrote a default ID of host A"
        assert host_a.process.poll() is None and host_b.process.poll() is None
    finally:
        consul_api.http.delete(f"/v1/kv/{prefix}", params={"recurse": "true"})
