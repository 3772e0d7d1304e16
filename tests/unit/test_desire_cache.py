"""A container is mapped again only when something the mapping reads changed: a health
flap re-reads its State (its ContainerStatus), not its services. And a flapping
container is read again (the health recheck) at most once per HEALTH_RECHECK_MIN_INTERVAL."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from consul_reg.sync import desires
from consul_reg.app.config import Config
from consul_reg.sync.desires import DesireBuilder, mapping_key
from consul_reg.sync.env_files import EnvFileState
from consul_reg.mapping.env_file import EnvFile
from consul_reg.sync.timers import HEALTH_RECHECK_MIN_INTERVAL, HEALTH_RECHECK_SECONDS
from consul_reg.mapping.services import MappingSettings
from consul_reg.core.messages import Start
from consul_reg.mapping.tags_template import Template
from tests.unit.fakes import FakeDocker, container
from tests.unit.test_loop import Harness, event


@pytest.fixture
def mappings(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The containers map_container was called for, in order."""
    calls: list[str] = []
    real = desires.map_container

    def counting(inspected: dict[str, Any], *args: Any, **kwargs: Any):
        calls.append(str(inspected.get("Id")))
        return real(inspected, *args, **kwargs)

    monkeypatch.setattr(desires, "map_container", counting)
    return calls


def flip(h: Harness, cid: str, health: str) -> None:
    h.docker.containers[cid]["State"]["Health"] = {"Status": health, "Log": [{"Output": "probe said " + health}]}


def test_a_health_flap_reads_the_status_and_maps_nothing_again_until_a_label_changes(mappings: list[str]) -> None:
    h = Harness()
    h.send(Start())
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}, health="starting", labels={"SERVICE_TAGS": "a"}))
    h.send(event("c1", "start"))
    assert mappings == ["c1"] and h.agent.records["h1:web:80"].name == "web"
    for round_, health in enumerate(["healthy", "unhealthy", "healthy", "unhealthy"]):
        flip(h, "c1", health)
        inspects = h.docker.inspects
        h.send(event("c1", "health_status"))
        assert h.docker.inspects == inspects + 1  # read again: its status is new
        assert h.probes._status["c1"].health == health and h.loop.containers.desires["c1"].status.health == health
        h.clock.advance(HEALTH_RECHECK_MIN_INTERVAL)
        h.send()  # the recheck, if due
        assert mappings == ["c1"], round_  # ...and never mapped again
    h.docker.containers["c1"]["Config"]["Labels"]["SERVICE_NAME"] = "shop"
    h.send(event("c1", "health_status"))
    assert mappings == ["c1", "c1"] and h.agent.records["h1:web:80"].name == "shop"


def test_every_input_of_the_mapping_is_in_its_key_and_state_is_not() -> None:
    settings = MappingSettings(hostname="h1")
    base = container("c1", "web", ports={"80/tcp": "8080"}, health="healthy")
    key = mapping_key(base, None, (), settings)
    assert key is not None

    def changed(path: tuple[str, ...], value: Any) -> dict[str, Any]:
        copy = {**base, path[0]: dict(base[path[0]])} if len(path) > 1 else dict(base)
        target = copy
        for name in path[:-1]:
            target[name] = dict(target[name])
            target = target[name]
        target[path[-1]] = value
        return copy

    assert mapping_key(changed(("State", "Health"), {"Status": "unhealthy"}), None, (), settings) == key
    assert mapping_key(changed(("State", "Running"), False), None, (), settings) == key
    for path, value in ((("Config", "Labels"), {"SERVICE_NAME": "x"}), (("Config", "Env"), ["SERVICE_TAGS=a"]),
                        (("Name",), "/other"), (("NetworkSettings", "Ports"), {}), (("HostConfig", "NetworkMode"),
                                                                                     "host"), (("Created",), "x")):
        assert mapping_key(changed(path, value), None, (), settings) != key, path
    peer = container("p1", "peer", health="healthy")
    with_peer = mapping_key(base, peer, (), settings)
    assert with_peer != key
    peer_flapped = {**peer, "State": {"Running": True, "Health": {"Status": "unhealthy"}}}
    assert mapping_key(base, peer_flapped, (), settings) == with_peer
    moved = {**peer, "NetworkSettings": {"Networks": {"bridge": {"IPAddress": "172.17.0.3"}}}}
    assert mapping_key(base, moved, (), settings) != with_peer
    assert mapping_key(base, None, (("env file", [("SERVICE_TAGS", "a")]),), settings) != key


def test_a_template_reading_state_puts_exactly_that_part_in_the_key() -> None:
    base = container("c1", "web", health="healthy")
    flapped = {**base, "State": {**base["State"], "Health": {"Status": "unhealthy"}}}
    stopped_at = {**base, "State": {**base["State"], "FinishedAt": "later"}}
    config_only = MappingSettings(hostname="h1", tags_template=Template("{{ .Config.Image }}"))
    assert mapping_key(base, None, (), config_only) == mapping_key(flapped, None, (), config_only)
    health = MappingSettings(hostname="h1", tags_template=Template("h-{{ .State.Health.Status }}"))
    assert mapping_key(base, None, (), health) != mapping_key(flapped, None, (), health)
    assert mapping_key(base, None, (), health) == mapping_key(stopped_at, None, (), health)
    whole = MappingSettings(hostname="h1", tags_template=Template("{{ index . \"State\" }}"))
    assert mapping_key(base, None, (), whole) != mapping_key(stopped_at, None, (), whole)


def test_the_builder_maps_again_for_new_settings_a_new_peer_and_new_env_values(mappings: list[str]) -> None:
    docker = FakeDocker()
    config = Config(hostname="h1", registry_uris=("consul://x",))
    builder = DesireBuilder(config.container_rules(), docker, MappingSettings(hostname="h1"))
    peer = docker.add(container("p1", "peer"))
    inspected = container("c1", "web", ports={"80/tcp": "8080"}, health="healthy")
    inspected["HostConfig"]["NetworkMode"] = "container:p1"
    builder.build(inspected, None)
    builder.build({**inspected, "State": {"Running": True, "Health": {"Status": "unhealthy"}}}, None)
    assert mappings == ["c1"] and builder.mappings == 1
    peer["NetworkSettings"]["Networks"]["bridge"]["IPAddress"] = "172.17.0.7"
    assert builder.build(inspected, None).services[0].address != ""
    assert mappings == ["c1", "c1"]
    builder.settings = replace(builder.settings)  # equal, yet another object: the daemon replaced them
    builder.build(inspected, None)
    assert mappings == ["c1"] * 3
    with_file = {**inspected, "Config": {**inspected["Config"], "Labels": {"SERVICE_ENV_FILE": "/e"}}}
    builder.build(with_file, EnvFileState("/e", "web", read=True, good=EnvFile((("SERVICE_TAGS", "a"),), ())))
    builder.build(with_file, EnvFileState("/e", "web", read=True, good=EnvFile((("SERVICE_TAGS", "a"),), ())))
    assert mappings == ["c1"] * 4
    desire = builder.build(with_file, EnvFileState("/e", "web", read=True, good=EnvFile((("SERVICE_TAGS", "b"),), ())))
    assert mappings == ["c1"] * 5 and desire.services[0].tags == ("b",)
    builder.forget("c1")
    builder.build(with_file, EnvFileState("/e", "web", read=True, good=EnvFile((("SERVICE_TAGS", "b"),), ())))
    assert mappings == ["c1"] * 6


def test_a_flapping_container_is_rechecked_at_most_once_per_interval_and_after_its_last_event() -> None:
    h = Harness()
    h.send(Start())
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}, health="starting"))
    h.send(event("c1", "start"))
    events = rechecks = 0
    inspects = h.docker.inspects
    for second in range(10):  # an event each second, the loop woken at each deadline in between
        flip(h, "c1", "healthy" if second % 2 else "unhealthy")
        h.send(event("c1", "health_status"))
        events += 1
        end = h.clock.now + 1.0
        while (wait := h.loop.seconds_until_due()) < end - h.clock.now:
            h.clock.advance(max(wait, 0.0))
            before = h.docker.inspects
            h.send()
            rechecks += h.docker.inspects - before
        h.clock.advance(end - h.clock.now)
    assert len(h.loop.timers.health_rechecks) <= 1  # one pending per container
    assert h.docker.inspects - inspects == events + rechecks
    assert 1 <= rechecks <= 10 / HEALTH_RECHECK_MIN_INTERVAL + 1, rechecks
    # After the last event, one recheck still comes, at least HEALTH_RECHECK_SECONDS after it.
    last_event = h.clock.now - 1.0
    due = min(h.loop.timers.health_rechecks.values())
    assert due >= last_event + HEALTH_RECHECK_SECONDS
    flip(h, "c1", "healthy")  # what the event announced, readable only now (Podman)
    h.clock.advance(due - h.clock.now)
    h.send()
    assert h.probes._status["c1"].health == "healthy" and h.loop.timers.health_rechecks == {}
