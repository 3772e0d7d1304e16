"""Env-file state folding, the off-loop reader, the drainer and the agent watch."""

from __future__ import annotations

import threading
import time

from consul_reg.consul.watch import AgentAlarm, AgentWatch
from consul_reg.core.messages import AgentBack
from consul_reg.sync.drain import REASON_PREFIX, Drainer
from consul_reg.core.messages import EnvFileRead
from consul_reg.docker.env_files import EnvFileReader
from consul_reg.sync.env_files import EnvFileState, fold
from consul_reg.core.liveness import Liveness
from consul_reg.core.records import Owner, RegisteredService, marker_meta
from consul_reg.consul.guard import OwnershipGuard
from tests.unit.fakes import FakeAgent, FakeClock


def test_fold_keeps_the_last_good_values_and_warns_once() -> None:
    state = EnvFileState("/e")
    state, changed, warnings = fold(state, EnvFileRead("c", "/e", "SERVICE_TAGS=a\n"))
    assert changed and state.read and state.good.pairs == (("SERVICE_TAGS", "a"),) and not warnings
    bad = EnvFileRead("c", "/e", "garbage without equals\n")
    state, changed, warnings = fold(state, bad)
    assert not changed and state.good.pairs == (("SERVICE_TAGS", "a"),) and len(warnings) == 1
    state, changed, warnings = fold(state, EnvFileRead("c", "/e", "garbage without equals\n"))
    assert not changed and warnings == []
    state, changed, warnings = fold(state, EnvFileRead("c", "/e", None, error="truncated archive"))
    assert not changed and "truncated archive" in warnings[0] and state.good.pairs == (("SERVICE_TAGS", "a"),)
    state, changed, _ = fold(state, EnvFileRead("c", "/e", None, docker_down=True, error="down"))
    assert not changed
    state, changed, _ = fold(state, EnvFileRead("c", "/e", None))
    assert changed and state.good.pairs == ()


def test_a_file_of_bad_lines_is_warned_about_in_a_few_lines_once_per_content() -> None:
    text = "".join(f"secret-{n}\n" for n in range(1000))
    state, _, warnings = fold(EnvFileState("/e"), EnvFileRead("c", "/e", text))
    assert 1 < len(warnings) <= 4 and not any("secret" in w for w in warnings)
    assert warnings[-1] == "env file /e: and 997 more line(s) not KEY=value"
    _, _, again = fold(state, EnvFileRead("c", "/e", text))
    assert again == []


def test_a_first_read_that_fails_still_lets_the_container_register() -> None:
    state, changed, warnings = fold(EnvFileState("/e"), EnvFileRead("c", "/e", None, error="a directory"))
    assert changed and state.read and state.good.pairs == () and warnings


def test_the_reader_keeps_one_read_in_flight_per_container() -> None:
    started, release = threading.Event(), threading.Event()
    calls: list[str] = []
    posted: list[EnvFileRead] = []

    def read_file(cid: str, path: str, limit: int, timeout: float) -> str:
        calls.append(path)
        started.set()
        release.wait(5)
        return f"SERVICE_X={len(calls)}"

    reader = EnvFileReader(read_file, posted.append, is_docker_down=lambda e: False)
    reader.request("c", "/a")
    started.wait(5)
    for _ in range(20):
        reader.request("c", "/b")
    release.set()
    deadline = time.monotonic() + 5
    while len(posted) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    reader.stop()
    assert calls == ["/a", "/b"] and [p.path for p in posted] == ["/a", "/b"]


def test_the_reader_maps_every_failure_to_unreadable() -> None:
    posted: list[EnvFileRead] = []

    def read_file(cid: str, path: str, limit: int, timeout: float) -> str:
        raise OSError("boom")

    reader = EnvFileReader(read_file, posted.append, is_docker_down=lambda e: False)
    reader.request("c", "/a")
    deadline = time.monotonic() + 5
    while not posted and time.monotonic() < deadline:
        time.sleep(0.01)
    reader.stop()
    assert posted[0].error == "boom" and posted[0].text is None


def test_drainer_clears_only_its_own_maintenance() -> None:
    clock, agent = FakeClock(), FakeAgent()
    for service_id, container_id in (("s1", "c1"), ("s2", "c1"), ("s3", "c2")):
        agent.records[service_id] = RegisteredService(service_id, "web", meta=marker_meta("h", container_id))
    drainer = Drainer(OwnershipGuard(agent, Owner("h")), timeout=10, clock=clock)
    drainer.on_kill("web", "c1", ("s1", "s2"), "SIGHUP", "")
    assert agent.maintenance == {}, "a reload signal never drains"
    drainer.on_kill("web", "c1", ("s1", "s2"), "15", "")
    assert set(agent.maintenance) == {"s1", "s2"} and drainer.next_deadline() == clock.now + 10
    agent.maintenance["s2"] = "operator: disk swap"
    clock.advance(10)
    drainer.expire()
    assert agent.maintenance == {"s2": "operator: disk swap"} and drainer.next_deadline() is None
    drainer.on_kill("web", "c2", ("s3",), "SIGUSR1", "SIGUSR1")  # the container's own stop signal
    assert agent.maintenance["s3"].startswith(REASON_PREFIX)
    drainer.on_die("c2")
    assert drainer.next_deadline() is None


def test_agent_watch_tells_the_loop_when_the_agent_is_back_or_replaced() -> None:
    agent = FakeAgent()
    liveness = Liveness("consul")
    liveness.ok()
    posted = []
    watch = AgentWatch(agent, AgentAlarm(liveness), posted.append, identity=agent.agent_info())
    watch.check_once()
    assert posted == [] and liveness.state.ok
    agent.down = True
    watch.check_once()
    assert not liveness.state.ok and "connection refused" in liveness.state.reason
    agent.down = False
    watch.check_once()
    assert liveness.state.ok and [type(m) for m in posted] == [AgentBack]
    agent.restart("node-2")  # a quick restart the watch never saw down
    watch.check_once()
    assert [type(m) for m in posted] == [AgentBack, AgentBack] and watch.identity.node_id == "node-2"
    watch.unreachable("a heartbeat failed")
    assert not liveness.state.ok and liveness.state.reason == "a heartbeat failed"
