"""checks/ probes, run by busybox sh inside a real busybox container."""

from __future__ import annotations

import pytest

from tests.integration.conftest import ROOT, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def box(run_container):
    return run_container(volumes={str(ROOT / "checks"): {"bind": "/checks", "mode": "ro"}})


def probe(container, *args: str) -> tuple[int, str]:
    result = container.exec_run(["/checks/" + args[0], *args[1:]])
    return result.exit_code, result.output.decode().strip()


def test_heartbeat_file(box):
    code, line = probe(box, "heartbeat-file", "/tmp/hb", "2")
    assert code == 2 and "does not exist" in line
    box.exec_run("touch /tmp/hb")
    code, line = probe(box, "heartbeat-file", "/tmp/hb", "2")
    assert code == 0 and line.startswith("passing")
    assert probe(box, "heartbeat-file", "/tmp/hb", "2")[1] == line  # constant while passing: no server writes
    # The worker stops touching it: it lapses once older than the limit.
    wait_until(lambda: probe(box, "heartbeat-file", "/tmp/hb", "2")[0] == 2, timeout=10, interval=0.5,
               message="heartbeat file too old")
    assert "last touched" in probe(box, "heartbeat-file", "/tmp/hb", "2")[1]  # critical: says how old
    assert probe(box, "heartbeat-file", "/tmp/hb", "soon")[0] == 2


def test_tcp_established(box):
    code, line = probe(box, "tcp-established", "5672")
    assert code == 2 and line.startswith("critical")
    box.exec_run(["sh", "-c", "nc -l -p 5672 -e cat >/dev/null 2>&1 &"], detach=True)
    box.exec_run(["sh", "-c", "sleep 600 | nc 127.0.0.1 5672 >/dev/null 2>&1 &"], detach=True)
    wait_until(lambda: probe(box, "tcp-established", "5672")[0] == 0, message="connection seen")
    assert "established connection" in probe(box, "tcp-established", "5672")[1]
    assert probe(box, "tcp-established", "5673")[0] == 2
    assert probe(box, "tcp-established", "http")[0] == 2


def test_process_alive(box):
    assert probe(box, "process-alive", "sleep")[0] == 0  # the container's own `sleep 600`
    code, line = probe(box, "process-alive", "rabbit-consumer")
    assert code == 2 and "no process named rabbit-consumer" in line
    box.exec_run(["sh", "-c", "exec -a rabbit-consumer sleep 600 &"], detach=True)
    wait_until(lambda: probe(box, "process-alive", "rabbit-consumer")[0] == 0, message="process seen")
