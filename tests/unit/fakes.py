"""Fakes for the stateful modules' unit tests: a clock, an agent, a Docker."""

from __future__ import annotations

import copy
import re
from typing import Any, Callable, Collection

from consul_reg.core.protocols import RegistryWrites
from consul_reg.core.calls import Later, Ready
from consul_reg.core.records import Holdings, ReadScope, RegisteredService, Service, registered_form
from consul_reg.core.errors import RegistryNotFound, RegistryScriptsRefused, RegistryUnavailable
from consul_reg.core.records import AgentInfo
from consul_reg.core.errors import DockerUnavailable


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def no_jitter() -> float:
    """A Backoff's random source that makes every wait its nominal delay."""
    return 0.0


class FakeAgent:
    """An agent's services and checks in memory; `down` makes every call fail."""

    description = "fake agent"

    def __init__(self, node_id: str = "node-1", scripts: bool = True) -> None:
        self.node_id = node_id
        self.scripts = scripts
        self.down = False
        self.records: dict[str, RegisteredService] = {}
        self.registered: dict[str, Service] = {}
        self.checks: dict[str, tuple[str, str]] = {}  # check ID -> (status, output)
        self.check_service: dict[str, str] = {}  # check ID -> its service's ID, as the agent keeps it
        self.maintenance: dict[str, str] = {}
        self.calls: list[tuple[str, str]] = []
        self.updates = 0

    def _call(self, what: str, target: str = "") -> None:
        if what != "update":  # TTL updates are counted, not kept: tests send 100,000 of them
            self.calls.append((what, target))
        else:
            self.updates += 1
        if self.down:
            raise RegistryUnavailable(f"fake agent: could not {what}: connection refused")

    def agent_info(self) -> AgentInfo:
        self._call("self")
        return AgentInfo("1.8.7", "node", self.node_id, "127.0.0.1", self.scripts)

    def services(self) -> dict[str, RegisteredService]:
        self._call("services")
        return dict(self.records)

    def register(self, service: Service) -> None:
        self._call("register", service.id)
        if not self.scripts and any("Args" in c.definition_dict for c in service.checks):
            raise RegistryScriptsRefused("Scripts are disabled on this agent")
        self.records[service.id] = registered_form(service)
        self.registered[service.id] = service
        self.maintenance.pop(service.id, None)  # registered with replace-existing-checks, as the client does
        self._drop_checks(service.id)
        for check in service.checks:  # a check ID is agent-wide: another service's check moves here
            self.checks[check.check_id] = ("critical", "")
            self.check_service[check.check_id] = service.id

    def services_in_later(self, scope: ReadScope, wait: bool = True) -> Later[dict[str, RegisteredService]]:
        """As the client's filtered read ahead: the IDs and prefixes of `scope`, any case,
        as they are when it is asked for."""
        self._call("services in", ",".join(sorted((*scope.ids, *(p + "*" for p in scope.prefixes)))))
        prefixes, ids = tuple(p.lower() for p in scope.prefixes), {i.lower() for i in scope.ids}
        return Ready({sid: record for sid, record in self.records.items()
                      if sid.lower() in ids or sid.lower().startswith(prefixes)})

    def services_matching(self, service_ids: Collection[str]) -> dict[str, RegisteredService]:
        """As the client's one filtered listing: every spelling of these IDs."""
        self._call("services matching", ",".join(sorted(service_ids)))
        wanted = {s.lower() for s in service_ids}  # as the agent's (?i) filter: not the code's fold_id
        return {sid: record for sid, record in self.records.items() if sid.lower() in wanted}

    def check_owners(self, check_ids: Collection[str] | None = None) -> dict[str, str]:
        self._call("checks", "" if check_ids is None else ",".join(sorted(check_ids)))
        wanted = None if check_ids is None else {c.lower() for c in check_ids}
        return {check_id: self.check_service.get(check_id, "") for check_id in self.checks
                if wanted is None or check_id.lower() in wanted}

    def _drop_checks(self, service_id: str) -> None:
        for check_id in [c for c, owner in self.check_service.items() if owner == service_id]:
            self.checks.pop(check_id, None)
            del self.check_service[check_id]

    def deregister(self, service: RegisteredService) -> None:
        self._call("deregister", service.id)
        self._drop_checks(service.id)
        self.records.pop(service.id, None)
        self.registered.pop(service.id, None)
        self.maintenance.pop(service.id, None)

    def checked_against(self, held: Holdings | None) -> RegistryWrites:
        return self  # the fake agent alone: writes as they come (the guard wraps it to check them)

    def update_check(self, check_id: str, status: str, output: str) -> None:
        self._call("update", check_id)
        if check_id not in self.checks:
            raise RegistryNotFound(f"unknown check {check_id}")
        self.checks[check_id] = (status, output)

    def enable_maintenance(self, service_id: str, reason: str) -> None:
        self._call("maintenance on", service_id)
        self.maintenance[service_id] = reason

    def disable_maintenance(self, service_id: str) -> None:
        self._call("maintenance off", service_id)
        self.maintenance.pop(service_id, None)

    def maintenance_reasons(self, service_ids: Collection[str]) -> dict[str, str]:
        self._call("maintenance reasons", ",".join(sorted(service_ids)))
        return {s: self.maintenance[s] for s in service_ids if s in self.maintenance}

    def restart(self, node_id: str) -> None:
        """As a dev agent: back empty, with a new node ID."""
        self.node_id = node_id
        self.records.clear()
        self.registered.clear()
        self.checks.clear()
        self.check_service.clear()
        self.maintenance.clear()

    def writes(self) -> list[tuple[str, str]]:
        return [c for c in self.calls if c[0] in ("register", "deregister", "maintenance on", "maintenance off")]


def container(cid: str, name: str, *, ports: dict[str, str] | None = None, labels: dict[str, str] | None = None,
              running: bool = True, created: str = "2026-01-01T00:00:00.000000001Z", exit_code: int = 0,
              health: str = "", env: list[str] | None = None) -> dict[str, Any]:
    """A container's inspect data, as Docker gives it (the parts the mapping reads)."""
    state: dict[str, Any] = {"Running": running, "Paused": False, "ExitCode": exit_code}
    config: dict[str, Any] = {"Image": "team/web:1", "Labels": dict(labels or {}), "Env": list(env or [])}
    if health:
        state["Health"] = {"Status": health, "Log": [{"Output": "probe said " + health}]}
        config["Healthcheck"] = {"Test": ["CMD", "true"]}
    return {
        "Id": cid, "Name": "/" + name, "Created": created, "State": state, "Config": config,
        "HostConfig": {"NetworkMode": "default"},
        "NetworkSettings": {"Ports": {p: [{"HostIp": "0.0.0.0", "HostPort": h}] for p, h in (ports or {}).items()},
                            "Networks": {"bridge": {"IPAddress": "172.17.0.2"}}},
    }


class Lazy:
    """A Later made when its answer is asked for; counts its cancels."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.call, self.cancelled = call, 0

    def result(self) -> Any:
        return self.call()

    def cancel(self) -> None:
        self.cancelled += 1


class FakeDocker:
    def __init__(self) -> None:
        self.containers: dict[str, dict[str, Any]] = {}
        self.down = False
        self.broken: set[str] = set()  # inspecting these fails (Docker answers an error)
        self.inspects = 0
        self.lists = 0
        self.env_reader: Any = None  # what env-file requests go to (none: they are never answered)

    def add(self, data: dict[str, Any]) -> dict[str, Any]:
        self.containers[data["Id"]] = data
        return data

    def list_containers(self) -> list[dict[str, Any]]:
        self.lists += 1
        if self.down:
            raise DockerUnavailable("fake docker: down")
        return [{"Id": cid, "Names": [c["Name"]], "State": "running" if c["State"]["Running"] else "exited",
                 "Status": "Up 3 seconds", "Labels": c["Config"]["Labels"], "Ports": sorted(c["NetworkSettings"]["Ports"]),
                 "Revision": repr(c)}
                for cid, c in self.containers.items()]

    def inspect(self, container_id: str) -> dict[str, Any] | None:
        self.inspects += 1
        if self.down or container_id in self.broken:
            raise DockerUnavailable("fake docker: could not inspect a container")
        found = self.containers.get(container_id)
        return copy.deepcopy(found) if found is not None else None

    def inspect_later(self, container_id: str) -> Lazy:
        """Inspected when its answer is taken: a fake's early inspect sees what the test set up."""
        return Lazy(lambda: self.inspect(container_id))

    def request_env_file(self, container_id: str, path: str) -> None:
        if self.env_reader is not None:
            self.env_reader.request(container_id, path)

    def exec_in_container(self, container_id: str, command: str, timeout_seconds: float) -> tuple[int, str]:
        return 0, "ok"


class DrainGuarded:
    """The fake agent as most loop tests want the primary: writes unguarded (no
    read before each), drains through the guard's `ours_now`, as the daemon's."""

    def __init__(self, agent: FakeAgent, guard: Any) -> None:
        self.agent = agent
        self.guard = guard
        self.description = agent.description

    def services(self) -> dict[str, RegisteredService]:
        return self.agent.services()

    def check_owners(self) -> dict[str, str]:
        return self.agent.check_owners()

    def services_in_later(self, scope: ReadScope, wait: bool = True) -> Later[dict[str, RegisteredService]]:
        return self.agent.services_in_later(scope, wait)

    def register(self, service: Service) -> None:
        self.agent.register(service)

    def deregister(self, service: RegisteredService) -> None:
        self.agent.deregister(service)

    def checked_against(self, held: Holdings | None) -> RegistryWrites:
        return self  # no one else writes here: nothing to check

    def ours_now(self, service_ids: Collection[str], container_id: str) -> set[str]:
        return self.guard.ours_now(service_ids, container_id)

    def enable_maintenance(self, service_id: str, reason: str) -> None:
        self.agent.enable_maintenance(service_id, reason)

    def disable_maintenance(self, service_id: str) -> None:
        self.agent.disable_maintenance(service_id)

    def maintenance_reasons(self, service_ids: Collection[str]) -> dict[str, str]:
        return self.agent.maintenance_reasons(service_ids)


_MATCHES = re.compile(r'^(\w+) matches "(.*)"$')
_EQUALS = re.compile(r'(\w+) == "([^"]*)"')


def agent_filter(expression: str | None) -> Callable[[str], bool]:
    """The keys an agent's `?filter=` keeps, for the two forms the client sends:
    `<Selector> matches "<regex>"` and `<Selector> == "x" or <Selector> == "y"`."""
    if expression is None:
        return lambda key: True
    matches = _MATCHES.match(expression)
    if matches:
        pattern = re.compile(matches.group(2))  # Go's RE2 and Python agree on (?i)^(a|b[.]c)$
        return lambda key: pattern.search(key) is not None
    wanted = {value for _, value in _EQUALS.findall(expression)}
    return lambda key: key in wanted


class HttpAgent:
    """The agent's HTTP API as ConsulRegistry speaks to it (served by a StubAgent, tests/unit/stub_agent.py):
    services keyed by their exact ID, listings filtered as Consul filters them
    (`agent_filter`), a registration replacing its exact ID and, with a SidecarService,
    `<id>-sidecar-proxy` too; a deregistration removes the sidecar it wrote."""

    def __init__(self, records: dict[str, dict[str, Any]] | None = None) -> None:
        self.records: dict[str, dict[str, Any]] = dict(records or {})
        self.sidecars: set[str] = set()  # sidecar IDs written by a registration
        self.requests: list[str] = []

    def handler(self, request: Any) -> Any:
        import json
        import urllib.parse

        import httpx

        query = urllib.parse.parse_qs(request.url.query.decode())
        path = urllib.parse.unquote(request.url.path)
        self.requests.append(f"{request.method} {path}")
        if request.method == "GET" and path == "/v1/agent/services":
            keeps = agent_filter(query["filter"][0] if "filter" in query else None)
            return httpx.Response(200, json={sid: r for sid, r in self.records.items() if keeps(sid)})
        if request.method == "GET" and path == "/v1/agent/checks":
            return httpx.Response(200, json={})
        if request.method == "PUT" and path == "/v1/agent/service/register":
            body = json.loads(request.content)
            self.records[body["ID"]] = {"Service": body["Name"], "Meta": body.get("Meta") or {}}
            sidecar = (body.get("Connect") or {}).get("SidecarService")
            if sidecar is not None:
                self.records[body["ID"] + "-sidecar-proxy"] = {"Service": body["Name"] + "-sidecar-proxy",
                                                               "Meta": sidecar.get("Meta") or {}}
                self.sidecars.add(body["ID"] + "-sidecar-proxy")
            return httpx.Response(200, text="")
        if request.method == "PUT" and path.startswith("/v1/agent/service/deregister/"):
            service_id = path.rsplit("/", 1)[-1]
            self.records.pop(service_id, None)
            if service_id + "-sidecar-proxy" in self.sidecars:
                self.sidecars.discard(service_id + "-sidecar-proxy")
                self.records.pop(service_id + "-sidecar-proxy", None)
            return httpx.Response(200, text="")
        return httpx.Response(404, text="not found")

    def registry(self) -> Any:
        from consul_reg.consul.agent import ConsulRegistry
        from tests.unit.stub_agent import stub_client

        return ConsulRegistry(stub_client(self.handler))
