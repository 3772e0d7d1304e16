"""ACL tokens and TLS against real agents of the tests' own."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import status_args, wait_until

pytestmark = pytest.mark.integration

MASTER = "0b5e9c1e-5b35-4f6c-9d4c-7a1e0a7f0001"
ACL_HCL = [f'acl {{ enabled = true, default_policy = "deny", tokens {{ master = "{MASTER}", agent = "{MASTER}" }} }}']
# The smallest policy consul-reg needs, found by the tests below: read the agent
# (/v1/agent/self: version, address, node ID), write services (register,
# deregister, their checks, TTL updates, maintenance).
POLICY = 'agent_prefix "" { policy = "read" }\nservice_prefix "" { policy = "write" }'


def make_token(api, name: str, rules: str) -> str:
    api.http.put("/v1/acl/policy", json={"Name": name, "Rules": rules}).raise_for_status()
    response = api.http.put("/v1/acl/token", json={"Policies": [{"Name": name}]})
    response.raise_for_status()
    return response.json()["SecretID"]


@pytest.fixture
def acl_agent(own_agent):
    agent = own_agent(hcl=ACL_HCL)
    admin = agent.api(token=MASTER)
    wait_until(lambda: admin.http.get("/v1/acl/policies").status_code == 200, message="ACL system up")
    return agent, admin


def test_registration_with_the_smallest_policy(acl_agent, start_daemon, run_container, hostname, tmp_path):
    agent, admin = acl_agent
    token = make_token(admin, f"consul-reg-{hostname}", POLICY)
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    daemon = start_daemon("--log-level", "TRACE", agent.uri, env={"CONSUL_HTTP_TOKEN_FILE": str(token_file)})
    web = run_container(ports={"80/tcp": None}, labels={"SERVICE_CHECK_TCP": "true"})
    worker = run_container(labels={"SERVICE_NAME": "jobs", "SERVICE_HEARTBEAT_TTL": "3s"})
    wait_until(lambda: len(admin.services_of(hostname)) == 2, message="both registered with the token")
    wait_until(lambda: admin.check_status(f"service:{hostname}:{worker.name}:heartbeat") == "passing",
               message="TTL updates allowed")
    web.remove(force=True)
    wait_until(lambda: len(admin.services_of(hostname)) == 1, message="deregistered with the token")
    assert token not in daemon.log()
    assert "permission denied" not in daemon.log()


def test_without_token_fails_clearly_and_never_leaks(acl_agent, start_daemon, run_container, hostname):
    agent, admin = acl_agent
    read_only = make_token(admin, f"read-only-{hostname}", 'agent_prefix "" { policy = "read" }\n'
                                                            'service_prefix "" { policy = "read" }')
    no_token = start_daemon("-retry-interval", "200", agent.uri)
    no_token.wait_log("permission denied to read the agent's own information")
    run_container(ports={"80/tcp": None})
    daemon = start_daemon("--log-level", "TRACE", *status_args(), agent.uri, env={"CONSUL_HTTP_TOKEN": read_only})
    daemon.wait_log("permission denied to register")
    for _ in range(2):  # full passes (as a resync's, asked by SIGHUP): each retries the refusal once
        daemon.full_pass_by_sighup()
    # Refused once per full pass at most, never in a hot loop (the passes are read after the refusals).
    refusals = daemon.log().count("permission denied to register")
    assert refusals <= daemon.passes()[0] + 1
    assert admin.services_of(hostname) == {}
    assert read_only not in daemon.log() and read_only not in no_token.log()


def tls_files(directory: Path) -> dict[str, str]:
    run = dict(cwd=directory, check=True, capture_output=True)
    subprocess.run(["consul", "tls", "ca", "create"], **run)
    subprocess.run(["consul", "tls", "cert", "create", "-server"], **run)
    subprocess.run(["consul", "tls", "cert", "create", "-client"], **run)
    return {"ca": str(directory / "consul-agent-ca.pem"),
            "cert": str(directory / "dc1-server-consul-0.pem"), "key": str(directory / "dc1-server-consul-0-key.pem"),
            "client_cert": str(directory / "dc1-client-consul-0.pem"),
            "client_key": str(directory / "dc1-client-consul-0-key.pem")}


def test_consul_tls_with_client_certificate(own_agent, start_daemon, run_container, hostname, tmp_path):
    files = tls_files(tmp_path)
    agent = own_agent(tls=files)
    api = agent.api()
    env = {"CONSUL_CACERT": files["ca"], "CONSUL_CLIENT_CERT": files["client_cert"],
           "CONSUL_CLIENT_KEY": files["client_key"]}
    start_daemon(agent.uri, env=env)
    run_container(ports={"80/tcp": None})
    wait_until(lambda: len(api.services_of(hostname)) == 1, message="registered over TLS")


def test_consul_tls_wrong_ca_is_refused(own_agent, start_daemon, hostname, tmp_path):
    files = tls_files(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    subprocess.run(["consul", "tls", "ca", "create"], cwd=other, check=True, capture_output=True)
    agent = own_agent(tls=files)
    env = {"CONSUL_CACERT": str(other / "consul-agent-ca.pem"), "CONSUL_CLIENT_CERT": files["client_cert"],
           "CONSUL_CLIENT_KEY": files["client_key"]}
    daemon = start_daemon("-retry-attempts", "2", "-retry-interval", "100", agent.uri, env=env)
    assert daemon.process.wait(timeout=30) == 1
    assert "CERTIFICATE_VERIFY_FAILED" in daemon.log()


KV_POLICY = POLICY + '\nkey_prefix "" { policy = "write" }'


def test_sighup_rotates_the_token_for_the_primary_and_the_kv_mirror(acl_agent, start_daemon, run_container,
                                                                    hostname, tmp_path):
    import base64

    agent, admin = acl_agent
    first = make_token(admin, f"first-{hostname}", KV_POLICY)
    token_file = tmp_path / "token"
    token_file.write_text(first + "\n")
    prefix = f"rot-{hostname}"
    daemon = start_daemon("-ip", "192.0.2.40", agent.uri, f"consulkv://127.0.0.1:{agent.http_port}/{prefix}",
                          env={"CONSUL_HTTP_TOKEN_FILE": str(token_file)})

    def keys() -> set[str]:
        response = admin.http.get(f"/v1/kv/{prefix}", params={"recurse": "true"})
        return set() if response.status_code == 404 else {e["Key"] for e in response.json()
                                                         if base64.b64decode(e["Value"] or "")}

    one = run_container(ports={"80/tcp": None})
    wait_until(lambda: len(admin.services_of(hostname)) == 1 and len(keys()) == 1, message="written with the first")
    second = make_token(admin, f"second-{hostname}", KV_POLICY)
    token_file.write_text(second + "\n")
    daemon.process.send_signal(signal.SIGHUP)
    daemon.wait_log("token re-read")
    accessor = next(t["AccessorID"] for t in admin.http.get("/v1/acl/tokens").json() if t.get("Policies")
                    and t["Policies"][0]["Name"] == f"first-{hostname}")
    admin.http.delete(f"/v1/acl/token/{accessor}").raise_for_status()  # the old token is revoked
    two = run_container(ports={"80/tcp": None})
    wait_until(lambda: len(admin.services_of(hostname)) == 2 and len(keys()) == 2, message="written with the second")
    assert any(two.name in key for key in keys()) and any(one.name in key for key in keys())
    log = daemon.log()
    assert first not in log and second not in log and "permission denied" not in log


def test_the_token_is_never_sent_in_clear_to_another_machine(start_daemon, hostname):
    daemon = start_daemon("consul://127.0.0.1:8500", "consulkv://192.0.2.50:8500/services",
                          env={"CONSUL_HTTP_TOKEN": "not-a-real-token-0123"})
    assert daemon.process.wait(timeout=20) == 2
    assert "clear text" in daemon.log() and "not-a-real-token-0123" not in daemon.log()
