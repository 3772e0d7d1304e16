"""Issue 12's definitions against a real dockerd and real Consul 1.8.7 agents.

Both are the module's or the test's own: a dockerd of this module's own (so
that services can be counted, and no other consul-reg on the machine sees
these containers), and a dev agent per test (Connect-enabled where needed),
whose DNS port answers `dig`. Every daemon runs with -resync 0 except the
tag-override and the two-daemons tests, which are about the resync.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sys
import subprocess
import tempfile
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator

import docker
import httpx
import pytest

from consul_reg.consul.agent import ConsulClient, ConsulEndpoint
from tests.integration.conftest import IMAGE, ROOT, RUN_ID, TEST_LABEL, free_port, status_args, wait_until
from tests.unit.test_versions import ACCEPTED_1_8_CHECK, ACCEPTED_1_8_SERVICE, EVERYTHING, payload_for

pytestmark = pytest.mark.integration

BRIDGE, BRIDGE_CIDR = "crdefs0", "10.213.91.1/24"  # no other test module's bridge
DUAL_SUBNETS = ("10.213.92.0/24", "fd00:cafe:92::/64")  # not the host's fd00::/64
HTTPD = "httpd -f -p 80 -h /www"  # busybox's: GET / answers "ok"


@pytest.fixture(scope="module")
def own_docker() -> Iterator[tuple[str, docker.DockerClient]]:
    workdir = Path(tempfile.mkdtemp(prefix="crdef-"))
    host = f"unix://{workdir / 'docker.sock'}"
    made_bridge = subprocess.run(["ip", "link", "show", BRIDGE], capture_output=True).returncode != 0
    if made_bridge:
        subprocess.run(["ip", "link", "add", BRIDGE, "type", "bridge"], check=True)
        subprocess.run(["ip", "addr", "add", BRIDGE_CIDR, "dev", BRIDGE], check=True)
        subprocess.run(["ip", "link", "set", BRIDGE, "up"], check=True)
    with open(workdir / "dockerd.log", "ab") as log:
        process = subprocess.Popen(
            ["dockerd", "--host", host, "--data-root", str(workdir / "root"), "--exec-root", str(workdir / "exec"),
             "--pidfile", str(workdir / "docker.pid"), "--bridge", BRIDGE, "--iptables=false", "--ip-masq=false"],
            stdout=log, stderr=subprocess.STDOUT)
    client: docker.DockerClient | None = None
    try:
        wait_until(lambda: docker.DockerClient(base_url=host, timeout=5).ping(), timeout=60, message="own dockerd")
        client = docker.DockerClient(base_url=host, timeout=60)
        subprocess.run(["sh", str(ROOT / "scripts" / "make-test-image.sh")], check=True,
                       env={**os.environ, "DOCKER_HOST": host})
        yield host, client
    finally:
        if process.poll() is None:
            if client is not None:
                for container in client.containers.list(all=True):
                    container.remove(force=True)
                for network in client.networks.list(filters={"label": TEST_LABEL}):
                    network.remove()
                client.close()
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
        subprocess.run(["sh", "-c", f"grep -o ' {workdir}[^ ]*' /proc/mounts | sort -r | xargs -r umount -l"],
                       capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)
        if made_bridge:
            subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True)


@pytest.fixture
def run_container(own_docker) -> Iterator[Callable[..., Any]]:
    _, client = own_docker
    started: list[Any] = []

    def start(command: str | list[str] = "sleep 600", **kwargs: Any):
        labels = {**(kwargs.pop("labels", {}) or {}), TEST_LABEL: RUN_ID}
        kwargs.setdefault("name", f"crt-{uuid.uuid4().hex[:8]}")
        kwargs.setdefault("stop_signal", "SIGKILL")
        container = client.containers.run(IMAGE, command, detach=True, labels=labels, **kwargs)
        started.append(container)
        container.reload()
        return container

    yield start
    for container in started:
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass


def start(start_daemon, agent, own_docker, *args: str, resync: str = "0"):
    daemon = start_daemon(*args, *status_args(), agent.uri, resync=resync, env={"DOCKER_HOST": own_docker[0]})
    daemon.wait_first_full_pass()
    return daemon


def host_port(container: Any, port: str = "80/tcp") -> int:
    container.reload()
    return int(container.attrs["NetworkSettings"]["Ports"][port][0]["HostPort"])


def consecutive_free_ports(count: int) -> int:
    """The first of `count` consecutive loopback ports that are free now."""
    for _ in range(100):
        first = free_port()
        sockets = []
        try:
            for port in range(first, first + count):
                probe = socket.socket()
                sockets.append(probe)
                probe.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for probe in sockets:
                probe.close()
    raise AssertionError("no consecutive free ports")


def dig(agent, name: str, qtype: str) -> list[str]:
    answer = subprocess.run(["dig", "+short", "+time=2", "+tries=1", "@127.0.0.1", "-p",
                             str(agent.ports["-dns-port"]), name, qtype], capture_output=True, text=True, timeout=20)
    return sorted(line for line in answer.stdout.split("\n") if line)


class Listener:
    """A loopback HTTP server recording every request (method, path, body)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                outer.requests.append((self.command, self.path, self.rfile.read(length).decode(errors="replace")))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            do_GET = do_POST = _record

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def seen(self, path: str) -> list[tuple[str, str, str]]:
        return [r for r in list(self.requests) if r[1] == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.close()


# -- every key, exactly the record ----------------------------------------------------------------


def test_each_key_gives_exactly_the_expected_record(own_agent, own_docker, start_daemon, run_container, hostname,
                                                    listener):
    agent = own_agent()
    api = agent.api()
    # POST bodies on Consul 1.8.7 (which follows redirects): the operator accepts the risk.
    daemon = start(start_daemon, agent, own_docker, "--allow-check-target", f"127.0.0.1:{listener.port}",
                   "--allow-check-redirects")
    target = f"http://127.0.0.1:{listener.port}"
    checks = [
        {"HTTP": f"{target}/fast", "Interval": "1s", "Method": "POST", "Body": '{"probe": "fast"}', "ID": "fast"},
        {"HTTP": f"{target}/slow", "Interval": "4s", "Method": "POST", "Body": "slow", "Name": "slow one"},
        {"HTTP": f"{target}/never", "Bogus": True},  # an unknown field: that check only is dropped
        {"HTTP": f"{target}/never", "FailuresBeforeWarning": 1},  # Consul 1.14: not for 1.8.7
        {"TTL": "1h", "Status": "passing", "ID": "app"},
    ]
    web = run_container(HTTPD, ports={"80/tcp": None}, labels={
        "SERVICE_NAME": "web", "SERVICE_TAGS": "a", "SERVICE_WEIGHT": "7", "SERVICE_WEIGHT_WARNING": "2",
        "SERVICE_ENABLE_TAG_OVERRIDE": "true", "SERVICE_TAGGED_ADDRESS_WAN": "203.0.113.7:443",
        "SERVICE_CHECKS": json.dumps(checks),
        "SERVICE_CHECK_HTTP": "/simple", "SERVICE_CHECK_HTTP_METHOD": "POST", "SERVICE_CHECK_HTTP_BODY": "simple body",
        "SERVICE_CHECK_ADDRESS": "127.0.0.1", "SERVICE_CHECK_PORT": str(listener.port),
        "SERVICE_CHECK_INTERVAL": "2s"})
    native = run_container(HTTPD, ports={"80/tcp": None},
                           labels={"SERVICE_NAME": "native", "SERVICE_CONNECT": "native"})
    web_id, native_id = f"{hostname}:{web.name}:80", f"{hostname}:{native.name}:80"
    wait_until(lambda: {web_id, native_id} <= set(api.services()), message="both registered")
    record = api.services()[web_id]
    assert {k: record[k] for k in ("Service", "Tags", "Address", "Port", "TaggedAddresses", "Weights",
                                   "EnableTagOverride")} == {
        "Service": "web", "Tags": ["a"], "Address": "127.0.0.1", "Port": host_port(web),
        "TaggedAddresses": {"wan": {"Address": "203.0.113.7", "Port": 443},
                            # the agent's own additions for an IPv4 address
                            "lan_ipv4": {"Address": "127.0.0.1", "Port": host_port(web)},
                            "wan_ipv4": {"Address": "127.0.0.1", "Port": host_port(web)}},
        "Weights": {"Passing": 7, "Warning": 2}, "EnableTagOverride": True}
    assert "Connect" not in record and "Proxy" not in record
    assert api.services()[native_id]["Connect"] == {"Native": True}
    assert set(api.checks_of(web_id)) == {f"service:{web_id}:fast", f"service:{web_id}:2",
                                          f"service:{web_id}:app", f"service:{web_id}:http"}
    assert api.checks_of(web_id)[f"service:{web_id}:2"]["Name"] == "slow one"
    assert api.check_status(f"service:{web_id}:app") == "passing"
    daemon.wait_log(f"container {web.name}: key 'SERVICE_CHECKS': check 3: unknown field 'Bogus'")
    daemon.wait_log(f"container {web.name}: key 'SERVICE_CHECKS': check 4: the check field FailuresBeforeWarning "
                    "needs Consul 1.14 or later and this agent is 1.8")
    # Two intervals and POST bodies, as the listener sees them.
    wait_until(lambda: len(listener.seen("/fast")) >= 9, timeout=30, message="nine fast probes")
    fast, slow = len(listener.seen("/fast")), len(listener.seen("/slow"))
    assert 1 <= slow and fast >= 2 * slow, (fast, slow)
    assert set(listener.seen("/fast")) == {("POST", "/fast", '{"probe": "fast"}')}
    assert set(listener.seen("/slow")) == {("POST", "/slow", "slow")}
    wait_until(lambda: listener.seen("/simple"), message="the simple check's body")
    assert set(listener.seen("/simple")) == {("POST", "/simple", "simple body")}
    assert listener.seen("/never") == []
    wait_until(lambda: api.check_status(f"service:{web_id}:fast") == "passing", message="the fast check passes")
    assert daemon.process.poll() is None


def test_the_fullest_registration_is_accepted_by_consul_1_8_7(own_agent):
    """Every field consul-reg sends for 1.8 (tests/unit/test_versions.py), sent to the real agent."""
    agent = own_agent(hcl=["enable_script_checks = true"])
    client = ConsulClient(ConsulEndpoint("http", "127.0.0.1", agent.http_port))
    try:
        version = client.json("GET", ("agent", "self"), "self")["Config"]["Version"]
        assert version == "1.8.7"
        payload = payload_for(EVERYTHING, (1, 8))
        assert payload is not None
        client.call("PUT", ("agent", "service", "register"), "register", body=json.dumps(payload).encode())
        listed = client.json("GET", ("agent", "services"), "list")[payload["ID"]]
        assert listed["Weights"] == {"Passing": 3, "Warning": 2} and listed["EnableTagOverride"] is True
        assert set(payload) == ACCEPTED_1_8_SERVICE
        assert {field for check in payload["Checks"] for field in check} <= ACCEPTED_1_8_CHECK
        checks = client.json("GET", ("agent", "checks"), "checks")
        assert {c["CheckID"] for c in checks.values() if c["ServiceID"] == payload["ID"]} == \
            {c["CheckID"] for c in payload["Checks"]}
        newer = payload_for(EVERYTHING, (1, 14))
        with pytest.raises(Exception, match="unknown field"):  # what the gates prevent
            client.call("PUT", ("agent", "service", "register"), "register", body=json.dumps(newer).encode())
    finally:
        client.close()


# -- dual stack, DNS, declared ports ------------------------------------------------------------------


def test_dual_stack_internal_registers_both_families_and_dns_answers_a_and_aaaa(
        own_agent, own_docker, start_daemon, run_container, hostname):
    _, client = own_docker
    network = client.networks.create(f"crdual-{uuid.uuid4().hex[:6]}", driver="bridge", enable_ipv6=True,
                                     labels={TEST_LABEL: RUN_ID}, ipam=docker.types.IPAMConfig(pool_configs=[
                                         docker.types.IPAMPool(subnet=DUAL_SUBNETS[0]),
                                         docker.types.IPAMPool(subnet=DUAL_SUBNETS[1])]))
    try:
        agent = own_agent()
        api = agent.api()
        start(start_daemon, agent, own_docker, "-internal")
        name = f"dual{uuid.uuid4().hex[:6]}"
        web = run_container(HTTPD, network=network.name, labels={
            "SERVICE_NAME": name, "SERVICE_PORT": "80", "SERVICE_WEIGHT": "7", "SERVICE_80_CHECK_TCP": "true",
            "SERVICE_CHECK_INTERVAL": "1s"})
        web.reload()
        attached = web.attrs["NetworkSettings"]["Networks"][network.name]
        ipv4, ipv6 = attached["IPAddress"], attached["GlobalIPv6Address"]
        assert ipv4.startswith("10.213.92.") and ipv6.startswith("fd00:cafe:92:")
        service_id = f"{hostname}:{web.name}:80"
        wait_until(lambda: service_id in api.services(), message="registered")
        record = api.services()[service_id]
        assert (record["Address"], record["Port"]) == (ipv4, 80)
        assert record["TaggedAddresses"] == {"lan_ipv4": {"Address": ipv4, "Port": 80},
                                             "lan_ipv6": {"Address": ipv6, "Port": 80},
                                             "wan_ipv4": {"Address": ipv4, "Port": 80}}  # the agent adds wan_ipv4
        wait_until(lambda: api.check_status(f"service:{service_id}:tcp") == "passing", message="TCP check passes")
        # DNS reads the catalog, which the agent updates a moment after its own state: poll.
        wait_until(lambda: dig(agent, f"{name}.service.consul", "A") == [ipv4], message="DNS A")
        assert dig(agent, f"{name}.service.consul", "AAAA") == [ipv6]
        srv = dig(agent, f"{name}.service.consul", "SRV")
        assert len(srv) == 1 and srv[0].split()[:3] == ["1", "7", "80"], srv  # priority, weight, port
    finally:
        network.reload()
        for container in network.containers:
            container.remove(force=True)
        network.remove()


def test_ipv6_service_ip_gets_aaaa_and_a_bracketed_check(own_agent, own_docker, start_daemon, run_container,
                                                         hostname):
    agent = own_agent()
    api = agent.api()
    start(start_daemon, agent, own_docker, "--allow-check-target", "[::1]")
    name = f"six{uuid.uuid4().hex[:6]}"
    web = run_container(HTTPD, ports={"80/tcp": ("::1", None)}, labels={
        "SERVICE_NAME": name, "SERVICE_IP": "::1", "SERVICE_CHECK_HTTP": "/", "SERVICE_CHECK_INTERVAL": "1s"})
    service_id = f"{hostname}:{web.name}:80"
    wait_until(lambda: service_id in api.services(), message="registered")
    assert api.services()[service_id]["Address"] == "::1"
    wait_until(lambda: api.check_status(f"service:{service_id}:http") == "passing", timeout=30,
               message="the HTTP check reaches [::1]")
    wait_until(lambda: dig(agent, f"{name}.service.consul", "AAAA") == ["::1"], message="DNS AAAA (from the catalog)")
    assert dig(agent, f"{name}.service.consul", "A") == []


def test_host_network_container_declares_its_port(own_agent, own_docker, start_daemon, run_container, hostname):
    agent = own_agent()
    api = agent.api()
    start(start_daemon, agent, own_docker)
    port = free_port()
    worker = run_container(f"httpd -f -p 127.0.0.1:{port} -h /www", network_mode="host",
                           name=f"crt-host-{uuid.uuid4().hex[:6]}",
                           labels={"SERVICE_NAME": "hostapi", "SERVICE_PORT": str(port),
                                   "SERVICE_CHECK_HTTP": "/", "SERVICE_CHECK_INTERVAL": "1s"})
    service_id = f"{hostname}:{worker.name}:{port}"
    wait_until(lambda: service_id in api.services(), message="registered at the declared port")
    record = api.services()[service_id]
    assert (record["Service"], record["Address"], record["Port"]) == ("hostapi", "127.0.0.1", port)
    assert set(api.checks_of(service_id)) == {f"service:{service_id}:http"}  # an ordinary service: no heartbeat
    wait_until(lambda: api.check_status(f"service:{service_id}:http") == "passing", message="its check passes")


# -- tag override across resyncs ------------------------------------------------------------------------


def test_tag_override_survives_resyncs_and_an_unrelated_change(own_agent, own_docker, start_daemon, run_container,
                                                                 hostname):
    agent = own_agent()
    api = agent.api()
    daemon = start(start_daemon, agent, own_docker, resync="1")  # about the periodic resync keeping what the agent changed
    name = f"leader{uuid.uuid4().hex[:6]}"
    web = run_container(ports={"80/tcp": None}, labels={"SERVICE_NAME": name, "SERVICE_TAGS": "replica",
                                                        "SERVICE_ENABLE_TAG_OVERRIDE": "true"})
    service_id = f"{hostname}:{web.name}:80"
    wait_until(lambda: service_id in api.services(), message="registered")

    def catalog_tags() -> list[list[str]]:
        return [s["ServiceTags"] for s in api.http.get(f"/v1/catalog/service/{name}").json()]

    wait_until(lambda: catalog_tags() == [["replica"]], message="in the catalog")
    node = api.http.get("/v1/agent/self").json()["Config"]["NodeName"]
    record = api.services()[service_id]
    api.http.put("/v1/catalog/register", json={  # what a leader-election script does
        "Node": node, "Address": "127.0.0.1", "SkipNodeUpdate": True,
        "Service": {"ID": service_id, "Service": name, "Address": record["Address"], "Port": record["Port"],
                    "Tags": ["leader"], "Meta": record["Meta"], "EnableTagOverride": True}}).raise_for_status()
    assert catalog_tags() == [["leader"]]
    daemon.wait_full_passes_after(count=3, timeout=30)  # three resyncs
    other = run_container(ports={"80/tcp": None}, labels={"SERVICE_NAME": "unrelated"})
    wait_until(lambda: f"{hostname}:{other.name}:80" in api.services(), message="the unrelated container")
    daemon.wait_full_passes_after(count=2, timeout=30)  # two more
    assert catalog_tags() == [["leader"]]
    assert len(re.findall(rf"(?<!de)registered {re.escape(service_id)} name=", daemon.log())) == 1  # never again


# -- Connect end to end -----------------------------------------------------------------------------------


def test_connect_sidecar_carries_a_request_through_an_upstream(own_agent, own_docker, start_daemon, run_container,
                                                               hostname, tmp_path):
    low = consecutive_free_ports(2)
    agent = own_agent(hcl=["connect { enabled = true }",
                           f"ports {{ sidecar_min_port = {low}, sidecar_max_port = {low + 1} }}"])
    api = agent.api()
    daemon = start(start_daemon, agent, own_docker)
    upstream_port = free_port()
    name = f"web{uuid.uuid4().hex[:6]}"
    web = run_container(HTTPD, ports={"80/tcp": None}, labels={"SERVICE_NAME": name, "SERVICE_CONNECT": "sidecar"})
    client = run_container(ports={"80/tcp": None}, labels={
        "SERVICE_NAME": "client", "SERVICE_CONNECT": "sidecar",
        "SERVICE_CONNECT_UPSTREAMS": f"{name}:{upstream_port}"})
    web_id, client_id = f"{hostname}:{web.name}:80", f"{hostname}:{client.name}:80"
    wait_until(lambda: {web_id, f"{web_id}-sidecar-proxy", client_id, f"{client_id}-sidecar-proxy"}
               <= set(api.services()), message="both services and their sidecars")
    sidecar = api.services()[f"{web_id}-sidecar-proxy"]
    assert sidecar["Kind"] == "connect-proxy"
    assert sidecar["Meta"] == {"external-source": "consul-reg", "consul_reg_sidecar_for": web_id}
    assert sidecar["Proxy"]["LocalServicePort"] == host_port(web)
    upstreams = api.services()[f"{client_id}-sidecar-proxy"]["Proxy"]["Upstreams"]
    assert [(u["DestinationName"], u["LocalBindPort"]) for u in upstreams] == [(name, upstream_port)]

    proxies = []
    for service_id in (web_id, client_id):
        log = open(tmp_path / f"proxy-{len(proxies)}.log", "ab")
        proxies.append(subprocess.Popen(["consul", "connect", "proxy", "-sidecar-for", service_id,
                                         "-http-addr", f"127.0.0.1:{agent.http_port}"],
                                        stdout=log, stderr=subprocess.STDOUT))
        log.close()
    try:
        answer = wait_until(lambda: httpx.get(f"http://127.0.0.1:{upstream_port}/", timeout=3),
                            timeout=60, message="a request through the client's upstream")
        assert answer.status_code == 200 and answer.text.strip() == "ok"
        # A full pass (SIGHUP) keeps the sidecars: they are the agent's, not orphans of the daemon's.
        daemon.full_pass_by_sighup()
        assert f"{web_id}-sidecar-proxy" in api.services()
        assert f"deregistered {web_id}-sidecar-proxy" not in daemon.log()
        # The sidecar registration goes when the service goes.
        web.remove(force=True)
        wait_until(lambda: not {web_id, f"{web_id}-sidecar-proxy"} & set(api.services()),
                   message="the service and its sidecar gone")
        assert f"{client_id}-sidecar-proxy" in api.services()
    finally:
        for proxy in proxies:
            proxy.kill()
            proxy.wait(timeout=10)


# -- two daemons, one agent -----------------------------------------------------------------------------------


WRITES = re.compile(r"(de)?registered \S+ name=")  # apply's log line for each write


def owners(api) -> dict[str, tuple[str, str]]:
    """service ID -> (host marker, instance marker) of every consul-reg record."""
    return {sid: (s["Meta"].get("consul_reg_host", ""), s["Meta"].get("consul_reg_instance", ""))
            for sid, s in api.services().items() if (s.get("Meta") or {}).get("external-source") == "consul-reg"
            and "consul_reg_host" in s["Meta"]}


def test_two_daemons_with_filters_and_instances_share_one_agent(own_agent, own_docker, start_daemon, run_container,
                                                                 hostname):
    agent = own_agent()
    api = agent.api()
    args = {"a": ["--filter", "label=team=a", "--instance", "a", "-cleanup"],
            "b": ["--filter", "label=team=b", "--instance", "b"]}
    daemons = {team: start(start_daemon, agent, own_docker, *args[team]) for team in "ab"}
    a1 = run_container(ports={"80/tcp": None}, labels={"team": "a", "SERVICE_NAME": "a1"})
    b1 = run_container(ports={"80/tcp": None}, labels={"team": "b", "SERVICE_NAME": "b1"})
    b3 = run_container(ports={"80/tcp": None}, labels={"team": "b", "SERVICE_NAME": "b3"})
    b2 = run_container(ports={"80/tcp": None}, labels={"team": "b", "SERVICE_ID": "shared", "SERVICE_NAME": "s"})
    nobody = run_container(ports={"80/tcp": None}, labels={"team": "c", "SERVICE_NAME": "c1"})
    # b's default IDs look like registrator's leftovers (<hostname>:<container>:<port>) to a's -cleanup.
    expected = {f"{hostname}:{a1.name}:80": (hostname, "a"), f"{hostname}:{b1.name}:80": (hostname, "b"),
                f"{hostname}:{b3.name}:80": (hostname, "b"), "shared": (hostname, "b")}
    wait_until(lambda: owners(api) == expected, message="each daemon registers its own team")
    # A container of team a declares the ID team b holds, after a's last listing: a looks before it writes.
    a2 = run_container(ports={"80/tcp": None}, labels={"team": "a", "SERVICE_ID": "shared", "SERVICE_NAME": "s"})
    daemons["a"].wait_log("shared was registered meanwhile by consul-reg of host")
    assert owners(api) == expected and api.services()["shared"]["Meta"]["consul_reg_container"] == b2.id
    a2.remove(force=True)  # its death must not take b's record with it
    b3.remove(force=True)
    del expected[f"{hostname}:{b3.name}:80"]
    wait_until(lambda: owners(api) == expected, message="b removes its own service only")
    # Each restarts (a full pass, and a's -cleanup): nothing of the other moves.
    for team in "ab":
        daemons[team].stop()
        daemons[team] = start(start_daemon, agent, own_docker, *args[team])
        assert owners(api) == expected
        log = daemons[team].log()
        assert not WRITES.search(log), WRITES.search(log)
        assert "could not" not in log and "not removed" not in log  # not even tried (the planner's own rule)
    b2.remove(force=True)
    del expected["shared"]
    wait_until(lambda: owners(api) == expected, message="b removes shared when its container goes")
    assert nobody.name not in json.dumps(api.services())
    for daemon in daemons.values():
        assert daemon.process.poll() is None


# -- explain ------------------------------------------------------------------------------------------------------


def test_explain_shows_the_new_fields_and_the_filter(own_agent, own_docker, run_container, hostname):
    agent = own_agent()
    web = run_container(HTTPD, ports={"80/tcp": None}, labels={
        "team": "a", "SERVICE_NAME": "web", "SERVICE_WEIGHT": "5", "SERVICE_CONNECT": "sidecar",
        "SERVICE_CONNECT_UPSTREAMS": "db:19191", "SERVICE_TAGGED_ADDRESS_WAN": "203.0.113.7:443",
        "SERVICE_CHECKS": '[{"HTTP": "/health", "ID": "deep"}, {"TTL": "1m", "Bogus": 1}]'})

    def explain(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "consul_reg", "explain", "--hostname", hostname, *args,
                               agent.uri, web.name], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "DOCKER_HOST": own_docker[0]})

    result = explain("--filter", "label=team=a")
    assert result.returncode == 0, result.stdout + result.stderr
    service_id = f"{hostname}:{web.name}:80"
    for expected in ("Tagged wan   203.0.113.7:443    <- label SERVICE_TAGGED_ADDRESS_WAN",
                     "Weights      passing 5, warning 1    <- label SERVICE_WEIGHT",
                     f"consul connect proxy -sidecar-for {service_id}); upstreams db at 127.0.0.1:19191",
                     f"Check service:{service_id}:deep",
                     "warning: key 'SERVICE_CHECKS': check 2: unknown field 'Bogus'"):
        assert expected in result.stdout, (expected, result.stdout)
    refused = explain("--filter", "label=team=b")
    assert refused.returncode == 1
    assert "would register nothing: it does not match --filter label=team=b" in refused.stdout
    assert agent.api().services() == {}


def test_two_daemons_selecting_the_same_container_never_fight(own_agent, own_docker, start_daemon, run_container,
                                                             hostname):
    """Overlapping filters (a misconfiguration): one of them holds the service, the other leaves it, and
    neither rewrites or removes it back and forth across resyncs; the holder removes it when it goes."""
    agent = own_agent()
    api = agent.api()
    # About resyncs: neither daemon's periodic pass may rewrite or remove the other's record.
    daemons = [start(start_daemon, agent, own_docker, "--filter", "label=team", "--instance", "x", resync="1"),
               start(start_daemon, agent, own_docker, "--filter", "label=team=a", "--instance", "y", resync="1")]
    web = run_container(ports={"80/tcp": None}, labels={"team": "a", "SERVICE_NAME": "web"})
    service_id = f"{hostname}:{web.name}:80"
    wait_until(lambda: service_id in owners(api), message="registered by one of them")
    targets = [d.passes()[0] + 3 for d in daemons]  # three passes of each, begun after now
    wait_until(lambda: all(d.passes()[1] >= target for d, target in zip(daemons, targets)), timeout=40,
               message="three resyncs of each")
    holder = owners(api)[service_id][1]
    assert holder in ("x", "y")
    writes = [len(re.findall(rf"(?<!de)registered {re.escape(service_id)} name=", d.log())) for d in daemons]
    assert sum(writes) <= 2 and writes[["x", "y"].index(holder)] == 1, writes  # at most once each: no flapping
    other = daemons[1 - ["x", "y"].index(holder)]
    other.wait_log(f"service ID {service_id!r} is already registered by host {hostname}")
    web.remove(force=True)
    wait_until(lambda: service_id not in api.services(), message="the holder removes it")
    for daemon in daemons:
        assert daemon.process.poll() is None
