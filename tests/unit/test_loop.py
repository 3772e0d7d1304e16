"""The sync loop with a fake Docker, a fake agent and a fake clock: every
event acted on, whether or not a full pass runs in the same batch."""

from __future__ import annotations

import pytest

from consul_reg.app.config import Config
from consul_reg.sync.desires import DesireBuilder
from consul_reg.sync.drain import REASON_PREFIX
from consul_reg.probes.scheduler import ProbeScheduler
from consul_reg.sync.loop import Loop, LoopSettings
from consul_reg.app.metrics import Metrics
from consul_reg.core.records import Owner, RegisteredService
from consul_reg.consul.guard import OwnershipGuard
from consul_reg.core.messages import AgentBack, CheckMissing, DockerEvent, EnvFileRead, Message, Reload, Start, Stop
from tests.unit.fakes import DrainGuarded, FakeAgent, FakeClock, FakeDocker, container

HOST = "h1"


class Harness:
    def __init__(self, resync: float = 0.0, deregister: str = "always", guard: bool = False,
                 **config: object) -> None:
        self.clock = FakeClock()
        self.docker = FakeDocker()
        self.agent = FakeAgent()
        self.config = Config(hostname=HOST, registry_uris=("consul://x",), resync_seconds=resync,
                             deregister=deregister, **config)
        # guard=True: the primary writes through the ownership guard, as the daemon's does.
        self.guard = OwnershipGuard(self.agent, Owner(HOST))
        self.missing: list[str] = []
        self.probes = ProbeScheduler(self.agent, self.docker, lambda sid, cid: self.missing.append(cid),
                                     clock=self.clock)
        settings = self.config.mapping_settings("10.0.0.1", "test", "1.8.7", True)
        self.identity = self.agent.agent_info()
        self.loop = Loop(LoopSettings(owner=HOST, deregister_mode=deregister, resync_seconds=resync,
                                      env_file_interval=10.0, retry_interval=1.0, drain_timeout=30.0),
                         self.docker, self.guard if guard else DrainGuarded(self.agent, self.guard),
                         DesireBuilder(self.config.container_rules(), self.docker, settings), self.probes,
                         metrics=Metrics(), clock=self.clock)
        self.primary = self.loop.primary
        self.primary.identity = self.identity
        self.drainer = self.loop.drainer

    def send(self, *messages: Message) -> None:
        assert self.loop.handle(list(messages))

    def ids(self) -> set[str]:
        return set(self.agent.records)

    def due(self, check_id: str) -> float:
        return self.probes._due_at[check_id]


def event(cid: str, action: str, exitCode: str = "", signal: str = "", name: str = "") -> DockerEvent:  # noqa: N803
    return DockerEvent(cid, action, 1, exit_code=exitCode, signal=signal, name=name)


@pytest.fixture
def h() -> Harness:
    harness = Harness()
    harness.send(Start())
    return harness


def test_start_registers_and_die_deregisters(h: Harness) -> None:
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))
    h.send(event("c1", "start"))
    assert h.ids() == {"h1:web:80"}
    h.docker.containers["c1"]["State"]["Running"] = False
    h.send(event("c1", "die", exitCode="0"))
    assert h.ids() == set()


def test_a_docker_stop_drains_even_when_a_full_pass_runs_in_the_same_batch(h: Harness) -> None:
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))
    h.send(event("c1", "start"))
    h.send(event("c1", "kill", signal="15"), Reload())
    assert h.agent.maintenance["h1:web:80"].startswith(REASON_PREFIX)
    h.docker.containers["c1"]["State"]["Running"] = False
    h.send(event("c1", "die", exitCode="143"))
    assert h.ids() == set() and h.agent.maintenance == {}


def test_drain_is_cleared_when_no_death_follows(h: Harness) -> None:
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))
    h.send(event("c1", "start"))
    h.send(event("c1", "kill", signal="SIGTERM"))
    assert "h1:web:80" in h.agent.maintenance
    h.clock.advance(29)
    h.send()
    assert "h1:web:80" in h.agent.maintenance
    h.clock.advance(2)
    assert h.loop.seconds_until_due() <= 0
    h.send()
    assert h.agent.maintenance == {} and h.ids() == {"h1:web:80"}


def test_kill_and_die_in_one_batch_need_no_drain(h: Harness) -> None:
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))
    h.send(event("c1", "start"))
    h.docker.containers["c1"]["State"]["Running"] = False
    h.send(event("c1", "kill", signal="15"), event("c1", "die", exitCode="143"))
    assert ("maintenance on", "h1:web:80") not in h.agent.calls and h.ids() == set()


def reaped_setup(h: Harness) -> str:
    h.docker.add(container("c1", "worker", ports={"80/tcp": "8080"},
                           labels={"SERVICE_CHECK_TTL": "10s", "SERVICE_CHECK_DEREGISTER_AFTER": "1m"}))
    h.send(event("c1", "start"))
    assert h.ids() == {"h1:worker:80"}
    del h.agent.records["h1:worker:80"]  # the agent reaps it (critical longer than deregister-after)
    h.send(CheckMissing("h1:worker:80"))
    assert h.ids() == set(), "a reaped service stays removed"
    return "h1:worker:80"


def test_a_reaped_service_stays_removed_until_its_container_restarts(h: Harness) -> None:
    reaped_setup(h)
    h.send(Reload())
    assert h.ids() == set()
    h.send(event("c1", "restart"))
    assert h.ids() == {"h1:worker:80"}


def test_a_restart_in_the_same_batch_as_a_full_pass_ends_the_reap(h: Harness) -> None:
    reaped_setup(h)
    h.docker.containers["c1"]["Created"] = h.docker.containers["c1"]["Created"]  # same container
    h.send(event("c1", "start"), Reload())
    assert h.ids() == {"h1:worker:80"}


def test_a_start_registers_again_what_the_cache_thought_registered() -> None:
    h = Harness(deregister="on-success")
    h.send(Start())
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))
    h.send(event("c1", "start"))
    h.docker.containers["c1"]["State"].update(Running=False, ExitCode=1)
    h.send(event("c1", "die", exitCode="1"))
    assert h.ids() == {"h1:web:80"}  # kept: the container failed
    del h.agent.records["h1:web:80"]  # removed behind the daemon's back meanwhile
    h.docker.containers["c1"]["State"].update(Running=True, ExitCode=0)
    h.send(event("c1", "start"))
    assert h.ids() == {"h1:web:80"}


def test_a_start_event_racing_the_first_full_pass_writes_once() -> None:
    h = Harness()
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))
    h.send(Start())
    h.send(event("c1", "start"))  # the event of a container the first pass already saw running
    assert h.agent.writes() == [("register", "h1:web:80")]


def test_health_change_is_reported_at_once_even_with_a_full_pass(h: Harness) -> None:
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}, health="starting"))
    h.send(event("c1", "start"))
    check = "service:h1:web:80:docker-health"
    h.clock.advance(5)
    h.docker.containers["c1"]["State"]["Health"]["Status"] = "healthy"
    h.send(event("c1", "health_status"), Reload())
    assert h.due(check) == h.clock.now
    assert h.probes._status["c1"].health == "healthy"


def test_a_health_status_read_before_it_changed_is_read_again_shortly_after(h: Harness) -> None:
    """Podman sends health_status before the new status can be read: the loop reads the
    container once more, without any event or resync to wake it."""
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}, health="starting"))
    h.send(event("c1", "start"))
    check = "service:h1:web:80:docker-health"
    h.send(event("c1", "health_status"))  # read at once: still the old status
    assert h.probes._status["c1"].health == "starting"
    h.docker.containers["c1"]["State"]["Health"]["Status"] = "healthy"
    assert h.loop.seconds_until_due() == pytest.approx(0.5)
    h.clock.advance(0.5)
    inspects = h.docker.inspects
    h.send()  # the loop woke on its deadline, its inbox empty
    assert h.docker.inspects == inspects + 1
    assert h.probes._status["c1"].health == "healthy"
    assert h.due(check) == h.clock.now  # reported at once
    assert h.loop.seconds_until_due() > 3000  # once: nothing more is due


def test_an_unreadable_container_keeps_its_last_desire(h: Harness) -> None:
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))
    h.send(event("c1", "start"))
    h.docker.broken.add("c1")
    h.send(event("c1", "update"))
    assert h.ids() == {"h1:web:80"}
    assert "c1" in h.loop.reader.retry
    h.docker.broken.clear()
    h.docker.containers["c1"]["Config"]["Labels"]["SERVICE_NAME"] = "shop"
    h.clock.advance(1.5)
    h.send()  # the retry is due
    assert h.agent.records["h1:web:80"].name == "shop"


def test_a_mapping_bug_keeps_the_last_desire(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))
    h.send(event("c1", "start"))

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr("consul_reg.sync.desires.map_container", broken)
    h.send(event("c1", "update"), Reload())
    assert h.ids() == {"h1:web:80"}


def test_docker_down_during_a_full_pass_keeps_everything(h: Harness) -> None:
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))
    h.send(event("c1", "start"))
    h.docker.down = True
    h.send(Reload())
    assert h.ids() == {"h1:web:80"} and h.loop.timers.full_pending
    h.docker.down = False
    del h.docker.containers["c1"]
    h.clock.advance(1.5)
    assert h.loop.seconds_until_due() <= 0
    h.send()
    assert h.ids() == set() and not h.loop.timers.full_pending


def test_agent_down_then_back_applies_what_changed(h: Harness) -> None:
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))
    h.agent.down = True
    h.send(event("c1", "start"))
    assert h.ids() == set() and h.primary.backoff.failing
    h.agent.down = False
    h.clock.advance(1.0)
    h.send()  # the retry is due
    assert h.ids() == {"h1:web:80"} and not h.primary.backoff.failing


def test_agent_restart_registers_everything_again(h: Harness) -> None:
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))
    h.docker.add(container("c2", "jobs", labels={"SERVICE_NAME": "jobs"}))
    h.send(event("c1", "start"), event("c2", "start"))
    assert h.ids() == {"h1:web:80", "h1:jobs"}
    h.agent.restart("node-2")
    h.identity = h.agent.agent_info()
    h.send(AgentBack(h.identity))
    assert h.ids() == {"h1:web:80", "h1:jobs"}
    assert h.primary.identity.node_id == "node-2"


def test_the_newer_container_takes_a_contested_id_and_a_foreign_record_is_never_replaced(h: Harness) -> None:
    h.agent.records["payments"] = RegisteredService("payments", "payments")  # registered by hand
    h.send(Reload())
    h.docker.add(container("c1", "squatter", labels={"SERVICE_NAME": "a", "SERVICE_ID": "shared"},
                           created="2026-01-01T00:00:00.1Z"))
    h.docker.add(container("c2", "legit", labels={"SERVICE_NAME": "b", "SERVICE_ID": "shared"},
                           created="2026-01-01T00:00:00.2Z"))
    h.docker.add(container("c3", "thief", labels={"SERVICE_NAME": "payments", "SERVICE_ID": "payments"}))
    h.send(event("c1", "start"), event("c2", "start"), event("c3", "start"))
    assert h.agent.records["shared"].name == "b"
    assert h.agent.records["payments"].meta == {}  # the hand-registered record is untouched
    assert ("register", "payments") not in h.agent.calls


def test_a_stop_never_drains_a_record_that_is_not_ours(h: Harness) -> None:
    h.agent.records["payments"] = RegisteredService("payments", "payments")  # registered by hand
    h.send(Reload())
    h.docker.add(container("c1", "thief", labels={"SERVICE_NAME": "payments", "SERVICE_ID": "payments"},
                           ports={"80/tcp": "8080"}))
    h.send(event("c1", "start"))
    h.send(event("c1", "kill", signal="15"))
    h.docker.containers["c1"]["State"]["Running"] = False
    h.send(event("c1", "die", exitCode="143"))
    assert h.agent.maintenance == {} and h.agent.records["payments"].meta == {}
    assert not [c for c in h.agent.calls if c[1] == "payments"]


def test_on_success_keeps_a_failed_containers_records(h: Harness) -> None:
    harness = Harness(deregister="on-success")
    harness.send(Start())
    harness.docker.add(container("c1", "job", ports={"80/tcp": "8080"}))
    harness.send(event("c1", "start"))
    harness.docker.containers["c1"]["State"].update(Running=False, ExitCode=3)
    harness.send(event("c1", "die", exitCode="3"))
    harness.send(Reload())
    assert harness.ids() == {"h1:job:80"}
    harness.docker.containers["c1"]["State"].update(ExitCode=0)
    harness.send(Reload())
    assert harness.ids() == set()


def test_a_resync_writes_nothing_when_in_sync() -> None:
    h = Harness(resync=30)
    h.send(Start())
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))
    h.send(event("c1", "start"))
    writes, inspects = len(h.agent.writes()), h.docker.inspects
    h.clock.advance(30)
    assert h.loop.seconds_until_due() <= 0
    h.send()
    assert len(h.agent.writes()) == writes and h.docker.inspects == inspects + 1  # event-built desire: one inspect
    h.clock.advance(30)
    h.send()
    assert len(h.agent.writes()) == writes and h.docker.inspects == inspects + 1  # listing unchanged: none


def test_the_snapshot_is_a_frozen_view(h: Harness) -> None:
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))
    h.send(event("c1", "start"))
    snapshot = h.loop.snapshot
    with pytest.raises(TypeError):
        snapshot.desired["x"] = None  # type: ignore[index]
    h.docker.containers["c1"]["State"]["Running"] = False
    h.send(event("c1", "die", exitCode="0"))
    assert "h1:web:80" in snapshot.desired and "h1:web:80" not in h.loop.snapshot.desired
    assert h.loop.snapshot.generation > snapshot.generation


def test_stop_ends_the_loop(h: Harness) -> None:
    assert h.loop.handle([Stop()]) is False


def test_the_agent_answering_again_is_acted_on_at_once_whatever_the_backoff(h: Harness) -> None:
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))
    h.agent.down = True
    h.send(event("c1", "start"))
    h.clock.advance(1.0)
    h.send()  # a second failure: the next try waits 2 s
    assert h.ids() == set() and h.clock() + 1.0 < h.primary.backoff.retry_at <= h.clock() + 2.0  # jittered
    h.agent.restart("node-2")  # it comes back empty, under a new identity
    h.agent.down = False
    h.identity = h.agent.agent_info()
    h.send(AgentBack(h.identity))  # no time passed: the backoff's wait is not what holds it back
    assert h.ids() == {"h1:web:80"} and not h.primary.backoff.failing


class RequestedEnvFiles:
    """The env-file reader as the loop sees it: what it was asked to read."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []

    def request(self, container_id: str, path: str) -> None:
        self.requests.append((container_id, path))


def test_env_files_are_polled_on_the_loops_own_deadline() -> None:
    """No message asks for the poll: the loop wakes for it itself, every -envFile-interval."""
    files = RequestedEnvFiles()
    h = Harness()
    h.docker.env_reader = files
    h.send(Start())
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}, labels={"SERVICE_ENV_FILE": "/etc/web.env"}))
    h.send(event("c1", "start"))
    assert files.requests == [("c1", "/etc/web.env")]  # read once when first seen
    assert h.loop.handle([EnvFileRead("c1", "/etc/web.env", "SERVICE_TAGS=blue\n")])
    assert h.loop.seconds_until_due() == 10.0  # the harness's env_file_interval
    h.clock.advance(9.9)
    h.send()
    assert len(files.requests) == 1
    h.clock.advance(0.1)
    assert h.loop.seconds_until_due() <= 0
    h.send()
    assert files.requests == [("c1", "/etc/web.env")] * 2
