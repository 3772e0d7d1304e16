"""Review H7: reproductions against the sync loop, with the unit tests' fakes
(tests/unit/fakes.py and tests/unit/test_loop.py's Harness). Each test states
the behaviour the README promises; a failing test is a finding."""

from __future__ import annotations

from consul_reg.drain import REASON_PREFIX
from consul_reg.env_files import EnvFileRead
from consul_reg.model import Service
from consul_reg.registries.base import RegistryError
from consul_reg.router import AGENT_BACK, CHECK_MISSING, RELOAD, START, Hint
from tests.unit.fakes import FakeAgent, container
from tests.unit.test_loop import Harness, event, h  # noqa: F401  (h: the started harness fixture)

ENV_PATH = "/run/service.env"


class FakeEnvReader:
    """Stands in for EnvFileReader: records requests; the test answers them."""

    def __init__(self) -> None:
        self.pending: list[tuple[str, str]] = []
        self.requested = 0

    def request(self, container_id: str, path: str) -> None:
        self.requested += 1
        if (container_id, path) not in self.pending:
            self.pending.append((container_id, path))

    def answer_all(self, text: str | None = None) -> list[EnvFileRead]:
        answers = [EnvFileRead(cid, path, text) for cid, path in self.pending]
        self.pending.clear()
        return answers


def test_F1_a_first_env_file_read_that_met_a_docker_outage_is_retried() -> None:
    """README "Guarantees": one container that cannot be read keeps its last
    services and "is looked at again later". A container with an env file is
    registered only after the first read answers. If that first read meets a
    Docker hiccup (docker_down=True), fold() ignores the answer, the state stays
    "not read yet", nobody asks again (the poll only covers containers that
    have a desire, and a full pass finds the state with the same path), so the
    container is never registered while it runs."""
    h = Harness()
    reader = FakeEnvReader()
    h.loop.env_reader = reader  # type: ignore[assignment]
    h.send(Hint("", START))
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}, labels={"SERVICE_ENV_FILE": ENV_PATH}))
    h.send(event("c1", "start"))
    assert reader.pending == [("c1", ENV_PATH)] and h.ids() == set()
    reader.pending.clear()
    # The read hit a dockerd restart: "docker down" for this round.
    assert h.loop.handle([EnvFileRead("c1", ENV_PATH, None, error="dockerd dropped the connection",
                                      docker_down=True)])
    # Docker is back. Two minutes of env-file polls, a resync-like full pass (SIGHUP),
    # and any read asked for meanwhile is answered ("no such file yet").
    for _ in range(12):
        h.clock.advance(10.0)
        h.send()
        if reader.pending:
            assert h.loop.handle(list(reader.answer_all(None)))
    h.send(Hint("", RELOAD))
    if reader.pending:
        assert h.loop.handle(list(reader.answer_all(None)))
    assert h.ids() == {"h1:web:80"}, (
        f"the container was never registered; env-file reads asked after the outage: {reader.requested - 1}")


def test_F2_one_container_whose_inspect_fails_does_not_stop_every_other_from_registering() -> None:
    """README "Guarantees": "one container cannot be read or mapped ... the others
    carry on". In a full pass, one container whose inspect answers an error
    (dockerd answered, e.g. HTTP 500 for that container, or it timed out on
    that container's lock) aborts the whole pass: at start nothing is
    registered, and every retry of the full pass fails the same way."""
    h = Harness()
    for n in range(20):
        h.docker.add(container(f"good{n}", f"good{n}", ports={"80/tcp": str(8000 + n)}))
    h.docker.add(container("stuck", "stuck", ports={"80/tcp": "8081"}))
    h.docker.broken.add("stuck")  # inspecting this one container fails; Docker itself answers
    h.send(Hint("", START))
    for _ in range(10):  # the full pass is retried on Docker's backoff
        h.clock.advance(max(h.loop.seconds_until_due(), 0.0))
        h.send()
    assert "h1:good0:80" in h.ids(), (
        f"no well-behaved container registered; the backoff never grows (each good inspect resets it): "
        f"{h.docker.lists} listings and {h.docker.inspects} inspects in {h.clock.now - 1000:.0f}s")


def test_F3_a_docker_stop_in_the_same_batch_as_agent_back_still_drains(h: Harness) -> None:
    """README "Guarantees": every event's own action runs whatever else is in the
    batch. AGENT_BACK is handled first and drops the primary's listing
    (actual=None); the drain then finds no registered IDs and does nothing:
    the stopped container keeps getting traffic until it dies."""
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))
    h.send(event("c1", "start"))
    assert h.ids() == {"h1:web:80"}
    h.send(event("c1", "kill", signal="15"), Hint("", AGENT_BACK))
    assert h.agent.maintenance.get("h1:web:80", "").startswith(REASON_PREFIX), "the docker stop was not drained"


class RefusingAgent(FakeAgent):
    """An agent that refuses (HTTP 400) every service whose name starts with "bad"."""

    def register(self, service: Service) -> None:
        if service.name.startswith("bad"):
            self._call("register", service.id)
            raise RegistryError(f"fake agent: 400 invalid service {service.id}")
        super().register(service)


def test_F6_tables_keyed_by_service_id_do_not_outlive_their_container() -> None:
    """README "Guarantees" (uptime): "every table is per container or per check".
    With -resync 0, Primary.refused keeps one entry per refused service ID for
    ever: only a success or a full pass removes it, never the container's death."""
    h = Harness()
    h.agent = RefusingAgent()
    h.primary.agent = h.agent
    h.send(Hint("", START))
    for n in range(50):
        cid = f"c{n}"
        h.docker.add(container(cid, f"job{n}", ports={"80/tcp": "8080"}, labels={"SERVICE_NAME": "bad"}))
        h.send(event(cid, "start"))
        del h.docker.containers[cid]
        h.send(event(cid, "destroy"))
    assert h.loop.desires == {}
    assert len(h.primary.refused) == 0, f"{len(h.primary.refused)} entries of containers long gone"


def test_F6b_a_reap_does_not_outlive_its_container(h: Harness) -> None:
    """The same for ReapTracker: a reaped service's entry leaves only when its
    container restarts or the agent is replaced, never when the container is
    removed, not even by a full pass."""
    h.docker.add(container("c1", "worker", ports={"80/tcp": "8080"},
                           labels={"SERVICE_CHECK_TTL": "10s", "SERVICE_CHECK_DEREGISTER_AFTER": "1m"}))
    h.send(event("c1", "start"))
    del h.agent.records["h1:worker:80"]  # the agent reaps it
    h.send(Hint("", CHECK_MISSING, attributes=(("service_id", "h1:worker:80"),)))
    assert "h1:worker:80" in h.primary.reaps
    del h.docker.containers["c1"]
    h.send(event("c1", "destroy"))
    h.send(Hint("", RELOAD))
    assert h.primary.reaps.digests() == {}, f"kept for a container long gone: {h.primary.reaps.digests()}"


def test_F15_destroy_removes_the_records_on_success_kept() -> None:
    """README "Lifecycle": "`destroy` deregisters". With -deregister on-success a failed
    container's records are kept (right); its death set its desire's services to (),
    so its later `docker rm` affects no service ID and nothing is deregistered: the
    record of a container that no longer exists stays in the agent (with -resync 0
    for ever), while the mirrors, which follow the snapshot, drop it."""
    h = Harness(deregister="on-success")
    h.send(Hint("", START))
    h.docker.add(container("c1", "job", ports={"80/tcp": "8080"}))
    h.send(event("c1", "start"))
    h.docker.containers["c1"]["State"].update(Running=False, ExitCode=3)
    h.send(event("c1", "die", exitCode="3"))
    assert h.ids() == {"h1:job:80"}  # kept: the container failed
    del h.docker.containers["c1"]
    h.send(event("c1", "destroy"))
    h.clock.advance(3600)
    h.send()
    assert h.ids() == set(), "the record of a removed container is still registered an hour later"


def test_F16_a_docker_restart_whose_die_and_start_share_a_batch_is_not_left_draining(h: Harness) -> None:
    """`docker restart` (or a stop-signal restart by a supervisor): kill, then die and
    start. When die and start land in one batch (the loop was busy when they came),
    the router keeps only the container's last event, so the drainer never hears of
    the death (on_die) and nothing re-registers the unchanged service: the container
    runs again but stays in maintenance, out of rotation, until the drain timeout
    (30 s by default) clears it."""
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))
    h.send(event("c1", "start"))
    h.send(event("c1", "kill", signal="15"))
    assert "h1:web:80" in h.agent.maintenance  # draining while it stops: right
    h.send(event("c1", "die", exitCode="143"), event("c1", "start"), event("c1", "restart"))
    h.clock.advance(5.0)
    h.send()
    assert h.ids() == {"h1:web:80"}
    assert "h1:web:80" not in h.agent.maintenance, "the restarted container is still out of rotation 5 s later"
