"""The primary's AgentRecords (issue 24): its fold index stays the same as a pass over
its records after any writes and removals, and a plan over it is the plan over
the same records as a plain dict (which scans them), for IDs that differ only in
case, ours and others'."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from consul_reg.core.agent_records import AgentRecords
from consul_reg.core.plan import _spellings, plan
from consul_reg.core.records import Owner, RegisteredService, Service, fold_id, marker_meta, registered_form

OWNER = Owner("h")
# few letters and both cases, so that spellings collide often; `İ` folds to `i`
ids = st.text(alphabet="aAbBİi:1", min_size=1, max_size=4)


def record(service_id: str, ours: bool, container: str = "c1") -> RegisteredService:
    meta = marker_meta(OWNER.host, container, "") if ours else {}
    return RegisteredService(id=service_id, name="web", meta=meta)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), ids, st.booleans()), max_size=40))
def test_the_fold_index_is_what_a_pass_over_the_records_finds(steps: list[tuple[bool, str, bool]]) -> None:
    listing, plain = AgentRecords(), {}
    for write, service_id, ours in steps:
        if write:
            listing.put(service_id, record(service_id, ours))
            plain[service_id] = record(service_id, ours)
        else:
            assert listing.remove(service_id) == plain.pop(service_id, None)
    assert dict(listing.items()) == plain and len(listing) == len(plain)
    scanned = _spellings(plain)
    for folded in {fold_id(k) for k in plain} | {"zz"}:
        assert sorted(listing.spellings(folded)) == sorted(scanned(folded))
    assert sorted(AgentRecords(plain).spellings("a")) == sorted(scanned("a"))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(ids, st.booleans(), max_size=12), st.lists(ids, min_size=1, max_size=4, unique=True))
def test_a_plan_over_a_listing_is_the_plan_over_its_records(held: dict[str, bool], wanted: list[str]) -> None:
    actual = {sid: record(sid, ours) for sid, ours in held.items()}
    desired = {sid: Service(id=sid, name="web", address="10.0.0.1", port=80, container_id="c1") for sid in wanted}
    for scope in (None, set(wanted) | set(list(held)[:3])):
        expected = plan(desired, actual, OWNER, scope=scope)
        assert plan(desired, AgentRecords(actual), OWNER, scope=scope) == expected


def test_a_write_then_a_removal_of_one_spelling_leaves_the_other() -> None:
    listing = AgentRecords({"Web": record("Web", ours=False)})
    listing.put("web", registered_form(Service(id="web", name="web", address="10.0.0.1", port=80, container_id="c1",
                                                meta=tuple(marker_meta(OWNER.host, "c1", "").items()))))
    assert sorted(listing.spellings("web")) == ["Web", "web"]
    listing.remove("web")
    assert listing.spellings("web") == ("Web",) and "web" not in listing
    assert listing.remove("web") is None
    listing.remove("Web")
    assert listing.spellings("web") == () and not listing


# other writers' IDs may be any text: the Kelvin sign, dotless and dotted i, long s, sharp s, sigmas
wide_ids = st.text(alphabet="kK\u212aiI\u0130\u0131sS\u017f\u00df\u03a3\u03c3\u03c2:1", min_size=1, max_size=3)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), wide_ids, st.booleans(), st.sampled_from(["c1", "c2"])), max_size=30),
       st.lists(wide_ids, min_size=1, max_size=4, unique=True), st.booleans())
def test_a_plan_over_a_listing_written_and_removed_from_is_the_plan_over_the_same_dict(
        steps: list[tuple[bool, str, bool, str]], wanted: list[str], kept: bool) -> None:
    """The primary's listing is written to and removed from between plans (its writes, `forget`,
    lost checks): the plan over it, scoped or not, with kept containers or not, is still the plan
    over a dict that went through the same steps."""
    listing, plain = AgentRecords(), {}
    for write, service_id, ours, container in steps:
        if write:
            listing.put(service_id, record(service_id, ours, container))
            plain[service_id] = record(service_id, ours, container)
        else:
            assert listing.remove(service_id) == plain.pop(service_id, None)
        assert listing.get(service_id) == plain.get(service_id) and (service_id in listing) == (service_id in plain)
    assert list(listing.items()) == list(plain.items())
    desired = {sid: Service(id=sid, name="web", address="10.0.0.1", port=80, container_id="c1") for sid in wanted}
    kept_containers = {"c2"} if kept else set()
    for scope in (None, set(wanted), set(wanted) | set(list(plain)[:3])):
        assert plan(desired, listing, OWNER, scope=scope, kept_containers=kept_containers) == \
            plan(desired, plain, OWNER, scope=scope, kept_containers=kept_containers)
