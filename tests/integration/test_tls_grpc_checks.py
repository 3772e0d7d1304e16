"""HTTPS and gRPC checks: busybox has neither server, so real ones run on the
host (openssl s_server, grpcio's health service) and the checks reach them
through SERVICE_CHECK_ADDRESS / SERVICE_CHECK_PORT."""

from __future__ import annotations

import subprocess
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tests.integration.conftest import free_port, wait_until

pytestmark = pytest.mark.integration


def wait_status(consul_api, check_id, status):
    wait_until(lambda: consul_api.check_status(check_id) == status, 30, message=f"{check_id} {status}")


@pytest.fixture
def https_server(tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
                    "-days", "1", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    port = free_port()
    server = subprocess.Popen(["openssl", "s_server", "-www", "-accept", str(port), "-cert", str(cert),
                               "-key", str(key)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              stdin=subprocess.DEVNULL)
    yield port, server
    server.kill()
    server.wait()


def test_https_check(https_server, start_daemon, run_container, consul_api, hostname):
    port, server = https_server
    start_daemon("-internal", "--allow-check-target", f"127.0.0.1/32:{port}")  # a host server, allowed
    container = run_container(ports={"80/tcp": None}, labels={
        "SERVICE_CHECK_HTTPS": "/", "SERVICE_CHECK_TLS_SKIP_VERIFY": "true", "SERVICE_CHECK_INTERVAL": "1s",
        "SERVICE_CHECK_ADDRESS": "127.0.0.1", "SERVICE_CHECK_PORT": str(port)})
    check_id = f"service:{hostname}:{container.name}:80:https"
    wait_status(consul_api, check_id, "passing")
    server.kill()
    wait_status(consul_api, check_id, "critical")


def test_https_check_verifies_by_default(https_server, start_daemon, run_container, consul_api, hostname):
    port, _ = https_server
    start_daemon("-internal", "--allow-check-target", f"127.0.0.1/32:{port}")  # a host server, allowed
    container = run_container(ports={"80/tcp": None}, labels={
        "SERVICE_CHECK_HTTPS": "/", "SERVICE_CHECK_INTERVAL": "1s",
        "SERVICE_CHECK_ADDRESS": "127.0.0.1", "SERVICE_CHECK_PORT": str(port)})
    check_id = f"service:{hostname}:{container.name}:80:https"
    wait_until(lambda: "certificate" in consul_api.checks_of(f"{hostname}:{container.name}:80")
               .get(check_id, {}).get("Output", ""), message="self-signed certificate refused")
    assert consul_api.check_status(check_id) == "critical"


def test_grpc_check(start_daemon, run_container, consul_api, hostname):
    port = free_port()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    server.start()
    try:
        start_daemon("-internal", "--allow-check-target", f"127.0.0.1/32:{port}")  # a host server, allowed
        container = run_container(ports={"80/tcp": None}, labels={
            "SERVICE_CHECK_GRPC": "true", "SERVICE_CHECK_INTERVAL": "1s",
            "SERVICE_CHECK_ADDRESS": "127.0.0.1", "SERVICE_CHECK_PORT": str(port)})
        check_id = f"service:{hostname}:{container.name}:80:grpc"
        wait_status(consul_api, check_id, "passing")
        servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        wait_status(consul_api, check_id, "critical")
    finally:
        server.stop(0)
