"""The heartbeat scheduler's exec pool under hostile containers (real threads,
real clock, a fake Docker exec that behaves like a command running until its
timeout), and the slot rules it follows (ExecSlots, plain values)."""

from __future__ import annotations

import threading
import time

from consul_reg.app.config import Config
from consul_reg.probes.exec_slots import FAST_TIMEOUT_SECONDS, ExecSlots
from consul_reg.probes.scheduler import ProbeScheduler
from consul_reg.mapping.services import map_container
from consul_reg.core.records import ContainerStatus
from tests.unit.fakes import container

HOSTILE_LABELS = {"SERVICE_CHECK_DOCKER": "sleep 86400", "SERVICE_CHECK_INTERVAL": "24h",
                  "SERVICE_CHECK_TIMEOUT": "24h"}


class Recorder:
    def __init__(self) -> None:
        self.updates: dict[str, int] = {}
        self.lock = threading.Lock()

    def update_check(self, check_id: str, status: str, output: str) -> None:
        with self.lock:
            self.updates[check_id] = self.updates.get(check_id, 0) + 1


class SlowCommands:
    """Docker exec as container_exec runs it: the command runs until it ends or
    its timeout passes. Hostile commands never end on their own."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.hostile_running = 0
        self.started = threading.Condition()

    def exec_in_container(self, container_id: str, command: str, timeout_seconds: float) -> tuple[int, str]:
        if command.startswith("sleep 86400"):
            with self.started:
                self.hostile_running += 1
                self.started.notify_all()
            self.release.wait(timeout_seconds)
            return -1, "timed out"
        return 0, "ok"


def test_two_containers_with_endless_commands_cannot_starve_other_containers_exec_checks() -> None:
    """README "Security model": daemon-run exec checks have "at most one in flight per
    check and two per container". The pool has 4 workers for the whole host and a
    check's timeout may be as long as its interval (24h here): two containers with two
    such checks each must not hold every worker (then every other container's exec
    check never runs again, its TTL lapses and its service turns critical)."""
    settings = Config(hostname="h1", registry_uris=("consul://x",), exec_checks="daemon").mapping_settings(
        "10.0.0.1", "test", "1.8.7", True)
    hostile = []
    for n in (1, 2):
        records = map_container(container(f"bad{n}", f"bad{n}", ports={"80/tcp": "8080", "81/tcp": "8081"},
                                          labels=HOSTILE_LABELS), settings)
        assert [c.daemon_probe.timeout for s in records.services for c in s.checks] == [86400.0, 86400.0]
        hostile.append((f"bad{n}", records.services))
    legit = map_container(container("good", "good", ports={"80/tcp": "8080"},
                                    labels={"SERVICE_CHECK_DOCKER": "true", "SERVICE_CHECK_INTERVAL": "1s"}),
                          settings).services
    legit_check = legit[0].checks[0].check_id

    reporter, runner = Recorder(), SlowCommands()
    scheduler = ProbeScheduler(reporter, runner, lambda sid, cid: None)
    scheduler.start()
    try:
        for container_id, services in hostile:
            scheduler.set_container(container_id, services, ContainerStatus())
        # The hostile execs start (a fresh check runs at once): as many as their share of the pool allows
        # (the others are due before the good container's check, so they are looked at first).
        with runner.started:
            assert runner.started.wait_for(lambda: runner.hostile_running >= 2, timeout=10), "hostile execs started"
        scheduler.set_container("good", legit, ContainerStatus())
        deadline = time.monotonic() + 6.0
        while time.monotonic() < deadline and reporter.updates.get(legit_check, 0) < 3:
            time.sleep(0.1)
        assert reporter.updates.get(legit_check, 0) >= 3, (
            f"a 1s exec check of a well-behaved container ran {reporter.updates.get(legit_check, 0)} times in 6s")
    finally:
        runner.release.set()
        scheduler.stop()


def test_per_container_limit_and_long_timeouts_share_of_the_pool() -> None:
    slots = ExecSlots(workers=4, per_container=2)
    slow, fast = FAST_TIMEOUT_SECONDS + 1, FAST_TIMEOUT_SECONDS
    slots.take("a", slow)
    assert slots.available("a", slow) and slots.available("b", slow)
    slots.take("b", slow)
    assert not slots.available("c", slow), "long execs hold at most half of the 4 workers"
    assert slots.available("a", fast) and slots.available("c", fast)
    slots.take("a", fast)
    assert not slots.available("a", fast), "two per container"
    slots.give_back("b", slow)
    assert slots.available("c", slow) and slots.in_flight("b") == 0
    slots.give_back("a", fast)
    slots.give_back("a", slow)
    assert slots.in_flight("a") == 0 and slots.available("a", slow)


def test_a_pool_of_one_still_runs_long_execs() -> None:
    slots = ExecSlots(workers=1, per_container=2)
    assert slots.available("a", FAST_TIMEOUT_SECONDS * 10)
