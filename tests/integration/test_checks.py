"""SERVICE_CHECK_* keys become native checks that the real agent runs.

The daemon runs with -internal, so the agent probes the container's own IP
(through Docker's userland proxy a published port accepts connections even
when nothing listens in the container, which would hide a broken service).
"""

from __future__ import annotations

import pytest

from tests.integration.conftest import status_args, wait_until

pytestmark = pytest.mark.integration

# An HTTP server with a health file and a CGI that records each request's env.
WEB = ("mkdir -p /www/cgi-bin && "
       "printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\nenv > /tmp/last-request\\necho ok\\n' "
       "> /www/cgi-bin/echo && chmod +x /www/cgi-bin/echo && echo ok > /www/health && "
       "exec httpd -f -p 80 -h /www")
FAST = {"SERVICE_CHECK_INTERVAL": "1s", "SERVICE_CHECK_TIMEOUT": "1s"}


def web(run_container, **keys):
    return run_container(["sh", "-c", WEB], ports={"80/tcp": None}, labels={**FAST, **keys})


def wait_status(consul_api, check_id, status, timeout=30.0):
    wait_until(lambda: consul_api.check_status(check_id) == status, timeout, message=f"check {check_id} {status}")


@pytest.mark.parametrize("key,value,kind", [
    ("SERVICE_CHECK_HTTP", "/health", "http"),
    # Run by the agent on the host through /bin/sh -c: the pipe is the point.
    ("SERVICE_CHECK_SCRIPT", "/bin/busybox wget -q -O - http://$SERVICE_IP:$SERVICE_PORT/health | grep -q ok || exit 2",
     "script"),
    # Run by the agent inside the container (a docker check).
    ("SERVICE_CHECK_DOCKER", "test -f /www/health || exit 2", "docker"),
])
def test_agent_check_follows_the_server(start_daemon, run_container, consul_api, hostname, key, value, kind):
    start_daemon("-internal")
    container = web(run_container, **{key: value})
    check_id = f"service:{hostname}:{container.name}:80:{kind}"
    wait_status(consul_api, check_id, "passing")
    assert consul_api.checks_of(f"{hostname}:{container.name}:80")[check_id]["Type"] == kind
    container.exec_run("rm /www/health")
    wait_status(consul_api, check_id, "critical")


def test_several_checks_on_one_service_and_app_owned_ttl(start_daemon, run_container, consul_api, hostname):
    start_daemon("-internal")
    container = web(run_container, SERVICE_CHECK_HTTP="/health", SERVICE_CHECK_TCP="true",
                    SERVICE_CHECK_TTL="30s")
    service_id = f"{hostname}:{container.name}:80"
    wait_status(consul_api, f"service:{service_id}:http", "passing")
    wait_status(consul_api, f"service:{service_id}:tcp", "passing")
    assert set(consul_api.checks_of(service_id)) == {f"service:{service_id}:http", f"service:{service_id}:tcp",
                                                     f"service:{service_id}"}
    # The TTL check is the application's: the daemon never passes it, the app does, at Consul's default ID.
    assert consul_api.check_status(f"service:{service_id}") == "critical"
    consul_api.http.put(f"/v1/agent/check/pass/service:{service_id}").raise_for_status()
    assert consul_api.check_status(f"service:{service_id}") == "passing"


def test_per_port_checks_on_two_ports(start_daemon, run_container, consul_api, hostname):
    start_daemon("-internal")
    container = run_container(["sh", "-c", WEB], ports={"80/tcp": None, "81/tcp": None},
                              labels={**FAST, "SERVICE_80_CHECK_HTTP": "/health", "SERVICE_81_CHECK_TCP": "true"})
    wait_status(consul_api, f"service:{hostname}:{container.name}:80:http", "passing")
    wait_status(consul_api, f"service:{hostname}:{container.name}:81:tcp", "critical")  # nothing listens on 81
    assert list(consul_api.checks_of(f"{hostname}:{container.name}:80")) == \
        [f"service:{hostname}:{container.name}:80:http"]


def test_header_and_method_reach_the_server(start_daemon, run_container, consul_api, hostname):
    start_daemon("-internal", "--allow-check-redirects")  # a POST on Consul 1.8.7, which follows redirects
    container = web(run_container, SERVICE_CHECK_HTTP="/cgi-bin/echo", SERVICE_CHECK_HTTP_METHOD="POST",
                    SERVICE_CHECK_HTTP_HEADER_X_API_KEY="s3cr3t")
    wait_status(consul_api, f"service:{hostname}:{container.name}:80:http", "passing")
    request_env = container.exec_run("cat /tmp/last-request").output.decode()
    assert "REQUEST_METHOD=POST" in request_env
    assert "HTTP_X_API_KEY=s3cr3t" in request_env


def test_initial_status(start_daemon, run_container, consul_api, hostname):
    start_daemon("-internal")
    container = web(run_container, SERVICE_CHECK_TTL="1h", SERVICE_CHECK_INITIAL_STATUS="warning")
    wait_status(consul_api, f"service:{hostname}:{container.name}:80", "warning")


def test_no_script_checks_refuses_them(start_daemon, run_container, consul_api, hostname):
    daemon = start_daemon("-internal", "--no-script-checks")
    container = web(run_container, SERVICE_CHECK_SCRIPT="true", SERVICE_CHECK_TCP="true")
    service_id = f"{hostname}:{container.name}:80"
    wait_status(consul_api, f"service:{service_id}:tcp", "passing")
    assert list(consul_api.checks_of(service_id)) == [f"service:{service_id}:tcp"]
    daemon.wait_log(f"container {container.name}: key 'SERVICE_CHECK_SCRIPT'='true': script checks are refused")


def test_docker_check_falls_back_to_the_daemon(own_agent, start_daemon, run_container, hostname):
    agent = own_agent()  # script checks disabled, as on many agents
    api = agent.api()
    daemon = start_daemon("-internal", agent.uri)
    container = web(run_container, SERVICE_CHECK_DOCKER="test -f /www/health || exit 2",
                    SERVICE_CHECK_SCRIPT="true")
    check_id = f"service:{hostname}:{container.name}:80:docker"
    wait_status(api, check_id, "passing")
    assert api.checks_of(f"{hostname}:{container.name}:80")[check_id]["Type"] == "ttl"
    assert "the agent has script checks disabled" in daemon.log()
    assert "SERVICE_CHECK_SCRIPT" in daemon.log()  # the script check was dropped, with a warning
    container.exec_run("rm /www/health")
    # An exec past its 1 s budget is critical too ("timed out after 1s"): status and output in one read.
    wait_until(lambda: (c := api.checks_of(f"{hostname}:{container.name}:80")[check_id])["Status"] == "critical"
               and "exit code 2" in c["Output"], timeout=30, message=f"check {check_id} critical with exit code 2")


def test_exec_checks_daemon_on_purpose(start_daemon, run_container, consul_api, hostname):
    start_daemon("-internal", "--exec-checks", "daemon")
    container = web(run_container, SERVICE_CHECK_DOCKER="echo all good")
    check_id = f"service:{hostname}:{container.name}:80:docker"
    # Read with its status: the next exec may time out (critical, "timed out after ...") right after.
    check = wait_until(lambda: (c := consul_api.checks_of(f"{hostname}:{container.name}:80")[check_id])["Status"]
                       == "passing" and c, timeout=30, message=f"check {check_id} passing")
    assert check["Type"] == "ttl" and "all good" in check["Output"]


def test_invalid_value_drops_only_that_check(start_daemon, run_container, consul_api, hostname):
    daemon = start_daemon("-internal")
    container = web(run_container, SERVICE_CHECK_TCP="true", SERVICE_CHECK_HTTP="/health",
                    SERVICE_CHECK_HTTP_INTERVAL="banana")
    service_id = f"{hostname}:{container.name}:80"
    wait_status(consul_api, f"service:{service_id}:tcp", "passing")
    assert list(consul_api.checks_of(service_id)) == [f"service:{service_id}:tcp"]
    daemon.wait_log("key 'SERVICE_CHECK_HTTP_INTERVAL'='banana': not a duration")


def test_removed_check_key_disappears_from_consul(start_daemon, run_container, consul_api, hostname):
    """Re-registering replaces the checks: a check no longer declared goes away."""
    start_daemon("-internal", "-explicit")
    first = web(run_container, SERVICE_NAME="same", SERVICE_ID=f"{hostname}-same", SERVICE_CHECK_TCP="true",
                SERVICE_CHECK_HTTP="/health")
    wait_until(lambda: len(consul_api.checks_of(f"{hostname}-same")) == 2, message="two checks")
    first.remove(force=True)
    web(run_container, SERVICE_NAME="same", SERVICE_ID=f"{hostname}-same", SERVICE_CHECK_TCP="true")
    wait_until(lambda: list(consul_api.checks_of(f"{hostname}-same")) == [f"service:{hostname}-same:tcp"],
               message="only the TCP check left")


@pytest.mark.slow
def test_deregister_after_is_not_undone(start_daemon, run_container, consul_api, hostname):
    """Consul reaps at least 1 minute after critical, every 30 s: this test takes ~1.5 minutes."""
    daemon = start_daemon("-internal", *status_args())
    container = run_container(ports={"81/tcp": None}, labels={  # nothing listens: critical at once
        **FAST, "SERVICE_CHECK_TCP": "true", "SERVICE_CHECK_DEREGISTER_AFTER": "1m"})
    service_id = f"{hostname}:{container.name}:81"
    wait_until(lambda: service_id in consul_api.services(), message="registered")
    wait_until(lambda: service_id not in consul_api.services(), timeout=150, interval=1,
               message="the agent reaped the service")
    for _ in range(2):  # full passes (as a resync's, asked by SIGHUP): the first sees the reap, none undoes it
        daemon.full_pass_by_sighup()
    daemon.wait_log(f"the agent removed {service_id}")
    assert service_id not in consul_api.services()
    container.restart(timeout=1)
    wait_until(lambda: service_id in consul_api.services(), message="back after the container restarted")
