"""The loop with containers that cannot be read for a while (an inspect that
fails, an env file whose first read met a Docker outage): they are looked at
again later, and the others carry on."""

from __future__ import annotations

from consul_reg.core.messages import EnvFileRead
from consul_reg.core.messages import Reload, Start
from tests.unit.fakes import container
from tests.unit.test_loop import Harness, event

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


def test_one_container_whose_inspect_fails_does_not_stop_every_other_from_registering() -> None:
    """In a full pass, one container whose inspect answers an error (dockerd
    answered: an HTTP 500 for that container) costs only that container."""
    h = Harness()
    for n in range(20):
        h.docker.add(container(f"good{n}", f"good{n}", ports={"80/tcp": str(8000 + n)}))
    h.docker.add(container("stuck", "stuck", ports={"80/tcp": "8081"}))
    h.docker.broken.add("stuck")  # inspecting this one container fails; Docker itself answers
    h.send(Start())
    for _ in range(10):  # the full pass is retried on Docker's backoff
        h.clock.advance(max(h.loop.seconds_until_due(), 0.0))
        h.send()
    assert "h1:good0:80" in h.ids(), (
        f"no well-behaved container registered; the backoff never grows (each good inspect resets it): "
        f"{h.docker.lists} listings and {h.docker.inspects} inspects in {h.clock.now - 1000:.0f}s")


def env_file_container(h: Harness, reader: FakeEnvReader) -> None:
    h.docker.env_reader = reader
    h.send(Start())
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}, labels={"SERVICE_ENV_FILE": ENV_PATH}))
    h.send(event("c1", "start"))
    assert reader.pending == [("c1", ENV_PATH)] and h.ids() == set()
    reader.pending.clear()


def outage(reason: str = "dockerd dropped the connection") -> EnvFileRead:
    return EnvFileRead("c1", ENV_PATH, None, error=reason, docker_down=True)


def test_a_first_env_file_read_that_met_a_docker_outage_is_retried() -> None:
    """A container with an env file registers once its first read answers. A
    first read that met a Docker outage is asked again on Docker's backoff."""
    h = Harness()
    reader = FakeEnvReader()
    env_file_container(h, reader)
    assert h.loop.handle([outage()])
    # Docker is back. Two minutes of env-file polls, a resync-like full pass (SIGHUP),
    # and any read asked for meanwhile is answered ("no such file yet").
    for _ in range(12):
        h.clock.advance(10.0)
        h.send()
        if reader.pending:
            assert h.loop.handle(list(reader.answer_all(None)))
    h.send(Reload())
    if reader.pending:
        assert h.loop.handle(list(reader.answer_all(None)))
    assert h.ids() == {"h1:web:80"}, (
        f"the container was never registered; env-file reads asked after the outage: {reader.requested - 1}")


def test_the_retry_of_a_first_env_file_read_follows_dockers_backoff() -> None:
    """While dockerd stays down, the container is looked at again on a growing
    backoff and the file is not asked for; once Docker answers, it is asked once
    and the container registers with its values."""
    h = Harness()
    reader = FakeEnvReader()
    env_file_container(h, reader)
    h.docker.down = True
    assert h.loop.handle([outage()])
    assert reader.pending == []
    h.send()
    assert reader.pending == [], "looked at again at once, not on the backoff"
    waits = []
    for _ in range(4):
        wait = h.loop.seconds_until_due()
        assert 0 < wait <= 30
        waits.append(wait)
        h.clock.advance(wait)
        h.send()  # the look fails: Docker is still down
        assert reader.pending == []
    assert waits == sorted(waits) and waits[-1] > waits[0], f"the waits do not grow: {waits}"
    h.docker.down = False
    h.clock.advance(h.loop.seconds_until_due())
    h.send()
    assert reader.pending == [("c1", ENV_PATH)]
    assert h.loop.handle(reader.answer_all("SERVICE_NAME=shop\n"))
    assert {s.name for s in h.agent.registered.values()} == {"shop"}
    assert h.loop.reader.retry == set()


def test_an_outage_after_a_good_read_keeps_the_values_and_asks_nothing_extra() -> None:
    """A read that met an outage once the file was read changes nothing: the
    last values stay and the regular poll reads it again."""
    h = Harness()
    reader = FakeEnvReader()
    env_file_container(h, reader)
    assert h.loop.handle([EnvFileRead("c1", ENV_PATH, "SERVICE_NAME=shop\n")])
    assert {s.name for s in h.agent.registered.values()} == {"shop"}
    writes = len(h.agent.writes())
    assert h.loop.handle([outage()])
    h.send()
    assert reader.pending == [] and h.loop.reader.retry == set()
    assert {s.name for s in h.agent.registered.values()} == {"shop"} and len(h.agent.writes()) == writes
