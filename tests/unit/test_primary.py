"""The primary's state and its backoff, with a fake agent and a fake clock."""

from __future__ import annotations

from consul_reg.core.records import Check, ContainerDesire, RegisteredService, Service, marker_meta
from consul_reg.sync.primary import Primary
from tests.unit.fakes import FakeAgent, FakeClock, no_jitter


def service(sid: str, cid: str = "c1", **kw: object) -> Service:
    return Service(id=sid, name="web", address="1.2.3.4", port=80, meta=tuple(sorted(marker_meta("h", cid).items())),
                   container_id=cid, **kw)


def test_unreachable_agent_backs_off_and_resets_after_a_successful_pass() -> None:
    clock, agent = FakeClock(), FakeAgent()
    primary = Primary(agent, "h", 1.0, clock, random=no_jitter)
    wanted = {"a": service("a")}
    agent.down = True
    assert not primary.sync(wanted, [], None, set()).reached
    assert primary.backoff.retry_at == clock.now + 1.0 and "connection refused" in primary.last_error
    calls = len(agent.calls)
    assert not primary.sync(wanted, [], None, set()).reached
    assert len(agent.calls) == calls, "no call before the retry time"
    clock.advance(1.0)
    assert not primary.sync(wanted, [], None, set()).reached
    assert primary.backoff.retry_at == clock.now + 2.0
    agent.down = False
    clock.advance(2.0)
    result = primary.sync(wanted, [], None, set())
    assert result.reached and [s.id for s in result.registered] == ["a"]
    assert not primary.backoff.failing and primary.last_error == ""


def test_refused_definitions_are_not_retried_until_they_change_or_a_full_pass() -> None:
    class Refusing(FakeAgent):
        def register(self, service: Service) -> None:
            self._call("register", service.id)
            from consul_reg.core.errors import RegistryError
            raise RegistryError("400 bad")

    clock, agent = FakeClock(), Refusing()
    primary = Primary(agent, "h", 1.0, clock)
    wanted = {"a": service("a")}
    primary.sync(wanted, [], None, set())
    primary.sync(wanted, [], {"a"}, set())
    assert agent.calls.count(("register", "a")) == 1
    primary.sync({"a": service("a", tags=("new",))}, [], {"a"}, set())
    assert agent.calls.count(("register", "a")) == 2
    primary.new_pass()
    primary.sync({"a": service("a", tags=("new",))}, [], None, set())
    assert agent.calls.count(("register", "a")) == 3


def test_a_new_node_id_means_a_restart_not_reaps() -> None:
    clock, agent = FakeClock(), FakeAgent()
    primary = Primary(agent, "h", 1.0, clock)
    primary.identity = agent.agent_info()
    reapable = service("a", checks=())
    desire = ContainerDesire("c1", "web", "t", (reapable,))
    primary.sync({"a": reapable}, [desire], None, set())
    agent.restart("node-2")
    assert primary.agent_changed(agent.agent_info()) is True
    result = primary.sync({"a": reapable}, [desire], None, set())
    assert [s.id for s in result.registered] == ["a"]
    assert primary.agent_changed(agent.agent_info()) is False  # same node: an outage, not a restart


def test_what_is_kept_per_service_id_leaves_with_the_last_desire_for_it() -> None:
    """Refused definitions, reaps and blocked warnings: a targeted sync forgets the
    IDs of its scope no longer desired, a full one every such ID; desired ones stay."""
    clock, agent = FakeClock(), FakeAgent()
    primary = Primary(agent, "h", 1.0, clock)
    desired = {"a": service("a"), "b": service("b", cid="c2")}
    primary.sync(desired, [], None, set())
    for sid in ("a", "b", "gone"):
        primary.refused[sid] = "digest"
        primary.reaps._reaped[sid] = ("digest", "c1")
        primary._blocked_warned[sid] = "host x"
    primary.sync({"b": desired["b"]}, [], {"a"}, set())  # container c1 left: its "a" is in scope
    assert set(primary.refused) == {"b", "gone"} and primary.reaps.service_ids() == {"b", "gone"}
    assert set(primary._blocked_warned) == {"b", "gone"}, "only the scope is looked at in a targeted sync"
    primary.relist()
    primary.sync({"b": desired["b"]}, [], None, set())
    assert set(primary.refused) == {"b"} and primary.reaps.service_ids() == {"b"}
    assert set(primary._blocked_warned) == set()  # a full plan re-warns only what is still blocked


def test_tables_are_pruned_while_the_agent_is_unreachable_too() -> None:
    clock, agent = FakeClock(), FakeAgent()
    primary = Primary(agent, "h", 1.0, clock)
    primary.refused["a"] = "digest"
    agent.down = True
    assert not primary.sync({}, [], {"a"}, set()).reached
    assert primary.refused == {}


def test_a_fresh_listing_registers_again_only_our_in_sync_services_that_lost_a_check() -> None:
    clock, agent = FakeClock(), FakeAgent()
    primary = Primary(agent, "h", 1.0, clock)
    ttl = (Check("service:a", "ttl", (("TTL", "1m"),)),)
    wanted = {"a": service("a", checks=ttl), "b": service("b", checks=(Check("service:b", "ttl"),))}
    primary.sync(wanted, [], None, set())
    agent.records["foreign"] = RegisteredService(id="foreign", name="x")  # not ours: never looked at
    primary.new_pass()
    primary.sync(wanted, [], None, set())
    assert agent.calls.count(("register", "a")) == 1, "all checks there: nothing written"
    del agent.checks["service:a"]
    primary.sync(wanted, [], {"a"}, set())
    assert agent.calls.count(("register", "a")) == 1, "between full listings the daemon trusts what it wrote"
    primary.new_pass()
    primary.sync(wanted, [], None, set())
    assert agent.calls.count(("register", "a")) == 2 and "service:a" in agent.checks
    assert agent.calls.count(("register", "b")) == 1
    agent.check_service["service:b"] = "foreign"  # taken over by another registration
    primary.new_pass()
    primary.sync(wanted, [], None, set())
    assert agent.calls.count(("register", "b")) == 2
