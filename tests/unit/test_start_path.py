"""What a start's path leaves for after its writes (issue 24): a mapping's log lines,
and the digest of a container mapped for the first time. Held, never lost: they come
once the batch's writes are sent, and at most UNSETTLED_MAX first digests wait."""

from __future__ import annotations

from typing import Any

import pytest
from loguru import logger

from consul_reg.app.config import Config
from consul_reg.sync.desires import UNSETTLED_MAX, DesireBuilder
from consul_reg.core.messages import Start
from consul_reg.core.records import RegisteredService
from tests.unit.fakes import FakeDocker, Lazy, container
from tests.unit.test_loop import Harness, event


@pytest.fixture
def lines() -> Any:
    captured: list[str] = []
    sink = logger.add(lambda message: captured.append(message.record["message"]), level="INFO")
    yield captured
    logger.remove(sink)


def builder() -> DesireBuilder:
    config = Config(hostname="h1", registry_uris=("consul://x",))
    return DesireBuilder(config.container_rules(), FakeDocker(), config.mapping_settings("10.0.0.1", "test", "1.8.7",
                                                                                         True))


def web(n: int) -> dict[str, Any]:
    return container(f"c{n}", f"web{n}", ports={"80/tcp": str(8000 + n)})


def test_a_start_logs_where_it_registers_after_the_register_is_made(lines: list[str]) -> None:
    h = Harness()
    order: list[str] = []
    register = h.agent.register

    def noted(service: Any) -> None:
        order.append(f"register {service.id}")
        register(service)

    h.agent.register = noted  # type: ignore[method-assign]
    sink = logger.add(lambda message: order.append(message.record["message"]), level="INFO")
    try:
        h.send()
        h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))
        h.send(event("c1", "start"))
    finally:
        logger.remove(sink)
    said = [n for n, line in enumerate(order) if line.startswith("container web: h1:web:80 takes the address")]
    assert said, order
    assert order.index("register h1:web:80") < said[0]
    assert len(said) == 1  # said once, until it changes


def test_held_lines_and_first_digests_come_at_settle(lines: list[str]) -> None:
    b = builder()
    b.hold_reports()
    b.build(web(1), None)
    assert not [line for line in lines if "takes the address" in line]
    b.build(web(1), None)  # before settle: no digest yet, so mapped again (never a stale answer)
    assert b.mappings == 2
    b.settle()
    assert len([line for line in lines if line.startswith("container web1: h1:web1:80 takes the address")]) == 1
    b.build(web(1), None)  # settled: its digest is there, nothing it reads changed
    assert b.mappings == 2


def test_at_most_unsettled_max_first_mappings_wait() -> None:
    b = builder()
    b.hold_reports()
    count = UNSETTLED_MAX + 5
    for n in range(count):
        b.build(web(n), None)
    assert b.mappings == count
    for n in range(count):  # those over the bound were digested at once: their second build maps nothing
        b.build(web(n), None)
    assert b.mappings == count + UNSETTLED_MAX
    b.settle()
    for n in range(count):
        b.build(web(n), None)
    assert b.mappings == count + UNSETTLED_MAX


def test_a_container_forgotten_before_settle_leaves_no_digest() -> None:
    b = builder()
    b.hold_reports()
    b.build(web(1), None)
    b.forget("c1")
    b.settle()
    b.build(web(1), None)
    assert b.mappings == 2
    b.build(web(2), None)
    b.forget_all_but({"c1"})
    b.settle()
    b.build(web(2), None)
    assert b.mappings == 4


def test_without_holding_lines_come_at_once(lines: list[str]) -> None:
    b = builder()
    b.build(web(1), None)
    assert len([line for line in lines if line.startswith("container web1: h1:web1:80 takes the address")]) == 1
    b.build(web(1), None)
    assert b.mappings == 1  # digested at once


def test_a_starts_inspect_is_answered_and_mapped_before_its_agent_read_is_taken() -> None:
    """Both are sent when the event is read (sync/early.py). The inspect is needed first:
    the loop maps the container while the agent's answer is on its way, and takes that
    answer only for the write. Never the read first: that held the mapping back until the
    agent answered (issue 24's trace: ~0.5 ms)."""
    h = Harness(guard=True)
    h.send(Start())
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))
    order: list[str] = []
    inspect, read_later, map_ = h.docker.inspect, h.agent.services_in_later, h.loop.builder._map

    def read_noted(scope: Any, wait: bool = True) -> Any:
        read = read_later(scope, wait)
        return Lazy(lambda: order.append("agent read taken") or read.result())

    def mapped(*args: Any) -> Any:
        order.append("mapped")
        return map_(*args)
    h.docker.inspect_later = lambda cid: Lazy(lambda: order.append("inspect taken") or inspect(cid))  # type: ignore
    h.agent.services_in_later = read_noted  # type: ignore[method-assign]
    h.loop.builder._map = mapped  # type: ignore[method-assign]
    h.loop.post(event("c1", "start", name="web"))
    assert h.loop.handle(h.loop.inbox.next_batch(0))
    assert h.ids() == {"h1:web:80"}
    assert order == ["inspect taken", "mapped", "agent read taken"]


def test_a_blocked_service_is_never_said_to_register(lines: list[str]) -> None:
    """The address line comes after the plan's and the guard's refusals: it names the
    address, never a registration the plan or the guard refused."""
    h = Harness(guard=True)
    h.agent.records["h1:web:80"] = RegisteredService("h1:web:80", "by-hand", "10.9.9.9", 1)
    h.send(Start())
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))
    h.loop.post(event("c1", "start", name="web"))
    assert h.loop.handle(h.loop.inbox.next_batch(0))
    about = [line for line in lines if "h1:web:80" in line]
    assert h.agent.records["h1:web:80"].name == "by-hand"
    assert any("not registered" in line for line in about), about
    assert not [line for line in about if "registers" in line or line.startswith("registered")], about


def test_first_digests_are_made_after_the_checks_first_report_and_the_snapshot() -> None:
    """Up to UNSETTLED_MAX digests of heavy containers (tens of ms): never before a new
    TTL check's first report or the snapshot the mirrors and the status endpoint read."""
    h = Harness(guard=True)
    h.send(Start())
    h.docker.add(container("c1", "web", ports={"80/tcp": "8080"}))
    order: list[str] = []
    settle, report_now, publish = h.loop.builder.settle, h.loop.probes.report_now, h.loop._publish

    def noted(name: str, call: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            order.append(name)
            return call(*args, **kwargs)
        return wrapper
    h.loop.builder.settle = noted("settle", settle)  # type: ignore[method-assign]
    h.loop.probes.report_now = noted("report_now", report_now)  # type: ignore[method-assign]
    h.loop._publish = noted("publish", publish)  # type: ignore[method-assign]
    h.loop.post(event("c1", "start", name="web"))
    assert h.loop.handle(h.loop.inbox.next_batch(0))
    assert h.ids() == {"h1:web:80"}
    assert order == ["report_now", "publish", "settle"], order
