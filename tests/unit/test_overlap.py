"""Overlapped calls: outcomes in order, bounded concurrency, nothing more tried
after Docker or the agent is found unreachable, nothing left running; and
apply() on a pool: every register done before any deregister."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from consul_reg.core.records import RegisteredService, Service
from consul_reg.sync.overlap import Calls, outcomes, overlapped
from consul_reg.core.plan import Plan, apply
from consul_reg.core.errors import RegistryError, RegistryUnavailable


class Gate:
    """Counts calls in flight at once; each call holds for `hold` seconds."""

    def __init__(self, hold: float = 0.02) -> None:
        self.hold = hold
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0
        self.started: list[str] = []
        self.threads: set[str] = set()

    def enter(self, item: str) -> None:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
            self.started.append(item)
            self.threads.add(threading.current_thread().name)
        time.sleep(self.hold)
        with self.lock:
            self.now -= 1


@pytest.fixture
def pool():
    executor = ThreadPoolExecutor(4, thread_name_prefix="test-io")
    yield executor
    executor.shutdown(wait=True)


def test_outcomes_come_in_order_with_at_most_the_pools_workers_in_flight(pool) -> None:
    gate = Gate()
    items = [f"c{n}" for n in range(20)]

    def call(item: str) -> str:
        gate.enter(item)
        if item == "c3":
            raise RegistryError("refused")
        return item.upper()

    seen = list(outcomes(Calls(call, (RegistryError,), RegistryUnavailable), items, pool))
    assert [item for item, _ in seen] == items
    assert [o.value for i, o in seen if i != "c3"] == [i.upper() for i in items if i != "c3"]
    assert isinstance(dict(seen)["c3"].error, RegistryError) and all(o.tried for _, o in seen)
    assert 1 < gate.most <= 4, "calls overlap, never more than the pool's workers"
    assert threading.current_thread().name not in gate.threads


def test_after_the_fatal_error_no_call_is_started_and_none_is_left_running(pool) -> None:
    gate = Gate(hold=0.05)
    items = [f"c{n}" for n in range(40)]

    def call(item: str) -> None:
        gate.enter(item)
        if item == "c0":
            raise RegistryUnavailable("agent gone")

    seen = list(outcomes(Calls(call, (RegistryError,), RegistryUnavailable), items, pool))
    assert [item for item, _ in seen] == items  # every item accounted for
    assert isinstance(seen[0][1].error, RegistryUnavailable)
    tried = [item for item, outcome in seen if outcome.tried]
    assert set(tried) == set(gate.started) and len(tried) < len(items)
    assert gate.now == 0, "nothing of the batch still runs once the caller is done"


def test_without_a_pool_the_calls_are_sequential_and_stop_at_the_fatal_error() -> None:
    called: list[str] = []

    def call(item: str) -> None:
        called.append(item)
        if item == "b":
            raise RegistryUnavailable("gone")

    seen = list(outcomes(Calls(call, (RegistryError,), RegistryUnavailable), ["a", "b", "c"], None))
    assert called == ["a", "b"] and [o.tried for _, o in seen] == [True, True, False]


def test_an_unexpected_exception_propagates_and_leaves_nothing_running(pool) -> None:
    gate = Gate()

    def call(item: str) -> None:
        gate.enter(item)
        if item == "c1":
            raise KeyError("a bug")

    with pytest.raises(KeyError):
        list(outcomes(Calls(call, (RegistryError,), RegistryUnavailable), [f"c{n}" for n in range(10)], pool))
    assert gate.now == 0


class SlowRegistry:
    def __init__(self, down_after: int | None = None) -> None:
        self.lock = threading.Lock()
        self.log: list[tuple[str, str]] = []
        self.down_after = down_after

    def _record(self, what: str, service_id: str) -> None:
        time.sleep(0.01)
        with self.lock:
            if self.down_after is not None and len(self.log) >= self.down_after:
                raise RegistryUnavailable("agent gone")
            self.log.append((what, service_id))

    def register(self, service: Service) -> None:
        if service.id == "refused":
            raise RegistryError("400 bad definition")
        self._record("register", service.id)

    def deregister(self, service: RegisteredService) -> None:
        self._record("deregister", service.id)


def plan_of(registers: int, deregisters: int, refused: bool = False) -> Plan:
    services = [Service(id=f"s{n}", name="web", address="10.0.0.1", port=80) for n in range(registers)]
    if refused:
        services.insert(1, Service(id="refused", name="web", address="10.0.0.1", port=80))
    return Plan(register=tuple(services),
                deregister=tuple(RegisteredService(f"old{n}", "web") for n in range(deregisters)))


def test_apply_on_a_pool_registers_everything_before_deregistering_anything(pool) -> None:
    registry = SlowRegistry()
    result = apply(plan_of(12, 12, refused=True), registry, run=overlapped(pool))
    kinds = [what for what, _ in registry.log]
    assert kinds == ["register"] * 12 + ["deregister"] * 12
    assert [s.id for s in result.registered] == [f"s{n}" for n in range(12)]  # the plan's order
    assert [s.id for s in result.deregistered] == [f"old{n}" for n in range(12)]
    assert [sid for sid, _ in result.failed] == ["refused"] and not result.unavailable


def test_apply_on_a_pool_stops_when_the_agent_goes_and_reports_what_was_done(pool) -> None:
    registry = SlowRegistry(down_after=5)
    result = apply(plan_of(30, 5), registry, run=overlapped(pool))
    assert result.unavailable
    done = {sid for what, sid in registry.log}
    assert {s.id for s in result.registered} == done and len(done) == 5
    assert not result.deregistered, "no deregistration after the agent went"
