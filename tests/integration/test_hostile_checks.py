"""Issue 20's check attacks against a real dockerd and a real Consul 1.8.7 agent.

As in test_hostile_containers.py (whose fixtures and end-state assertion this
module shares): a dockerd of this module's own (no other consul-reg on the
machine ever sees these containers), an agent per test, -resync 0. The test
process runs its own loopback-only server that records every connection, and
checks what reaches it.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import docker
import pytest

from tests.integration.conftest import IMAGE, RUN_ID, TEST_LABEL, free_port, host_port, wait_until
from tests.integration.test_hostile_containers import (  # noqa: F401  (fixtures: host, run_container)
    assert_host_unharmed, dockerd_of_its_own, host, run_container, services_of_container, start)

pytestmark = pytest.mark.integration

BRIDGE, BRIDGE_CIDR = "crchecks0", "10.213.96.1/24"  # no other test module's bridge (77-95 are taken)
HTTPD = "httpd -f -p 80 -h /www"  # busybox's: GET / answers "ok"


@pytest.fixture(scope="module")
def own_docker() -> Iterator[tuple[str, docker.DockerClient]]:
    with dockerd_of_its_own(BRIDGE, BRIDGE_CIDR, "crc-") as both:
        yield both


class Recorder:
    """An HTTP server on 127.0.0.1 only (a loopback-only service, as a Docker API on
    127.0.0.1:2375 is), recording every connection and every request it reads."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[tuple[str, str, list[tuple[str, str]], bytes]] = []
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def setup(self) -> None:
                with lock:
                    outer.connections += 1
                super().setup()

            def _record(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(min(length, 1 << 20))
                with lock:
                    outer.requests.append((self.command, self.path, list(self.headers.items()), body))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = do_PATCH = _record

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    server = Recorder()
    yield server
    server.close()


@pytest.mark.parametrize("ip_args", [(), ("-ip", "127.0.0.1")], ids=["agent-address", "ip-loopback"])
def test_a_crossed_publication_never_reaches_a_loopback_service(host, own_docker, start_daemon, run_container,
                                                                 hostname, recorder, ip_args):
    """Port 80 published on 127.0.0.1, port 81 on 127.0.0.2 with the port number of the test's
    loopback-only server; every spelling of a check (and a sidecar's forward) aims at
    127.0.0.1:<that port>. The daemon registers at 127.0.0.1 (the dev agent's address, or -ip)."""
    agent, api, sentinel = host
    daemon = start(start_daemon, agent, own_docker, *ip_args)
    port = recorder.port
    hostile = run_container(HTTPD, ports={"80/tcp": ("127.0.0.1", None), "81/tcp": ("127.0.0.2", port)}, labels={
        "SERVICE_CHECK_INTERVAL": "1s",
        "SERVICE_80_CHECK_HTTP": "/",  # its own pair, 127.0.0.1:<its host port>: probed
        "SERVICE_81_CHECK_HTTP": "/containers/create", "SERVICE_81_CHECK_HTTP_METHOD": "POST",
        "SERVICE_81_CHECK_HTTP_BODY": '{"Image": "evil", "HostConfig": {"Privileged": true}}',
        "SERVICE_81_CHECK_TCP": "true", "SERVICE_81_CHECK_ADDRESS": "127.0.0.1",
        "SERVICE_81_CHECKS": json.dumps([
            {"HTTP": f"http://127.0.0.1:{port}/json", "Method": "POST", "Body": "{}", "Interval": "1s"},
            {"TCP": f"127.0.0.1:{port}", "Interval": "1s"}]),
        "SERVICE_81_CONNECT": "sidecar"})
    own_id, crossed_id = f"{hostname}:{hostile.name}:80", f"{hostname}:{hostile.name}:81"
    # The daemon has processed the container and the agent has run its checks: the one on its own pair passes.
    wait_until(lambda: api.check_status(f"service:{own_id}:http") == "passing", timeout=30,
               message="the check on the container's own pair passes")
    assert crossed_id in api.services()
    assert api.checks_of(crossed_id) == {}
    assert f"{crossed_id}-sidecar-proxy" not in api.services()
    refusal = f"port {port}: 127.0.0.1 is this host's own address (loopback)"
    daemon.wait_log(f"container {hostile.name}: key 'SERVICE_81_CHECK_ADDRESS'='127.0.0.1': the HTTP check would "
                    f"probe '127.0.0.1' {refusal}")
    daemon.wait_log(f"container {hostile.name}: key 'SERVICE_81_CHECKS': check 1: the HTTP check would probe "
                    f"'127.0.0.1' {refusal}")
    daemon.wait_log(f"container {hostile.name}: key 'SERVICE_81_CONNECT'='sidecar': the sidecar proxy would forward")
    assert (recorder.connections, recorder.requests) == (0, [])
    assert_host_unharmed(api, daemon, run_container, hostname, sentinel)
    assert (recorder.connections, recorder.requests) == (0, [])


def test_huge_check_keys_on_many_ports_send_a_bounded_registration(host, own_docker, start_daemon, run_container,
                                                                    hostname, recorder):
    """~2.7 MB of check keys on 24 ports (without the caps: ~3.5 MB a service, ~85 MB in all). The
    HTTP check that fits the caps probes the test's server (allowed by the operator's rule), which
    sees what the agent holds: at most 32 headers of at most 4 KiB, the body within its cap."""
    agent, api, sentinel = host
    _, client = own_docker
    daemon = start(start_daemon, agent, own_docker, "-internal", "--allow-check-target", f"127.0.0.1/32:{recorder.port}",
                   "--allow-check-redirects")  # its POST with a body, on Consul 1.8.7
    big = "x" * 60000
    labels = {TEST_LABEL: RUN_ID, "SERVICE_NAME": "huge", "SERVICE_CHECK_INTERVAL": "1s",
              "SERVICE_CHECK_ADDRESS": "127.0.0.1", "SERVICE_CHECK_PORT": str(recorder.port),
              "SERVICE_CHECK_HTTP": "/probe", "SERVICE_CHECK_HTTP_METHOD": "POST", "SERVICE_CHECK_HTTP_BODY": "b" * 16384,
              "SERVICE_CHECK_HTTPS": "/" + big, "SERVICE_CHECK_NOTES": big, "SERVICE_CHECK_TLS_SERVER_NAME": big,
              **{f"SERVICE_CHECK_HTTP_HEADER_X_{i}": "v" * 4000 for i in range(32)},
              **{f"SERVICE_1000_CHECK_HTTP_HEADER_X_BIG_{i}": big for i in range(40)}}
    created = client.api.create_container(IMAGE, "sleep 600", name=f"crt-{uuid.uuid4().hex[:8]}",
                                          ports=list(range(1000, 1024)), stop_signal="SIGKILL", labels=labels,
                                          host_config=client.api.create_host_config())
    hostile = client.containers.get(created["Id"])
    try:
        hostile.start()
        started = time.monotonic()
        prompt = run_container(ports={"80/tcp": None}, labels={"SERVICE_NAME": "prompt"})
        wait_until(lambda: f"{hostname}:{prompt.name}:80" in api.services(), timeout=20,
                   message="the container started right after the hostile one")
        prompt_seconds = time.monotonic() - started
        daemon.wait_log(f"container {hostile.name}: service '{hostname}:{hostile.name}:1023': its registration")
        registered = services_of_container(api, hostile)
        refused = daemon.log().count(f"over 1048576 bytes in all; this service is refused")
        assert 1 < len(registered) < 24 and len(registered) + refused == 24, (len(registered), refused)
        for service_id, service in registered.items():
            assert len(service["Meta"]) <= 64 and service["Tags"] == []
            checks = api.checks_of(service_id)
            assert {c["Type"] for c in checks.values()} <= {"http"}  # the HTTPS check (path over 2 KiB) is dropped
            assert all(c["Notes"] == "" for c in checks.values())  # Notes over 1 KiB left out
        with_http = sum(1 for sid in registered if api.checks_of(sid))
        assert with_http == len(registered) - 1  # port 1000's has 72 headers: dropped
        wait_until(lambda: len(recorder.requests) >= 2 * with_http, timeout=30, message="each HTTP check ran")
        for method, path, header_pairs, body in list(recorder.requests):
            custom = [(k, v) for k, v in header_pairs if k.lower().startswith("x-")]
            assert (method, path, len(custom), len(body)) == ("POST", "/probe", 32, 16384)
            assert all(len(v) <= 4096 and not k.lower().startswith("x-big") for k, v in custom)
        lines = [line for line in daemon.log().splitlines() if f"container {hostile.name}: key " in line]
        for text in ("a check may send at most 32 headers (this one has 72)",
                     "an HTTP check's path may hold at most 2048 characters (this one has 60001)",
                     "Notes must be at most 1024 characters"):
            assert any(text in line for line in lines), text
        assert max(len(line) for line in daemon.log().splitlines()) < 2000  # no huge value reaches the log
        assert prompt_seconds < 20
        assert_host_unharmed(api, daemon, run_container, hostname, sentinel)
    finally:
        try:
            hostile.remove(force=True)
        except docker.errors.NotFound:
            pass


def test_the_agents_own_ports_are_never_a_check_target(host, own_docker, start_daemon, run_container, hostname):
    """A host-network container declares two ports: one free, one the agent's DNS port (read from
    /v1/agent/self: this agent's is not 8600). Both are pairs of the container's on the address the
    daemon registers at; the agent's port never gets a check."""
    agent, api, sentinel = host
    daemon = start(start_daemon, agent, own_docker)
    dns_port = agent.ports["-dns-port"]
    free = free_port()
    hostile = run_container(network_mode="host", name=f"crt-host-{uuid.uuid4().hex[:6]}", labels={
        "SERVICE_NAME": "claims", "SERVICE_PORT": f"{free},{dns_port}", "SERVICE_CHECK_TCP": "true",
        "SERVICE_CHECK_INTERVAL": "1s"})
    mine, agents = f"{hostname}:{hostile.name}:{free}", f"{hostname}:{hostile.name}:{dns_port}"
    wait_until(lambda: {mine, agents} <= set(api.services()), message="both services registered")
    assert set(api.checks_of(mine)) == {f"service:{mine}:tcp"}  # its own pair: checked (nothing listens there)
    assert api.checks_of(agents) == {}
    daemon.wait_log(f"container {hostile.name}: key 'SERVICE_CHECK_TCP'='true': the TCP check would probe "
                    f"'127.0.0.1' port {dns_port}: port {dns_port} is one of the Consul agent's own ports")
    assert_host_unharmed(api, daemon, run_container, hostname, sentinel)


# Answers every request with a 307 to $TARGET once it has read the request (headers and body).
REDIRECTOR = r"""#!/bin/sh
len=0
while IFS= read -r line; do
  line=$(printf '%s' "$line" | tr -d '\r')
  [ -z "$line" ] && break
  case "$line" in [Cc]ontent-[Ll]ength:*) len=$(echo ${line#*:}) ;; esac
done
[ "$len" -gt 0 ] && head -c "$len" >/dev/null
printf 'HTTP/1.1 307 Temporary Redirect\r\nLocation: %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n' "$TARGET"
"""


def test_a_redirect_from_the_containers_own_server_carries_no_post_to_a_loopback_service(
        host, own_docker, start_daemon, run_container, hostname, recorder):
    """Consul 1.8.7 cannot disable redirects, and Go's client follows a 307 keeping the method and
    the body: a check on the container's own pair whose server answers 307 to a loopback-only
    service (here the recorder, standing for a Docker API on 127.0.0.1:2375) would POST there.
    Such checks are refused; a GET check still runs and is redirected (what remains before 1.12)."""
    agent, api, sentinel = host
    daemon = start(start_daemon, agent, own_docker, "-ip", "127.0.0.1")
    target = f"http://127.0.0.1:{recorder.port}/containers/create"
    evil = '{"Image": "evil", "HostConfig": {"Privileged": true}}'
    hostile = run_container(
        ["sh", "-c", 'printf "%s" "$REDIRECTOR" > /tmp/r.sh && chmod +x /tmp/r.sh && exec nc -ll -p 80 -e /tmp/r.sh'],
        ports={"80/tcp": ("127.0.0.1", None)}, environment={"REDIRECTOR": REDIRECTOR, "TARGET": target}, labels={
            "SERVICE_CHECK_INTERVAL": "1s",
            "SERVICE_CHECK_HTTP": "/", "SERVICE_CHECK_HTTP_METHOD": "POST", "SERVICE_CHECK_HTTP_BODY": evil,
            "SERVICE_CHECKS": json.dumps([
                {"HTTP": "/json", "Method": "POST", "Body": evil, "Interval": "1s"},
                {"HTTP": "/put", "Method": "OPTIONS", "Interval": "1s"},
                {"HTTP": "/get", "Interval": "1s", "ID": "get"}])})
    service_id = f"{hostname}:{hostile.name}:80"
    wait_until(lambda: service_id in api.services(), message="the service, with its GET check only")
    assert set(api.checks_of(service_id)) == {f"service:{service_id}:get"}
    # The GET check does reach the recorder through the redirect: the path is real, and POSTs would take it.
    wait_until(lambda: len(recorder.requests) >= 3, timeout=30, message="three redirected GET probes")
    assert {(method, path, body) for method, path, _, body in recorder.requests} == \
        {("GET", "/containers/create", b"")}
    why = "follows the checked server's redirects keeping the method and the body"
    daemon.wait_log(f"container {hostile.name}: key 'SERVICE_CHECK_HTTP_BODY'=")
    daemon.wait_log(f"the HTTP check 'service:{service_id}:http': it sends POST with a body, and this agent "
                    f"(Consul 1.8) {why}")
    daemon.wait_log(f"container {hostile.name}: key 'SERVICE_CHECKS': check 1: the HTTP check "
                    f"'http://127.0.0.1:{host_port(hostile, '80/tcp')}/json': it sends POST with a body")
    daemon.wait_log(f"container {hostile.name}: key 'SERVICE_CHECKS': check 2: the HTTP check")
    assert_host_unharmed(api, daemon, run_container, hostname, sentinel)
    assert all(method == "GET" and body == b"" for method, _, _, body in recorder.requests)
