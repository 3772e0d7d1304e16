"""The heartbeat scheduler with a fake clock and a fake agent: due times, one
report in flight per check, no growth with uptime."""

from __future__ import annotations

import tracemalloc

from consul_reg.probes.scheduler import ProbeScheduler
from consul_reg.core.records import Check, ContainerStatus, DaemonProbe, Service
from tests.unit.fakes import FakeAgent, FakeClock, FakeDocker


def worker(n: int, interval: float = 10.0, kind: str = "heartbeat") -> Service:
    probe = DaemonProbe(kind=kind, interval=interval, container_id=f"c{n}", command="true", timeout=1.0)
    check = Check(f"service:w{n}:{kind}", "hb", (("TTL", "30s"),), probe)
    return Service(id=f"w{n}", name="w", address="", port=None, checks=(check,), container_id=f"c{n}")


def scheduler(clock: FakeClock, agent: FakeAgent | None = None, missing: list | None = None):
    agent = agent or FakeAgent()
    lateness: list[float | None] = []
    probes = ProbeScheduler(agent, FakeDocker(), lambda sid, cid: (missing if missing is not None else []).append(cid),
                            on_sent=lambda late: lateness.__setitem__(slice(None), [late]), clock=clock)
    return probes, agent, lateness


def running() -> ContainerStatus:
    return ContainerStatus(running=True)


def test_first_reports_go_at_once_then_spread_over_the_interval() -> None:
    clock = FakeClock()
    probes, agent, _ = scheduler(clock)
    services = [worker(n) for n in range(200)]
    for service in services:
        agent.checks[service.checks[0].check_id] = ("critical", "")
        probes.set_container(service.container_id, [service], running())
    assert set(probes._due_at.values()) == {clock.now}, "a new check reports at once"
    assert probes.run_due() == 200
    assert {status for status, _ in agent.checks.values()} == {"passing"}
    second = sorted(probes._due_at.values())
    assert clock.now + 1.0 - 0.001 <= second[0] and second[-1] <= clock.now + 10.0
    assert second[150] - second[50] > 2.0, "the second round is spread over the interval, not a herd"
    sent = 0
    for _ in range(100):  # ten seconds, in steps
        clock.advance(0.1)
        sent += probes.run_due()
    assert sent == 200
    due = sorted(probes._due_at.values())
    assert due[-1] - due[0] > 5.0, "and stays spread: no herd of TTL expiries"


def test_report_now_and_container_status() -> None:
    clock = FakeClock()
    probes, agent, _ = scheduler(clock)
    service = worker(1)
    agent.checks["service:w1:heartbeat"] = ("critical", "")
    probes.set_container("c1", [service], running())
    probes.report_now({"w1"})
    assert probes.run_due() == 1 and agent.checks["service:w1:heartbeat"][0] == "passing"
    probes.report_container_now("c1", ContainerStatus(running=True, health="unhealthy", health_output="boom"))
    probes.run_due()
    assert agent.checks["service:w1:heartbeat"] == ("critical", "docker health: unhealthy\nboom")
    probes.report_container_now("c1", ContainerStatus(running=True, paused=True))
    probes.run_due()
    assert agent.checks["service:w1:heartbeat"] == ("critical", "container paused")


def test_one_report_in_flight_per_check() -> None:
    clock = FakeClock()
    probes, agent, _ = scheduler(clock)
    service = worker(1)
    probes.set_container("c1", [service], running())
    with probes._wake:
        job = probes._take_due()  # taken, not answered yet
    assert job is not None
    probes.report_now({"w1"})
    with probes._wake:
        assert probes._take_due() is None, "busy: looked at again shortly, never piled up"
    assert probes._due_at["service:w1:heartbeat"] == clock.now + 0.2


def test_a_check_the_agent_lost_asks_for_a_relist() -> None:
    clock, missing = FakeClock(), []
    probes, agent, _ = scheduler(clock, missing=missing)
    probes.set_container("c1", [worker(1)], running())
    probes.run_due()
    assert missing == ["service:w1:heartbeat"]


def test_removed_containers_leave_nothing_behind_and_memory_stays_flat() -> None:
    clock = FakeClock()
    probes, agent, sent = scheduler(clock)
    for n in range(50):
        agent.checks[f"service:w{n}:heartbeat"] = ("critical", "")
        probes.set_container(f"c{n}", [worker(n, interval=1.0)], running())

    def churn(rounds: int) -> None:
        for _ in range(rounds):
            clock.advance(1.0)
            probes.run_due()

    churn(200)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    churn(2000)  # ~75,000 reports
    after = tracemalloc.take_snapshot()
    assert probes.sent >= 50_000  # intervals of 1 s ±10%: most rounds report each check
    tracemalloc.stop()
    grown = [stat for stat in after.compare_to(before, "lineno") if "consul_reg/heartbeat.py" in str(stat.traceback)]
    assert sum(stat.size_diff for stat in grown) < 64 * 1024, f"the scheduler grew over ~75,000 reports: {grown[:3]}"
    assert len(probes._heap) <= 4 * len(probes._due_at) + 64
    for n in range(50):
        probes.set_container(f"c{n}", [], ContainerStatus(running=False))
    assert probes._tasks == {} and probes._due_at == {} and probes._status == {} and probes._by_container == {}


def test_a_check_handed_to_another_container_is_never_dropped_by_the_first() -> None:
    """Two containers claiming one service ID: its check moves to the winner, in
    whichever order the loop hands the two containers over."""
    clock = FakeClock()
    probes, agent, _ = scheduler(clock)
    first = worker(1)
    second = Service(id=first.id, name="w", address="", port=None, container_id="c2", checks=(
        Check(first.checks[0].check_id, "hb", (("TTL", "30s"),), DaemonProbe(kind="heartbeat", interval=10.0,
                                                                             container_id="c2")),))
    check_id = first.checks[0].check_id
    agent.checks[check_id] = ("critical", "")
    probes.set_container("c1", [first], running())
    probes.set_container("c2", [second], running())  # the winner first...
    probes.set_container("c1", [], running())  # ...then the loser loses it
    assert probes._tasks[check_id].probe.container_id == "c2"
    probes.report_container_now("c1", ContainerStatus(running=True, paused=True))
    probes.run_due()
    assert agent.checks[check_id][0] == "passing", "the loser's pause reached the winner's check"
    probes.set_container("c1", [], ContainerStatus(running=False))  # the loser destroyed
    assert probes.check_count() == 1 and probes._tasks[check_id].probe.container_id == "c2"
    probes.replace_all({"c2": [second]}, {"c2": running()})
    assert probes.check_count() == 1
    probes.set_container("c2", [], ContainerStatus(running=False))
    assert probes.check_count() == 0 and probes._holder == {} and probes._by_container == {}


def test_the_state_of_a_container_without_checks_is_not_kept() -> None:
    """Every start reports its container's state; one without daemon-run checks must leave nothing
    behind, or a container whose destroy event was lost would stay in the scheduler for good (a full
    pass drops only containers that had checks). Its state comes with its checks if it gets some."""
    clock = FakeClock()
    probes, agent, _ = scheduler(clock)
    probes.report_container_now("c9", ContainerStatus(running=True, health="healthy"))
    probes.replace_all({}, {})  # a full pass: the container is gone, its events were lost
    assert "c9" not in probes._status and probes.check_count() == 0
    service = worker(9)
    agent.checks[service.checks[0].check_id] = ("critical", "")
    probes.set_container("c9", [service], ContainerStatus(running=True, paused=True))
    probes.report_container_now("c9", running())  # unpaused: reported at once
    assert probes.run_due() == 1 and agent.checks[service.checks[0].check_id][0] == "passing"
