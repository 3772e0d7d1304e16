from __future__ import annotations

from consul_reg.labels import collect, split_tags
from consul_reg.model import RegisteredService, Service, marker_meta, registered_form
from consul_reg.reconcile import ContainerDesire, desired_services, plan


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
    result = plan({}, {kept.id: kept, leftover.id: leftover}, "h", frozenset({"dead"}), adopt_leftovers=True)
    assert [s.id for s in result.deregister] == ["h:gone:80"]


def test_older_container_wins_an_id():
    old = ContainerDesire("c1", "old", "2020-01-01", (service("same", container="c1"),))
    new = ContainerDesire("c2", "new", "2021-01-01", (service("same", container="c2"),))
    desired, warnings = desired_services([new, old])
    assert desired["same"].container_id == "c1"
    assert "old" in warnings[0] and "new" in warnings[0]
