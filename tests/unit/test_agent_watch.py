"""The agent watch against an agent that hangs: accepts TCP, never answers."""

from __future__ import annotations

import socket
import threading
import time

from consul_reg.consul.watch import AgentAlarm, AgentWatch
from consul_reg.core.messages import AgentBack
from consul_reg.core.liveness import Liveness
from consul_reg.consul.agent import ConsulClient, ConsulEndpoint, ConsulRegistry
from consul_reg.core.records import AgentInfo
from tests.unit.fakes import FakeAgent, FakeClock


class HangingAgent(FakeAgent):
    """agent_info() blocks until released (a SIGSTOPped agent, a paused VM)."""

    def __init__(self) -> None:
        super().__init__()
        self.hang = threading.Event()
        self.release = threading.Event()
        self.entered = threading.Event()

    def agent_info(self) -> AgentInfo:
        if self.hang.is_set():
            self.entered.set()
            self.release.wait(10)
        return super().agent_info()


def test_a_probe_past_its_deadline_marks_the_agent_unreachable_then_back_when_it_answers() -> None:
    agent, clock = HangingAgent(), FakeClock()
    liveness = Liveness("consul", clock)
    liveness.ok()
    posted = []
    watch = AgentWatch(agent, AgentAlarm(liveness), posted.append, identity=agent.agent_info(), probe_deadline=2.0, clock=clock)
    assert not watch.overdue(), "no probe in flight: nothing is overdue"
    agent.hang.set()
    probe = threading.Thread(target=watch.check_once)
    probe.start()
    assert agent.entered.wait(5)
    clock.advance(1.9)
    assert not watch.overdue() and liveness.state.ok
    clock.advance(0.2)
    assert watch.overdue() and not liveness.state.ok and "within 2s" in liveness.state.reason
    assert not watch.overdue(), "one warning per hang"
    agent.hang.clear()
    agent.release.set()
    probe.join(5)
    assert liveness.state.ok and [type(m) for m in posted] == [AgentBack], "answering again is a full pass"


def test_health_turns_unreachable_within_5s_when_the_agent_hangs() -> None:
    """An agent that accepts TCP connections (the kernel's backlog) and never answers:
    the client's own 10 s timeout must not decide how long /health says "ok"."""
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(64)  # never accepted, never answered
    liveness = Liveness("consul")
    liveness.ok()
    alarm = AgentAlarm(liveness)
    client = ConsulClient(ConsulEndpoint("http", "127.0.0.1", hung.getsockname()[1]), on_unreachable=alarm)
    watch = AgentWatch(ConsulRegistry(client), alarm, lambda message: None, identity=None)
    watch.start()
    try:
        hung_at = time.monotonic()
        while time.monotonic() - hung_at < 5.0 and liveness.state.ok:
            time.sleep(0.1)
        assert not liveness.state.ok, (
            f"/health still says the agent is ok {time.monotonic() - hung_at:.1f}s after it stopped answering")
        assert "no answer" in liveness.state.reason
    finally:
        watch.stop()
        hung.close()
        client.close()


def test_an_agent_that_refuses_connections_is_asked_four_times_a_second_not_in_a_spin() -> None:
    """Each failed probe rings the alarm through its own client: the watch must not take
    that ring for news and probe again at once (it spun a core while the agent was down)."""
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))
    port = refused.getsockname()[1]
    refused.close()  # nothing listens: every connection is refused at once
    liveness = Liveness("consul")
    liveness.ok()
    alarm = AgentAlarm(liveness)
    client = ConsulClient(ConsulEndpoint("http", "127.0.0.1", port), on_unreachable=alarm)
    registry = ConsulRegistry(client)
    probes: list[float] = []
    probe = registry.agent_info

    def counted() -> AgentInfo:
        probes.append(time.monotonic())
        return probe()
    registry.agent_info = counted  # type: ignore[method-assign]
    down_interval = 0.1
    watch = AgentWatch(registry, alarm, lambda message: None, identity=None, down_interval=down_interval)
    watch.start()
    try:
        deadline = time.monotonic() + 10
        while len(probes) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(probes) >= 6, f"the watch stopped probing a refusing agent: {len(probes)} probes in 10 s"
        assert not liveness.state.ok
        gaps = [later - earlier for earlier, later in zip(probes, probes[1:], strict=False)]
        assert min(gaps) >= down_interval * 0.9, (
            f"probes {min(gaps) * 1000:.2f} ms apart: the watch takes its own failure's alarm for news")
    finally:
        watch.stop()
        client.close()
