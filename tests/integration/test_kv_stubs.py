"""The unit tests' stand-ins for Consul KV and etcd (tests/unit/kv_stubs.py) answer
as the real servers do: the same exchanges, replayed on the real Consul agent and
on a real etcd, give the same outcomes (check-and-set results, Flags, indexes
and revisions as the next exchange uses them, leases and etcd's refusals)."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.integration.conftest import CONSUL_ADDR
from tests.integration.servers import Etcd
from tests.unit.fakes import FakeClock
from tests.unit.kv_stubs import StubConsul, StubEtcd

Send = Callable[..., httpx.Response]


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def unb64(text: str | None) -> str:
    return base64.b64decode(text or "").decode()


# -- Consul KV -----------------------------------------------------------------------------


def consul_exchanges(send: Send, prefix: str) -> list[Any]:
    """What the mirror relies on, step by step; each outcome with the indexes made relative."""
    key = f"{prefix}/web/h:web:80"
    seen: list[Any] = []

    def entries(path: str, **params: str) -> Any:
        response = send("GET", path, params=params)
        if response.status_code != 200:
            return response.status_code
        return [(e["Key"], unb64(e["Value"]), e["Flags"]) for e in response.json()]

    def index() -> int:
        return send("GET", key).json()[0]["ModifyIndex"]

    seen.append(send("PUT", key, params={"flags": "5", "cas": "0"}, content=b"10.0.0.1:80").text)
    seen.append(send("PUT", key, params={"flags": "5", "cas": "0"}, content=b"10.0.0.2:80").text)
    seen.append(entries(key))
    first = index()
    seen.append(send("PUT", key, params={"flags": "6", "cas": str(first)}, content=b"10.0.0.3:80").text)
    second = index()
    seen.append(second > first)
    seen.append(send("PUT", key, params={"flags": "7", "cas": str(first)}, content=b"10.0.0.4:80").text)
    seen.append(send("DELETE", key, params={"cas": str(first)}).text)
    seen.append(entries(key))
    send("PUT", f"{prefix}/api/one", params={"flags": "0"}, content=b"")
    send("PUT", f"{prefix}2/web/other", params={"flags": "5"}, content=b"x")
    seen.append(entries(prefix, recurse="true"))
    seen.append(send("DELETE", key, params={"cas": str(second)}).text)
    seen.append(entries(key))
    seen.append(send("DELETE", key, params={"cas": str(second)}).text)  # gone already
    seen.append(send("PUT", key, params={"cas": "12345"}, content=b"x").text)  # absent, not at 0
    seen.append(entries(key))
    return seen


def test_the_consul_kv_stand_in_answers_as_the_agent() -> None:
    prefix = f"consul-reg-stub-check/{uuid.uuid4().hex[:8]}"
    real = httpx.Client(base_url=CONSUL_ADDR, timeout=10)
    stub = StubConsul()
    fake = httpx.Client(base_url=f"http://127.0.0.1:{stub.port}", timeout=10)
    try:
        def on(client: httpx.Client) -> Send:
            return lambda method, key, **kw: client.request(method, f"/v1/kv/{key}", **kw)
        from_agent = consul_exchanges(on(real), prefix)
        from_stub = consul_exchanges(on(fake), prefix)
    finally:
        for root in (prefix, prefix + "2"):
            real.delete(f"/v1/kv/{root}", params={"recurse": "true"})
        real.close()
        fake.close()
        stub.close()
    key = f"{prefix}/web/h:web:80"
    assert from_agent[:3] == ["true\n", "false\n", [(key, "10.0.0.1:80", 5)]]
    assert from_agent[5:8] == ["false\n", "false\n", [(key, "10.0.0.3:80", 6)]], "a stale index changes nothing"
    assert from_stub == from_agent


# -- etcd ----------------------------------------------------------------------------------


def etcd_exchanges(post: Callable[[str, dict[str, Any]], httpx.Response]) -> list[Any]:
    seen: list[Any] = []
    key, prefix = "/services/web/web-1", "/services/"

    def kvs(answer: dict[str, Any]) -> list[tuple[str, str, str]]:
        return [(unb64(kv["key"]), unb64(kv.get("value")), "on lease" if kv.get("lease") == lease else
                 kv.get("lease", "no lease")) for kv in answer.get("kvs") or []]

    def txn(revision: str, operation: dict[str, Any]) -> tuple[Any, ...]:
        answer = post("/v3/kv/txn", {
            "compare": [{"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": revision}],
            "success": [operation], "failure": [{"request_range": {"key": b64(key)}}]})
        if answer.status_code != 200:
            return answer.status_code, answer.json().get("error")
        body = answer.json()
        responses = body.get("responses") or [{}]
        return (body.get("succeeded", False), sorted(responses[0]),
                kvs(responses[0].get("response_range") or {}))

    def revision() -> str:
        return post("/v3/kv/range", {"key": b64(key)}).json()["kvs"][0]["mod_revision"]

    granted = post("/v3/lease/grant", {"TTL": 60}).json()
    lease = granted["ID"]
    seen.append(granted["TTL"])
    put = {"request_put": {"key": b64(key), "value": b64("10.0.0.1:80"), "lease": lease}}
    seen.append(txn("0", put))
    seen.append(txn("0", put))
    first = revision()
    seen.append(txn(first, {"request_put": {"key": b64(key), "value": b64("10.0.0.1:81"), "lease": lease}}))
    seen.append(kvs(post("/v3/kv/range", {"key": b64(key)}).json()))
    seen.append(txn(first, {"request_delete_range": {"key": b64(key)}}))
    unknown = str(int(lease) + 1000)
    seen.append(txn(revision(), {"request_put": {"key": b64(key), "value": b64("x"), "lease": unknown}}))
    refused = post("/v3/kv/put", {"key": b64(key), "value": b64("x"), "lease": unknown})
    seen.append((refused.status_code, refused.json().get("error")))
    post("/v3/kv/put", {"key": b64(prefix + "api/by-hand"), "value": b64("192.0.2.9:1")})
    post("/v3/kv/put", {"key": b64("/services2/web/x"), "value": b64("y"), "lease": lease})
    end = b64("/services0")
    seen.append(kvs(post("/v3/kv/range", {"key": b64(prefix), "range_end": end}).json()))
    seen.append(kvs(post("/v3/kv/range", {"key": b64(prefix), "range_end": end, "limit": 1}).json()))
    seen.append(post("/v3/lease/keepalive", {"ID": lease}).json()["result"].get("TTL"))
    seen.append(post("/v3/lease/revoke", {"ID": lease}).status_code)
    seen.append(post("/v3/lease/keepalive", {"ID": lease}).json()["result"].get("TTL"))
    seen.append(kvs(post("/v3/kv/range", {"key": b64("/"), "range_end": b64("0")}).json()))
    seen.append(txn(revision_or_zero(post, key), {"request_delete_range": {"key": b64(key)}}))
    revoked = post("/v3/lease/revoke", {"ID": lease})
    seen.append((revoked.status_code, revoked.json().get("error")))
    return seen


def revision_or_zero(post: Callable[[str, dict[str, Any]], httpx.Response], key: str) -> str:
    found = post("/v3/kv/range", {"key": b64(key)}).json().get("kvs") or []
    return found[0]["mod_revision"] if found else "0"


def test_the_etcd_stand_in_answers_as_etcd(tmp_path: Path) -> None:
    etcd = Etcd(tmp_path).start()
    stub = StubEtcd(FakeClock())
    fake = httpx.Client(base_url=f"http://127.0.0.1:{stub.port}", timeout=10)
    try:
        from_etcd = etcd_exchanges(lambda path, body: etcd.http.post(path, json=body))
        from_stub = etcd_exchanges(lambda path, body: fake.post(path, json=body))
    finally:
        etcd.kill()
        fake.close()
        stub.close()
    assert from_etcd[1] == (True, ["response_put"], [])
    assert from_etcd[2] == (False, ["response_range"], [("/services/web/web-1", "10.0.0.1:80", "on lease")])
    assert from_etcd[6] == (404, "etcdserver: requested lease not found")
    assert from_stub == from_etcd
