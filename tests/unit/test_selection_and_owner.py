"""--filter (which containers) and --instance (whose records): two daemons of
one host on one agent never remove, adopt or overwrite each other's services."""

from __future__ import annotations

import dataclasses

import json
import urllib.parse

import httpx
import pytest

from consul_reg.app.cli import UsageError, parse_config
from consul_reg.docker.client import DockerSource
from consul_reg.mapping.services import MappingSettings, map_container
from consul_reg.core.records import Owner, RegisteredService, Service, marker_meta, owner_meta, registered_form
from consul_reg.core.plan import plan
from consul_reg.core.errors import RegistryNotOurs
from consul_reg.consul.agent import ConsulRegistry
from consul_reg.consul.guard import OwnershipGuard
from consul_reg.mirrors.keys import owner_tag
from consul_reg.mapping.selection import LabelFilter, docker_filters, parse_filter, selected
from tests.unit.fakes import agent_filter
from tests.unit.stub_agent import stub_client


# -- --filter ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text,expected", [
    ("label=com.docker.compose.project=shop", LabelFilter("com.docker.compose.project", "shop")),
    ("label=team", LabelFilter("team", None)),
    ("label=a=b=c", LabelFilter("a", "b=c")),  # Docker splits at the first '='
    ("label=a=", LabelFilter("a", "")),
])
def test_filters_parse_as_docker_reads_them(text, expected):
    assert parse_filter(text) == expected


@pytest.mark.parametrize("text", ["name=web", "label", "label=", "label= a", "label=a\nb", "id=x",
                                  "label=" + "a" * 2000])
def test_other_filters_are_refused(text):
    with pytest.raises(ValueError):
        parse_filter(text)
    with pytest.raises(UsageError):
        parse_config(["--filter", text])


def test_every_filter_must_match():
    filters = (LabelFilter("project", "shop"), LabelFilter("tier"))
    assert docker_filters(filters) == {"label": ["project=shop", "tier"]}
    assert selected({"Config": {"Labels": {"project": "shop", "tier": "x"}}}, filters) is None
    assert selected({"Config": {"Labels": {"project": "shop"}}}, filters) == LabelFilter("tier")
    assert selected({"Config": {"Labels": {"project": "shopping", "tier": ""}}}, filters) == filters[0]
    assert selected({"Config": {"Labels": None}}, filters) == filters[0]
    assert selected({}, ()) is None


def test_the_mapping_skips_a_container_the_filter_does_not_select():
    container = {"Id": "a" * 64, "Name": "/web", "Config": {"Image": "web", "Labels": {"project": "other"}},
                 "NetworkSettings": {"Ports": {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8000"}]}}}
    settings = MappingSettings(hostname="h", selection=(LabelFilter("project", "shop"),))
    records = map_container(container, settings)
    assert records.services == [] and records.skipped_reason == "it does not match --filter label=project=shop"
    container["Config"]["Labels"]["project"] = "shop"
    assert len(map_container(container, settings).services) == 1


def test_the_event_stream_carries_the_filters():
    source = DockerSource(filters={"label": ["project=shop"]})
    filters = source.event_filters()
    assert (filters["type"], filters["label"]) == (["container"], ["project=shop"])
    assert filters["event"] == DockerSource().event_filters()["event"]  # the actions asked (test_docker_wire)
    assert "label" not in DockerSource().event_filters()


# -- --instance -------------------------------------------------------------------------------------


def record(service_id: str, host: str = "h", instance: str = "", container: str = "c1") -> RegisteredService:
    meta = marker_meta(host, container, instance)
    service = Service(id=service_id, name="web", address="1.2.3.4", port=80, meta=tuple(sorted(meta.items())),
                      container_id=container)
    return registered_form(service)


def test_owner_is_shown_as_the_host_name_and_carries_the_instance():
    owner = Owner("h", "blue")
    assert owner.host == "h" and f"{owner}:web:80" == "h:web:80" and owner.instance == "blue"
    assert owner != Owner("h") and Owner("h") == Owner("h")  # a record: equal by host and instance
    assert owner_meta(owner) == {"external-source": "consul-reg", "consul_reg_host": "h", "consul_reg_instance": "blue"}
    assert owner_meta("h") == {"external-source": "consul-reg", "consul_reg_host": "h"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        owner.instance = "red"  # type: ignore[misc]
    assert parse_config(["--hostname", "h", "--instance", "blue"]).owner.instance == "blue"


@pytest.mark.parametrize("bad", ["a:b", "a/b", "..", "x" * 65, "é", "a b"])
def test_instance_names_are_refused_at_start(bad):
    with pytest.raises(UsageError):
        parse_config(["--instance", bad])


def test_owned_by_compares_host_and_instance():
    assert record("s", instance="blue").owned_by(Owner("h", "blue"))
    assert not record("s", instance="blue").owned_by(Owner("h", "red"))
    assert not record("s", instance="blue").owned_by("h")  # the daemon without an instance
    assert not record("s").owned_by(Owner("h", "blue"))
    assert record("s").owned_by("h") and record("s").owned_by(Owner("h"))


def test_two_instances_never_plan_over_each_other():
    blue, red = Owner("h", "blue"), Owner("h", "red")
    reds = {"h:red-web:80": record("h:red-web:80", instance="red"), "shared": record("shared", instance="red")}
    wanted = Service(id="shared", name="web", address="1.2.3.4", port=80,
                     meta=tuple(sorted(marker_meta("h", "c9", "blue").items())))
    result = plan({"shared": wanted}, reds, blue, adopt_leftovers=True)
    assert result.register == () and result.deregister == ()
    assert [holder.id for _, holder in result.blocked] == ["shared"]
    assert plan({}, reds, red).deregister and not plan({}, reds, blue, adopt_leftovers=True).deregister


def test_cleanup_adopts_registrator_leftovers_but_never_another_consul_reg_record():
    leftover = RegisteredService(id="h:web:80", name="web", meta={})
    other_instance = record("h:api:80", instance="red")
    result = plan({}, {"h:web:80": leftover, "h:api:80": other_instance}, Owner("h", "blue"), adopt_leftovers=True)
    assert [r.id for r in result.deregister] == ["h:web:80"]


def test_mirror_owner_tags_differ_per_instance_and_keep_the_old_value_without_one():
    assert owner_tag(Owner("h")) == owner_tag("h")
    assert len({owner_tag("h"), owner_tag(Owner("h", "blue")), owner_tag(Owner("h", "red"))}) == 3


# -- the guard: look before writing ----------------------------------------------------------------


def agent(records: dict[str, dict]) -> tuple[OwnershipGuard, list[str]]:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        query = urllib.parse.parse_qs(request.url.query.decode())
        seen.append(f"{request.method} {request.url.path}" + (f" {query['filter'][0]}" if "filter" in query else ""))
        if request.method == "GET":
            keeps = agent_filter(query["filter"][0] if "filter" in query else None)
            return httpx.Response(200, json={sid: record for sid, record in records.items() if keeps(sid)})
        return httpx.Response(200, text="")

    client = stub_client(handler)
    return OwnershipGuard(ConsulRegistry(client), Owner("h", "blue"), adopt_leftovers=True), seen


READ_WEB = 'GET /v1/agent/services ID matches "(?i)^(web)$"'
SERVICE = Service(id="web", name="web", address="1.2.3.4", port=80,
                  meta=tuple(sorted(marker_meta("h", "c1", "blue").items())))


def test_the_guard_writes_over_nothing_that_is_not_ours():
    red = {"Service": "web", "Meta": owner_meta(Owner("h", "red"))}
    guard, seen = agent({"web": red, "h:x:80": {"Service": "x", "Meta": {}}})
    with pytest.raises(RegistryNotOurs, match="consul-reg of host 'h' instance 'red'"):
        guard.register(SERVICE)
    with pytest.raises(RegistryNotOurs):
        guard.deregister(registered_form(SERVICE))
    assert seen == [READ_WEB, READ_WEB]  # no PUT
    guard.register(Service(id="h:x:80", name="x", address="", port=80))  # a registrator leftover, -cleanup
    assert seen[-1] == "PUT /v1/agent/service/register"


def test_the_guard_writes_when_absent_or_ours_and_skips_removing_what_is_gone():
    guard, seen = agent({"web": {"Service": "web", "Meta": owner_meta(Owner("h", "blue"))}})
    guard.register(SERVICE)
    guard.deregister(registered_form(SERVICE))
    guard.deregister(RegisteredService(id="gone", name="x"))
    guard.register(Service(id="new", name="n", address="", port=1))
    assert seen == [READ_WEB, "PUT /v1/agent/service/register", READ_WEB, "PUT /v1/agent/service/deregister/web",
                    'GET /v1/agent/services ID matches "(?i)^(gone)$"',
                    'GET /v1/agent/services ID matches "(?i)^(new)$"', "PUT /v1/agent/service/register"]


def test_the_guard_reads_a_hostile_answer_as_not_ours():
    guard, _ = agent({"web": {"Service": ["x"], "Meta": "junk"}})
    with pytest.raises(RegistryNotOurs):
        guard.register(SERVICE)
    assert json.dumps(guard.current("web").meta) == "{}"


def test_a_consul_kv_mirror_tells_instances_apart():
    import base64

    from consul_reg.mirrors.consulkv import ConsulKVRegistry

    blue, red = Owner("h", "blue"), Owner("h", "red")
    entries = [{"Key": "svc/web/h:web:80", "Value": base64.b64encode(b"1.2.3.4:80").decode(), "Flags": owner_tag(blue)},
               {"Key": "svc/api/h:api:80", "Value": base64.b64encode(b"1.2.3.4:81").decode(), "Flags": owner_tag(red)},
               {"Key": "svc/old/h:old:80", "Value": base64.b64encode(b"1.2.3.4:82").decode(), "Flags": 0}]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=entries)

    def listing(owner: str) -> dict[str, bool]:
        client = stub_client(handler)
        records = ConsulKVRegistry(client, "svc", owner).services()
        return {key: record.owned_by(owner) for key, record in records.items()}

    assert listing(blue) == {"svc/web/h:web:80": True, "svc/api/h:api:80": False, "svc/old/h:old:80": False}
    assert listing(red) == {"svc/web/h:web:80": False, "svc/api/h:api:80": True, "svc/old/h:old:80": False}
    # The daemon without an instance keeps claiming the keys of its default IDs written before owner tags;
    # those another writer holds are listed as absent: it writes over one it wants (its default IDs are
    # its own, no container may choose one), and never removes one it did not write.
    assert listing("h") == {"svc/old/h:old:80": True}
