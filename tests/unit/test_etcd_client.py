"""The etcd v3 gateway client on the daemon's own transport (kept-alive pool):
JSON POSTs, and every failure mapped as before: no connection or no HTTP or an
answer past its bound is RegistryUnavailable, an error status or an answer that
is not JSON is a RegistryError naming the call. The compare-and-set and lease
logic runs against a real etcd in tests/integration/test_mirrors.py."""

from __future__ import annotations

import base64
import json
import socket

import httpx
import pytest

from consul_reg.core.errors import RegistryError, RegistryUnavailable
from consul_reg.mirrors import etcd as etcd_module
from consul_reg.mirrors.etcd import EtcdV3
from tests.unit.stub_agent import StubAgent


def gateway(answers: dict[str, httpx.Response]) -> tuple[StubAgent, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers[request.url.path]
    return StubAgent(handler), seen


def test_calls_are_json_posts_on_one_kept_alive_connection() -> None:
    value = base64.b64encode(b"10.0.0.1:80").decode()
    stub, seen = gateway({"/v3/kv/range": httpx.Response(200, json={"kvs": [{"value": value}]}),
                          "/v3/kv/put": httpx.Response(200, json={})})
    etcd = EtcdV3("127.0.0.1", stub.port, 300, "/consul-reg/leases/h")
    try:
        assert etcd.get("/services/web/h:web:80") == "10.0.0.1:80"
        etcd.put("/services/web/h:web:80", "10.0.0.2:80")
        assert etcd.get("/services/web/h:web:80") == "10.0.0.1:80"
    finally:
        etcd.close()
        stub.close()
    assert [(r.method, r.url.path, r.headers["content-type"]) for r in seen] == \
        [("POST", "/v3/kv/range", "application/json"), ("POST", "/v3/kv/put", "application/json")] + \
        [("POST", "/v3/kv/range", "application/json")]
    assert json.loads(seen[1].content) == {"key": base64.b64encode(b"/services/web/h:web:80").decode(),
                                          "value": base64.b64encode(b"10.0.0.2:80").decode(), "lease": ""}
    assert stub.connections == 1


def test_no_etcd_is_registry_unavailable() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
    etcd = EtcdV3("127.0.0.1", port, 300, "/m")  # nobody listens there any more
    with pytest.raises(RegistryUnavailable, match=rf"^etcd http://127.0.0.1:{port}: ConnectionRefusedError: "):
        etcd.get("/k")


@pytest.mark.parametrize("answer, kind, says", [
    (httpx.Response(500, text="etcdserver: too many requests"), RegistryError, "/v3/kv/range: 500 etcdserver"),
    (httpx.Response(200, text="<html>a proxy</html>"), RegistryError, "/v3/kv/range: the answer is not JSON"),
])
def test_an_error_answer_is_a_registry_error_naming_the_call(answer: httpx.Response, kind: type, says: str) -> None:
    stub, _ = gateway({"/v3/kv/range": answer})
    etcd = EtcdV3("127.0.0.1", stub.port, 300, "/m")
    try:
        with pytest.raises(kind, match=says) as refused:
            etcd.get("/k")
        assert not isinstance(refused.value, RegistryUnavailable)
    finally:
        etcd.close()
        stub.close()


def test_an_answer_past_its_bound_is_refused_unread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(etcd_module, "MAX_ANSWER_BYTES", 4096)
    stub, _ = gateway({"/v3/kv/range": httpx.Response(200, json={"kvs": [{"value": "x" * 5000}]})})
    etcd = EtcdV3("127.0.0.1", stub.port, 300, "/m")
    try:
        with pytest.raises(RegistryUnavailable, match="BodyTooLarge: .*over the limit of 4096 bytes"):
            etcd.range_prefix("/services/")
    finally:
        etcd.close()
        stub.close()
