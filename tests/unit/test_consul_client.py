"""The one Consul client: every path segment stays a segment, whatever a
container wrote; errors are mapped once; the token never reaches a message."""

from __future__ import annotations

import threading

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consul_reg.core.records import RegisteredService, Service
from consul_reg.core.errors import (RegistryError, RegistryNotFound, RegistryPermissionDenied,
                                        RegistryScriptsRefused, RegistryUnavailable)
from consul_reg.consul.agent import ConsulRegistry
from tests.unit.stub_agent import stub_client

TOKEN = "s3cr3t-token-value"


def recording(status: int = 200, body: str = "true") -> tuple[ConsulRegistry, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, text=body)

    client = stub_client(handler, token=TOKEN)
    return ConsulRegistry(client), seen


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=60))
def test_no_id_ever_leaves_its_path_segment(service_id: str) -> None:
    registry, seen = recording()
    try:
        registry.deregister(RegisteredService(service_id, "x"))
        registry.enable_maintenance(service_id, "r")
        registry.update_check(f"service:{service_id}:heartbeat", "passing", "ok")
    except RegistryError as error:
        assert "unsafe path segment" in str(error) and service_id in ("", ".", "..")
        return
    paths = [request.url.raw_path.decode().split("?")[0] for request in seen]
    assert paths[0].startswith("/v1/agent/service/deregister/") and paths[0].count("/") == 5
    assert paths[1].startswith("/v1/agent/service/maintenance/") and paths[1].count("/") == 5
    assert paths[2].startswith("/v1/agent/check/update/") and paths[2].count("/") == 5
    assert all(segment not in (".", "..") for path in paths for segment in path.split("/"))


@pytest.mark.parametrize("service_id", ["../../leave", "../../maintenance", "x/../payments", "..", "a\nb"])
def test_traversal_ids_stay_inside_the_deregister_path(service_id: str) -> None:
    registry, seen = recording()
    try:
        registry.deregister(RegisteredService(service_id, "x"))
    except RegistryError:
        assert service_id == ".."
        return
    assert seen[0].url.raw_path.decode().startswith("/v1/agent/service/deregister/")
    assert seen[0].url.raw_path.decode().count("/") == 5


def test_errors_are_mapped_once_and_never_hold_the_token() -> None:
    for status, body, kind in ((403, "Permission denied", RegistryPermissionDenied),
                               (400, "Scripts are disabled on this agent", RegistryScriptsRefused),
                               (404, "Unknown check", RegistryNotFound),
                               (500, 'CheckID "x" does not have associated TTL', RegistryNotFound),
                               (500, "boom", RegistryError)):
        registry, _ = recording(status, body)
        with pytest.raises(kind) as caught:
            registry.update_check("c", "passing", "")
        assert TOKEN not in str(caught.value)

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    told: list[str] = []
    client = stub_client(refuse, token=TOKEN, on_unreachable=told.append)
    with pytest.raises(RegistryUnavailable) as caught:
        ConsulRegistry(client).services()
    assert TOKEN not in str(caught.value) and told and TOKEN not in told[0]


def test_the_token_is_swapped_atomically_for_every_later_request() -> None:
    registry, seen = recording()
    registry.register(Service(id="a", name="a", address="1.2.3.4", port=1))
    registry.set_token("new-token")
    registry.register(Service(id="a", name="a", address="1.2.3.4", port=1))
    registry.set_token(None)
    registry.register(Service(id="a", name="a", address="1.2.3.4", port=1))
    assert [r.headers.get("X-Consul-Token") for r in seen] == [TOKEN, "new-token", None]


def test_concurrent_requests_with_a_token_rotation_never_mix_headers() -> None:
    tokens: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        tokens.append(request.headers.get("X-Consul-Token"))
        return httpx.Response(200, text="true")

    client = stub_client(handler, token="a" * 20)
    registry = ConsulRegistry(client)

    def send() -> None:
        for _ in range(200):
            registry.update_check("c", "passing", "")

    senders = [threading.Thread(target=send) for _ in range(4)]
    for sender in senders:
        sender.start()
    for n in range(200):
        registry.set_token(("a" if n % 2 else "b") * 20)
    for sender in senders:
        sender.join()
    assert set(tokens) <= {"a" * 20, "b" * 20}
