"""The agent watch against an agent that hangs: accepts TCP, never answers."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest
from loguru import logger

from consul_reg.consul.watch import AgentAlarm, AgentWatch
from consul_reg.core.messages import AgentBack
from consul_reg.core.liveness import Liveness
from consul_reg.consul.agent import ConsulClient, ConsulEndpoint, ConsulRegistry
from consul_reg.core.errors import RegistryError
from consul_reg.core.records import AgentInfo
from tests.unit.fakes import FakeAgent, FakeClock
from tests.unit.stub_agent import stub_client


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


class StaleAnswerAgent(FakeAgent):
    """agent_info() is answered, then its answer is held until released: another
    thread's call may fail in between (the answer predates the failure)."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = threading.Event()
        self.release = threading.Event()
        self.held = threading.Event()

    def agent_info(self) -> AgentInfo:
        info = super().agent_info()
        if self.hold.is_set():
            self.hold.clear()
            self.held.set()
            self.release.wait(10)
        return info


def test_stop_during_a_probe_ends_the_watch_at_once() -> None:
    """stop() rings the watch awake: a probe in flight when it is called must not swallow that ring
    (the watch then slept a whole up_interval before it saw it was stopped)."""
    agent = StaleAnswerAgent()
    liveness = Liveness("consul")
    liveness.ok()
    watch = AgentWatch(agent, AgentAlarm(liveness), lambda message: None, identity=agent.agent_info(),
                       up_interval=30.0, down_interval=0.05)
    agent.hold.set()
    watch.start()
    assert agent.held.wait(5)
    watch.stop()
    agent.release.set()
    watch._thread.join(3)
    assert not watch._thread.is_alive(), "the watch still runs 3 s after stop()"


def test_another_threads_failure_during_a_probe_is_looked_at_within_down_interval() -> None:
    """A heartbeat's call fails while the watch's probe is in flight, its answer given before the
    agent went away: the ring must still make the watch look again within down_interval, not after
    a whole up_interval while /health says ok."""
    agent = StaleAnswerAgent()
    liveness = Liveness("consul")
    liveness.ok()
    alarm = AgentAlarm(liveness)
    watch = AgentWatch(agent, alarm, lambda message: None, identity=agent.agent_info(),
                       up_interval=30.0, down_interval=0.05)
    agent.hold.set()
    watch.start()
    try:
        assert agent.held.wait(5)
        agent.down = True
        alarm("fake agent: could not update a check: connection refused")  # a heartbeat sender's call
        failed_at = time.monotonic()
        agent.release.set()
        deadline = failed_at + 3
        while time.monotonic() < deadline and (liveness.state.ok or agent.calls.count(("self", "")) < 3):
            time.sleep(0.02)
        assert agent.calls.count(("self", "")) >= 3 and not liveness.state.ok, (
            f"{time.monotonic() - failed_at:.1f}s after another thread's call failed the watch has not "
            f"looked again; /health says ok={liveness.state.ok}")
    finally:
        watch.stop()


def test_an_agent_self_answer_of_another_shape_is_an_error_of_the_probe_never_the_end_of_the_watch() -> None:
    """A JSON answer that is not an object (a proxy's, a broken agent's) was an
    AttributeError: the watch's thread ended, and no agent restart was noticed again."""
    answers = iter([httpx.Response(200, json=["not", "an", "object"]),
                    httpx.Response(200, json={"Config": "text", "Member": 3, "DebugConfig": None})])
    registry = ConsulRegistry(stub_client(lambda request: next(answers)))
    with pytest.raises(RegistryError, match="not a JSON object"):
        registry.agent_info()
    info = registry.agent_info()
    assert (info.node_id, info.version, info.listen_ports) == ("", "", ())
    liveness = Liveness("consul")
    liveness.ok()
    shapes = iter([httpx.Response(200, json=[1]), httpx.Response(200, json={"Config": {"NodeID": "n2"}})])
    client = stub_client(lambda request: next(shapes))
    watch = AgentWatch(ConsulRegistry(client), AgentAlarm(liveness), lambda message: None, identity=None)
    watch.check_once()  # refused as an error of the probe: the thread would go on
    watch.check_once()
    assert watch.identity is not None and watch.identity.node_id == "n2"


def test_the_deadline_thread_sleeps_while_no_probe_is_in_flight_and_ends_with_stop() -> None:
    """It wakes for a probe's start or its deadline, never on a clock of its own: while probes
    answer at once, it looks at no deadline (it used to wake four times a second)."""
    agent = FakeAgent()
    liveness = Liveness("consul")
    liveness.ok()
    watch = AgentWatch(agent, AgentAlarm(liveness), lambda message: None, identity=agent.agent_info(),
                       up_interval=0.1, down_interval=0.05, probe_deadline=0.3)
    looked = []
    checked = watch.overdue
    watch.overdue = lambda: looked.append(time.monotonic()) or checked()  # type: ignore[method-assign]
    probes = []
    answer = agent.agent_info
    agent.agent_info = lambda: probes.append(1) or answer()  # type: ignore[method-assign]
    watch.start()
    try:
        deadline = time.monotonic() + 10
        while len(probes) < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(probes) >= 8  # ~0.8 s of probes every 0.1 s, each answered at once
        assert looked == [], "the deadline thread looked at a deadline that no probe reached"
    finally:
        watch.stop()
    watch._deadline_thread.join(3)
    assert not watch._deadline_thread.is_alive(), "the deadline thread still runs 3 s after stop()"


def test_stop_landing_between_the_deadline_threads_loop_check_and_its_wait_still_ends_it() -> None:
    """stop() sets the flag, then notifies the condition: the deadline thread must look at the
    flag under the condition's lock before it sleeps, or a stop() that lands between its
    `while not stopping` and its wait() is a notify nobody hears (it then sleeps forever)."""
    agent = FakeAgent()
    liveness = Liveness("consul")
    liveness.ok()
    watch = AgentWatch(agent, AgentAlarm(liveness), lambda message: None, identity=agent.agent_info())

    class RacedStop(threading.Event):
        """The deadline thread's first look at the flag says "not stopping", then stop() runs."""

        raced = False

        def is_set(self) -> bool:
            seen = super().is_set()
            if not seen and not self.raced and threading.current_thread() is watch._deadline_thread:
                self.raced = True
                watch.stop()
            return seen

    watch._stopping = RacedStop()
    watch._deadline_thread.start()  # alone: no probe in flight, it sleeps until one begins or stop()
    watch._deadline_thread.join(3)
    assert watch._stopping.raced and watch._stopping.is_set()
    assert not watch._deadline_thread.is_alive(), "the deadline thread still sleeps 3 s after stop()"


def test_a_probe_hung_to_the_exact_deadline_is_marked_unreachable_by_the_deadline_thread() -> None:
    """The thread decides "the deadline passed" by started + deadline - now <= 0, overdue() by
    now - started < deadline: in floating point they disagree at the boundary (1000.0 + 0.3), and
    the thread then sleeps until the next probe begins, which a hung probe never lets happen."""
    agent, clock = HangingAgent(), FakeClock(1000.0)
    liveness = Liveness("consul", clock)
    liveness.ok()
    watch = AgentWatch(agent, AgentAlarm(liveness), lambda message: None, identity=agent.agent_info(),
                       probe_deadline=0.3, clock=clock)
    watch._deadline_thread.start()
    agent.hang.set()
    probe = threading.Thread(target=watch.check_once, daemon=True)
    probe.start()
    try:
        assert agent.entered.wait(5)
        clock.advance(0.3)  # now == 1000.0 + 0.3 to the last bit: the deadline is reached
        waited_until = time.monotonic() + 5
        while time.monotonic() < waited_until and liveness.state.ok:
            time.sleep(0.05)
        assert not liveness.state.ok, "a probe hung past its deadline was never marked overdue"
    finally:
        watch.stop()
        agent.hang.clear()
        agent.release.set()
        probe.join(5)


class RefusingAgent(FakeAgent):
    """agent_info() answers 403 after the probe waited `took` seconds of the fake clock."""

    def __init__(self, clock: FakeClock, took: float) -> None:
        super().__init__()
        self.clock, self.took = clock, took

    def agent_info(self) -> AgentInfo:
        self.clock.advance(self.took)
        raise RegistryError("403 Permission denied: agent:read")


class LookedAtAfterOk(Liveness):
    """The deadline thread's look landing right after the probe said "reachable"."""

    watch: AgentWatch | None = None

    def ok(self) -> None:
        super().ok()
        if self.watch is not None:
            self.watch.overdue()


def test_a_slow_refusal_is_not_marked_unreachable_by_a_deadline_look_right_after_it() -> None:
    """A 403 that came after the deadline: the agent answers. The deadline thread looking at
    that moment (the probe told its outcome, not yet ended) once marked it down afterwards,
    and /health said 503 until the next probe."""
    clock = FakeClock()
    liveness = LookedAtAfterOk("consul", clock)
    liveness.ok()
    agent = RefusingAgent(clock, took=3.0)
    watch = AgentWatch(agent, AgentAlarm(liveness), lambda message: None, identity=None, probe_deadline=2.0,
                       clock=clock)
    liveness.watch = watch
    watch.check_once()
    assert liveness.state.ok, f"an agent that answered (403) is marked down: {liveness.state.reason}"


def test_a_probe_marked_overdue_while_it_hangs_is_reachable_again_once_it_answers_403() -> None:
    clock = FakeClock()
    liveness = Liveness("consul", clock)
    liveness.ok()

    class OverdueThenRefused(RefusingAgent):
        def agent_info(self) -> AgentInfo:
            self.clock.advance(self.took)
            assert watch.overdue(), "a probe past its deadline is overdue while it hangs"
            assert not liveness.state.ok
            raise RegistryError("403 Permission denied: agent:read")

    watch = AgentWatch(OverdueThenRefused(clock, took=3.0), AgentAlarm(liveness), lambda message: None,
                       identity=None, probe_deadline=2.0, clock=clock)
    watch.check_once()
    assert liveness.state.ok and not watch.overdue()


class AfterRelease(threading.Condition):
    """Runs `hook` once, in the deadline look's thread, right after that look lets go of the lock."""

    hook = None

    def __exit__(self, *exc):  # type: ignore[no-untyped-def]
        result = super().__exit__(*exc)
        hook, self.hook = self.hook, None
        if hook is not None and threading.current_thread() is threading.main_thread():
            hook()
        return result


def test_the_hang_warning_is_logged_before_the_answers_again_that_ends_it() -> None:
    """The deadline look marks the agent down under the lock, then logs its warning after it:
    a probe answering in between logs "answers again" (and posts AgentBack) first, and the log
    then ends on "the agent hangs?" while /health says ok."""
    agent, clock = HangingAgent(), FakeClock()
    liveness = Liveness("consul", clock)
    liveness.ok()
    posted: list[object] = []
    watch = AgentWatch(agent, AgentAlarm(liveness), posted.append, identity=agent.agent_info(),
                       probe_deadline=2.0, clock=clock)
    condition = AfterRelease()
    watch._probe_began = condition
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(message.record["message"]), level="INFO")
    agent.hang.set()
    probe = threading.Thread(target=watch.check_once, daemon=True)
    try:
        probe.start()
        assert agent.entered.wait(5)
        clock.advance(2.1)

        def answer_now() -> None:  # the probe's answer arrives as the look lets go of the lock
            agent.hang.clear()
            agent.release.set()
            probe.join(5)
        condition.hook = answer_now
        assert watch.overdue()
    finally:
        agent.release.set()
        probe.join(5)
        logger.remove(sink)
    assert liveness.state.ok and [type(m) for m in posted] == [AgentBack]
    said = [line for line in lines if "hangs?" in line or "answers again" in line]
    assert len(said) == 2 and "hangs?" in said[0], f"the log ends on the hang while the agent answers: {said}"
