"""Operator experience: status endpoint, JSON logs, SIGHUP, and discovery via
Consul tags (DNS, Traefik's tag forms)."""

from __future__ import annotations

import json
import signal
import subprocess

import httpx
import pytest

from tests.integration.conftest import free_port, host_port, wait_until
from tests.integration.test_security import ACL_HCL, MASTER, POLICY, make_token

pytestmark = pytest.mark.integration


def test_status_endpoint(own_agent, start_daemon, run_container, hostname):
    agent = own_agent()
    port = free_port()
    start_daemon("--status-addr", f"127.0.0.1:{port}", agent.uri)
    web = run_container(ports={"80/tcp": None}, labels={"SERVICE_NAME": "web"})
    status = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5)
    wait_until(lambda: f"{hostname}:{web.name}:80" in agent.api().services(), message="registered")
    health = wait_until(lambda: status.get("/health"), message="status endpoint up")
    assert health.status_code == 200 and health.json()["docker"] == "ok" and health.json()["consul"] == "ok"

    def counted_and_published() -> bool:
        # The agent holds the service before the daemon counts it and publishes its snapshot.
        metrics = status.get("/metrics").text
        services = status.get("/services").json()
        return ('consul_reg_registrations_total{registry="consul"} 1.0' in metrics
                and "consul_reg_services_managed 1.0" in metrics
                and "consul_reg_reconcile_duration_seconds_count" in metrics
                and services["containers"][web.name]["services"][0]["registered"] is True)

    wait_until(counted_and_published, message="the registration in /metrics and /services")
    agent.stop()
    wait_until(lambda: status.get("/health").status_code == 503, timeout=40, message="503 once Consul is gone")


def test_json_logs_carry_fields(start_daemon, run_container, hostname):
    daemon = start_daemon("--log-format", "json", "-ip", "192.0.2.1")
    web = run_container(ports={"80/tcp": None})
    daemon.wait_log('"action": "register"')
    text = daemon.log()  # read once: the daemon goes on writing (and may be in the middle of a line)
    records = [json.loads(line)["record"] for line in text[:text.rfind("\n") + 1].splitlines()]  # JSON, nothing else
    register = next(r for r in records if r["extra"].get("action") == "register")
    assert register["extra"]["service_id"] == f"{hostname}:{web.name}:80"
    assert register["extra"]["container"] == web.name


def test_sighup_rereads_the_token_file(own_agent, start_daemon, run_container, hostname, tmp_path):
    agent = own_agent(hcl=ACL_HCL)
    admin = agent.api(token=MASTER)
    wait_until(lambda: admin.http.get("/v1/acl/policies").status_code == 200, message="ACL system up")
    weak = make_token(admin, f"weak-{hostname}", 'agent_prefix "" { policy = "read" }')
    good = make_token(admin, f"good-{hostname}", POLICY)
    token_file = tmp_path / "token"
    token_file.write_text(weak)
    daemon = start_daemon(agent.uri, env={"CONSUL_HTTP_TOKEN_FILE": str(token_file)})
    run_container(ports={"80/tcp": None})
    daemon.wait_log("permission denied to register")
    token_file.write_text(good)
    daemon.process.send_signal(signal.SIGHUP)
    wait_until(lambda: len(admin.services_of(hostname)) == 1, message="registered with the re-read token")
    assert "token re-read" in daemon.log()
    assert good not in daemon.log() and weak not in daemon.log()


def dig_srv(name: str) -> str:
    return subprocess.run(["dig", "@127.0.0.1", "-p", "8600", "+short", f"{name}.service.consul", "SRV"],
                          capture_output=True, text=True, timeout=10).stdout


def test_consul_dns_follows_registration_and_health(start_daemon, run_container, hostname):
    start_daemon("-internal")
    name = f"dns-{hostname}"
    web = run_container(["sh", "-c", "echo ok > /www/health && exec httpd -f -p 80 -h /www"],
                        ports={"80/tcp": None},
                        labels={"SERVICE_NAME": name, "SERVICE_CHECK_HTTP": "/health", "SERVICE_CHECK_INTERVAL": "1s"})
    wait_until(lambda: " 80 " in dig_srv(name), message="SRV record with the port")
    web.exec_run("rm /www/health")
    wait_until(lambda: dig_srv(name).strip() == "", message="critical instance no longer returned")


def test_traefik_tag_forms_arrive_byte_for_byte(start_daemon, run_container, consul_api, hostname):
    start_daemon("-ip", "192.0.2.1")
    tags = ["traefik.enable=true",
            "traefik.http.routers.web.rule=Host(`web.example.com`)",
            "traefik.http.routers.web.tls=true",
            "traefik.http.routers.multi.rule=Host(`a.example.com`,`b.example.com`) && PathPrefix(`/api`)"]
    label = ",".join(tag.replace(",", "\\,") for tag in tags)
    web = run_container(ports={"80/tcp": None}, labels={"SERVICE_TAGS": label})
    service = wait_until(lambda: consul_api.services_of(hostname).get(f"{hostname}:{web.name}:80"),
                         message="registered")
    assert service["Tags"] == tags
    assert service["Port"] == host_port(web, "80/tcp")


def run_explain(*args: str) -> subprocess.CompletedProcess[str]:
    import sys

    return subprocess.run([sys.executable, "-m", "consul_reg", "explain", *args], capture_output=True, text=True,
                          timeout=60)


def test_explain_shows_fields_sources_and_registers_nothing(run_container, consul_api, hostname):
    web = run_container(ports={"80/tcp": None}, environment={"SERVICE_TAGS": "www"},
                        labels={"SERVICE_NAME": "shop", "SERVICE_CHECK_HTTP": "/health", "SERVICE_ZONE": "z1",
                                "SERVICE_9999_NAME": "nope"})
    result = run_explain("-ip", "192.0.2.7", "-tags", "forced", "--hostname", hostname, web.name)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert f"service {hostname}:{web.name}:80" in out
    assert "Name         shop    <- label SERVICE_NAME" in out
    assert "Address      192.0.2.7    <- -ip" in out
    assert "Tags         www, forced    <- env SERVICE_TAGS + flag -tags" in out
    assert "Meta zone    z1    <- label SERVICE_ZONE" in out
    assert f"HTTP=http://192.0.2.7:{host_port(web, '80/tcp')}/health" in out
    assert "warning: key 'SERVICE_9999_NAME': port 9999 is not published" in out
    assert consul_api.services_of(hostname) == {}


def test_explain_exits_1_with_the_reason(run_container, hostname):
    silent = run_container()
    result = run_explain("--hostname", hostname, silent.name)
    assert result.returncode == 1
    assert "would register nothing: it publishes no port and sets no SERVICE_NAME" in result.stdout


def test_tags_template_per_container(start_daemon, run_container, consul_api, hostname):
    daemon = start_daemon("-ip", "192.0.2.1", "-tags",
                          'id={{ strSlice .ID 0 12 }},team={{ mIndex "team" .Config.Labels | toLower }},static')
    web = run_container(ports={"80/tcp": None}, labels={"team": "Payments"})
    broken = run_container(ports={"81/tcp": None})  # no "team" label: mIndex gives nothing, still fine
    services = wait_until(lambda: (s := consul_api.services_of(hostname)) and len(s) == 2 and s,
                          message="both registered")
    assert services[f"{hostname}:{web.name}:80"]["Tags"] == [f"id={web.id[:12]}", "team=payments", "static"]
    assert services[f"{hostname}:{broken.name}:81"]["Tags"] == [f"id={broken.id[:12]}", "team=", "static"]
    assert "Traceback" not in daemon.log()
