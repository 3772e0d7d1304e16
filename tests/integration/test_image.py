"""The container image, run as registrator's users run it:
`docker run -d --net=host -v /var/run/docker.sock:/tmp/docker.sock consul-reg consul://localhost:8500`,
and hardened (`--read-only --cap-drop ALL --security-opt no-new-privileges`),
against the shared test agent, with --hostname of the test's own."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
import uuid
from importlib.metadata import version
from pathlib import Path

import pytest

from tests.integration.conftest import IMAGE, ROOT, RUN_ID, TEST_LABEL, host_port, wait_until
from tests.integration.image_build import consul_reg_image  # noqa: F401 (a fixture)

pytestmark = pytest.mark.integration


def docker_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def image_daemon(consul_reg_image, hostname):
    """Start the image the documented way; removed at the end."""
    names: list[str] = []

    def start(*daemon_args: str, docker_args: tuple[str, ...] = ()) -> str:
        name = f"crt-consul-reg-{uuid.uuid4().hex[:8]}"
        ran = docker_cli("run", "-d", "--name", name, "--label", f"{TEST_LABEL}={RUN_ID}", *docker_args,
                         "--net=host", "-v", "/var/run/docker.sock:/tmp/docker.sock", consul_reg_image,
                         "--hostname", hostname, "-resync", "0", *daemon_args, "consul://localhost:8500")
        assert ran.returncode == 0, ran.stderr
        names.append(name)
        return name

    yield start
    for name in names:
        docker_cli("rm", "-f", name)


def logs(name: str) -> str:
    return docker_cli("logs", name).stderr


HARDENED = ("--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges")
# What `docker diff` shows of a container that wrote nothing: the socket's mount point.
MOUNT_POINT_ONLY = ["A /tmp/docker.sock", "C /tmp"]


def written(name: str) -> list[str]:
    return sorted(docker_cli("diff", name).stdout.splitlines())


def test_image_registers_containers_not_itself_and_stops_cleanly(image_daemon, run_container, consul_api,
                                                                  hostname):
    # SERVICE_NAME on the daemon's own container: only the image's SERVICE_IGNORE label keeps it out.
    daemon = image_daemon(docker_args=("-e", "SERVICE_NAME=consul-reg"))
    wait_until(lambda: "connected: docker unix:///tmp/docker.sock" in logs(daemon), timeout=30,
               message="the daemon in the container connected through /tmp/docker.sock")
    pid1 = docker_cli("exec", daemon, "cat", "/proc/1/cmdline").stdout.replace("\0", " ")
    assert "consul-reg" in pid1, pid1  # signals reach the daemon itself

    web = run_container("httpd -f -p 8080 -h /www", ports={"8080/tcp": None},
                        labels={"SERVICE_NAME": "img-web", "SERVICE_TAGS": "a,b"})
    worker = run_container(labels={"SERVICE_NAME": "img-worker"})
    web_id, worker_id = f"{hostname}:{web.name}:8080", f"{hostname}:{worker.name}"
    services = wait_until(lambda: (s := consul_api.services_of(hostname)) and {web_id, worker_id} <= set(s) and s,
                          timeout=30, message="web and worker registered by the daemon in the container")
    assert services[web_id]["Service"] == "img-web" and services[web_id]["Tags"] == ["a", "b"]
    assert services[web_id]["Port"] == host_port(web, "8080/tcp")
    assert services[worker_id]["Service"] == "img-worker" and services[worker_id]["Port"] == 0
    daemon_id = docker_cli("inspect", "-f", "{{.Id}}", daemon).stdout.strip()
    assert not [sid for sid, s in services.items() if s["Meta"].get("consul_reg_container") == daemon_id]
    assert not [s for s in services.values() if s["Service"] == "consul-reg"]
    assert f"container {daemon}: not registered: SERVICE_IGNORE='true' asks to ignore it" in logs(daemon)

    started = time.monotonic()
    stopped = docker_cli("stop", "-t", "10", daemon, timeout=30)
    elapsed = time.monotonic() - started
    assert stopped.returncode == 0, stopped.stderr
    assert elapsed < 10, f"docker stop took {elapsed:.1f}s: SIGTERM did not reach the daemon"
    state = docker_cli("inspect", "-f", "{{.State.ExitCode}} {{.State.OOMKilled}}", daemon).stdout.split()
    assert state == ["0", "false"], state  # a clean exit, not the SIGKILL after the timeout (137)
    assert logs(daemon).rstrip().endswith("stopped")
    assert {web_id, worker_id} <= set(consul_api.services_of(hostname))  # a restart is not an outage
    assert written(daemon) == MOUNT_POINT_ONLY  # no bytecode, no log or temp file: a read-only root suffices


def test_image_hardened_needs_no_capability_and_no_writable_root(image_daemon, run_container, consul_api,
                                                                hostname):
    """The documented hardened run: a read-only root (no tmpfs), no capability, no new
    privileges. It registers, runs its own exec and heartbeat checks, drains and
    deregisters as the plain run does."""
    daemon = image_daemon("--exec-checks", "daemon", docker_args=HARDENED)
    wait_until(lambda: "connected: docker unix:///tmp/docker.sock" in logs(daemon), timeout=30,
               message="the hardened daemon connected through /tmp/docker.sock")
    host_config = docker_cli("inspect", "-f", "{{json .HostConfig}}", daemon).stdout
    assert '"ReadonlyRootfs":true' in host_config and '"CapDrop":["ALL"]' in host_config \
        and "no-new-privileges" in host_config, host_config
    status = dict(line.split(":\t", 1) for line in
                  docker_cli("exec", daemon, "cat", "/proc/1/status").stdout.splitlines() if ":\t" in line)
    assert [status[k].strip() for k in ("CapPrm", "CapEff", "CapBnd", "NoNewPrivs")] == \
        ["0000000000000000"] * 3 + ["1"], status

    # busybox httpd as PID 1 ignores SIGTERM: `docker stop` waits (the drain is seen), the test kills it.
    web = run_container("httpd -f -p 8080 -h /www", ports={"8080/tcp": None}, stop_signal="SIGTERM",
                        labels={"SERVICE_NAME": "hard-web", "SERVICE_CHECK_DOCKER": "echo all good"})
    worker = run_container(labels={"SERVICE_NAME": "hard-jobs", "SERVICE_HEARTBEAT_TTL": "3s"})
    web_id, worker_id = f"{hostname}:{web.name}:8080", f"{hostname}:{worker.name}"
    exec_check = wait_until(lambda: (c := consul_api.checks_of(web_id).get(f"service:{web_id}:docker"))
                            and c["Status"] == "passing" and c, timeout=30,
                            message="the daemon's exec check passing")
    assert "all good" in exec_check["Output"]
    assert consul_api.services_of(hostname)[web_id]["Port"] == host_port(web, "8080/tcp")
    wait_until(lambda: consul_api.check_status(f"service:{worker_id}:heartbeat") == "passing", timeout=30,
               message="the daemon's heartbeat passing")

    stopper = threading.Thread(target=web.stop, kwargs={"timeout": 60})
    stopper.start()
    try:
        drained = wait_until(lambda: (m := consul_api.http.get("/v1/agent/checks").json()
                                      .get(f"_service_maintenance:{web_id}")) and m, timeout=30,
                             message="in maintenance while stopping")
        assert drained["Notes"].startswith("consul-reg: draining")
        web.kill()
        wait_until(lambda: web_id not in consul_api.services(), timeout=15, message="deregistered after death")
    finally:
        stopper.join()
    assert worker_id in consul_api.services_of(hostname)
    assert docker_cli("stop", "-t", "10", daemon, timeout=30).returncode == 0
    assert docker_cli("inspect", "-f", "{{.State.ExitCode}}", daemon).stdout.strip() == "0"
    log = logs(daemon)
    for trouble in ("Read-only file system", "Permission denied", "Operation not permitted", "Traceback"):
        assert trouble not in log, log[-3000:]
    assert written(daemon) == MOUNT_POINT_ONLY


def test_image_holds_probes_and_no_build_tools(consul_reg_image, docker_client, tmp_path: Path):
    listed = docker_cli("run", "--rm", "--entrypoint", "sh", consul_reg_image, "-c",
                        "ls /opt/consul-reg/checks; for t in pip pip3 gcc cc; do command -v $t; done;"
                        " python3 -c 'import pip' 2>/dev/null && echo pip-importable; true")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == ["heartbeat-file", "process-alive", "tcp-established"]

    # The documented COPY --from works for another image, and the probe runs there.
    (tmp_path / "Dockerfile").write_text(
        f"FROM {IMAGE}\nCOPY --from={consul_reg_image} /opt/consul-reg/checks/ /checks/\n")
    tag = f"consul-reg-test/probe-user:{RUN_ID}"
    built = subprocess.run(["docker", "build", "-q", "--network", "none", "-t", tag, str(tmp_path)],
                           capture_output=True, text=True, timeout=120, env={**os.environ, "DOCKER_BUILDKIT": "0"})
    assert built.returncode == 0, built.stderr
    try:
        alive = docker_cli("run", "--rm", "--label", f"{TEST_LABEL}={RUN_ID}", tag, "sh", "-c",
                           "sleep 30 & exec /checks/process-alive sleep")
        missing = docker_cli("run", "--rm", "--label", f"{TEST_LABEL}={RUN_ID}", tag, "sh", "-c",
                             "exec /checks/process-alive no-such-process")
        assert alive.returncode == 0, alive.stdout + alive.stderr
        assert missing.returncode == 2, missing.stdout + missing.stderr
    finally:
        docker_client.images.remove(tag, force=True)


def test_image_base_is_pinned_and_recorded(consul_reg_image):
    """The Dockerfile's default base is a Python patch release on a Debian suite, by digest;
    the offline base is bookworm with Python 3.11 (the default's minor), and the image
    records what it was built on."""
    default = re.search(r"^ARG BASE=(\S+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert default and re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", default[1]), default
    labels = json.loads(docker_cli("image", "inspect", "-f", "{{json .Config.Labels}}", consul_reg_image).stdout)
    base = os.environ.get("CONSUL_REG_BASE_IMAGE", "consul-reg-base/bookworm-python3.11:latest")
    assert labels["org.opencontainers.image.base.name"] == base, labels
    assert labels["consul-reg.base.suite"] == "bookworm" and labels["consul-reg.base.debian-version"].startswith("12.")
    assert labels["consul-reg.base.python"].startswith("python3.11="), labels
    assert re.fullmatch(r"[0-9a-f]{64}", labels["consul-reg.base.release-sha256"]), labels
    # The OCI labels show the package's version (its metadata, as `consul-reg --version` in the image says).
    ran = docker_cli("run", "--rm", "--network", "none", consul_reg_image, "--version")
    assert ran.stdout.strip() == f"consul-reg {labels['org.opencontainers.image.version']}", (ran.stdout, labels)
    assert labels["org.opencontainers.image.version"] == version("consul-reg"), labels
    assert labels["org.opencontainers.image.licenses"] == "MIT" and labels["org.opencontainers.image.source"], labels
    ran = docker_cli("run", "--rm", "--network", "none", "--entrypoint", "python3", consul_reg_image, "-c",
                     "import sys; print('%d.%d' % sys.version_info[:2])")
    assert ran.stdout.strip() == "3.11", ran.stdout + ran.stderr
