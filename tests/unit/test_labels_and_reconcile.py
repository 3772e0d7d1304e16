from __future__ import annotations

from consul_reg.mapping.labels import collect, split_tags
from consul_reg.core.records import ContainerDesire, RegisteredService, Service, marker_meta, registered_form
from consul_reg.core.plan import DesiredServices, plan


def test_split_tags():
    assert split_tags("a, b,,c ") == ["a", "b", "c"]
    assert split_tags(r"x\,y,z") == ["x,y", "z"]
    assert split_tags("") == []


def test_collect_is_case_insensitive_and_scoped():
    keys = collect(["SERVICE_Name=a", "SERVICE_80_TAGS=t", "OTHER=x", "BROKEN"], {"SERVICE_NAME": "b"})
    assert keys.general["name"].value == "b" and keys.general["name"].source == "label"
    assert keys.by_port["80"]["tags"].value == "t"


def service(service_id: str, host: str = "h", container: str = "c1", port: int = 80) -> Service:
    meta = marker_meta(host, container)
    return Service(id=service_id, name="web", address="1.2.3.4", port=port, meta=tuple(sorted(meta.items())),
                   container_id=container)


def test_plan_is_empty_when_in_sync():
    wanted = service("h:web:80")
    assert not plan({wanted.id: wanted}, {wanted.id: registered_form(wanted)}, "h")


def test_plan_registers_changed_and_removes_only_owned():
    wanted = service("h:web:80", port=81)
    stale = registered_form(service("h:web:80", port=80))
    orphan = registered_form(service("h:old:80"))
    foreign = RegisteredService(id="h:foreign:80", name="x")
    other_host = registered_form(service("o:web:80", host="o"))
    actual = {s.id: s for s in (stale, orphan, foreign, other_host)}
    result = plan({wanted.id: wanted}, actual, "h")
    assert result.register == (wanted,)
    assert [s.id for s in result.deregister] == ["h:old:80"]


def test_plan_keeps_records_of_kept_containers_and_cleans_leftovers():
    kept = registered_form(service("h:failed:80", container="dead"))
    leftover = RegisteredService(id="h:gone:80", name="x")
    result = plan({}, {kept.id: kept, leftover.id: leftover}, "h", kept_containers=frozenset({"dead"}),
                  adopt_leftovers=True)
    assert [s.id for s in result.deregister] == ["h:gone:80"]


def test_newer_container_wins_an_id_whatever_the_order():
    old = ContainerDesire("c1", "old", "2020-01-01T00:00:00.5Z", (service("same", container="c1"),))
    new = ContainerDesire("c2", "new", "2020-01-01T00:00:00.12Z", (service("same", container="c2"),))
    newest = ContainerDesire("c3", "newest", "2020-01-01T00:00:00.6Z", (service("same", container="c3"),))
    for order in ([old, newest, new], [newest, new, old]):
        desired = DesiredServices()
        warnings = desired.replace_all(order)
        assert desired.by_id["same"].container_id == "c3"
        assert "newest" in warnings[-1] and "old" in warnings[-1]
    affected, _ = desired.update(newest, None)  # the newest goes: the next one takes the ID
    assert affected == {"same"} and desired.by_id["same"].container_id == "c1"


def test_plan_never_writes_over_a_record_that_is_not_ours():
    wanted = service("payments")
    foreign = RegisteredService(id="payments", name="payments", address="10.0.0.9", port=80)
    result = plan({wanted.id: wanted}, {foreign.id: foreign}, "h")
    assert not result and result.blocked == ((wanted, foreign),)


def test_a_scoped_plan_looks_only_at_its_ids():
    wanted = service("h:a:80")
    orphan = registered_form(service("h:old:80"))
    result = plan({wanted.id: wanted}, {orphan.id: orphan}, "h", scope={"h:a:80"})
    assert result.register == (wanted,) and result.deregister == ()
    gone = plan({}, {orphan.id: orphan}, "h", scope={"h:old:80"})
    assert [s.id for s in gone.deregister] == ["h:old:80"]


def test_the_holder_of_a_contested_id_is_known_and_every_claimant_is_told_when_it_changes():
    desired = DesiredServices()
    old = ContainerDesire("old", "old", "2026-01-01T00:00:00Z", (service("jobs", container="old"),))
    new = ContainerDesire("new", "new", "2026-01-02T00:00:00Z", (service("jobs", container="new"),))
    desired.update(None, old)
    assert desired.holds("old", "jobs")
    affected, _ = desired.update(None, new)
    assert desired.holds("new", "jobs") and not desired.holds("old", "jobs")
    assert desired.claimants(affected) == {"old", "new"}
    affected, _ = desired.update(new, None)
    assert desired.holds("old", "jobs") and desired.claimants(affected) == {"old"}
    desired.update(old, None)
    assert not desired.holds("old", "jobs") and desired.claimants(["jobs"]) == set()
    desired.replace_all([new])
    assert desired.holds("new", "jobs")
