"""In-memory stand-ins for the mirrors' servers, speaking their HTTP APIs on a
127.0.0.1 port of their own: Consul's KV (check-and-set on ModifyIndex, Flags)
and etcd's v3 JSON gateway (ranges, transactions on mod_revision, leases that
expire on a fake clock). The mirrors reach them through their real clients, so
a test holds whatever transport the client uses; only the semantics the
mirrors rely on are modelled, as Consul 1.8 and etcd 3.4 answer them
(tests/integration/test_kv_stubs.py replays the same exchanges on the real
servers).

`before` runs under the stub's lock ahead of each request, with the request:
a test makes "another host" act between the mirror's read and its write there.
"""

from __future__ import annotations

import base64
import json
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.unit.fakes import FakeClock


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # percent-decoded
    query: dict[str, str]
    body: bytes

    def json(self) -> dict[str, Any]:
        return json.loads(self.body or b"{}")


Answer = tuple[int, Any]  # status, JSON-able body (a str is sent as it is)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # kept alive, as the clients' pools expect
    disable_nagle_algorithm = True  # the head and the body go in two writes
    server: _Server

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        target = urllib.parse.urlsplit(self.path)
        request = Request(self.command, urllib.parse.unquote(target.path),
                          dict(urllib.parse.parse_qsl(target.query, keep_blank_values=True)), body)
        status, payload = self.server.stub.dispatch(request)
        data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, stub: Stub) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.stub = stub


class Stub:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.requests: list[Request] = []
        self.before: Callable[[Request], None] = lambda request: None
        self._server = _Server(self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name=type(self).__name__,
                                        daemon=True)
        self._thread.start()

    def dispatch(self, request: Request) -> Answer:
        with self.lock:
            self.requests.append(request)
            self.before(request)
            return self.handle(request)

    def handle(self, request: Request) -> Answer:
        raise NotImplementedError

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- Consul KV ----------------------------------------------------------------------------


@dataclass(frozen=True)
class KVEntry:
    value: bytes
    flags: int
    create_index: int
    modify_index: int


class StubConsul(Stub):
    """/v1/kv (GET with ?recurse, PUT with ?flags and ?cas, DELETE with ?cas) and
    /v1/agent/self (its NodeID)."""

    def __init__(self, node_id: str = "node-1") -> None:
        self.kv: dict[str, KVEntry] = {}
        self.index = 10
        self.node_id = node_id
        super().__init__()

    def write(self, key: str, value: str, flags: int = 0) -> int:
        """Write as another client would (no check-and-set); the new ModifyIndex."""
        with self.lock:
            self.index += 1
            old = self.kv.get(key)
            self.kv[key] = KVEntry(value.encode(), flags, old.create_index if old else self.index, self.index)
            return self.index

    def value(self, key: str) -> tuple[str, int] | None:
        entry = self.kv.get(key)
        return None if entry is None else (entry.value.decode(), entry.flags)

    def handle(self, request: Request) -> Answer:
        if request.path == "/v1/agent/self" and request.method == "GET":
            return 200, {"Config": {"NodeID": self.node_id, "NodeName": "stub"}}
        if not request.path.startswith("/v1/kv/"):
            return 404, "no such endpoint"
        key = request.path[len("/v1/kv/"):]
        if request.method == "GET":
            if "recurse" in request.query:
                found = [k for k in sorted(self.kv) if k.startswith(key)]
            else:
                found = [key] if key in self.kv else []
            if not found:
                return 404, ""
            return 200, [{"Key": k, "Value": _b64(self.kv[k].value) if self.kv[k].value else None,
                          "Flags": self.kv[k].flags, "LockIndex": 0, "CreateIndex": self.kv[k].create_index,
                          "ModifyIndex": self.kv[k].modify_index} for k in found]
        current = self.kv.get(key)
        cas = request.query.get("cas")
        if request.method == "PUT":
            if cas is not None and (int(cas) != (current.modify_index if current else 0)):
                return 200, "false\n"
            self.write(key, request.body.decode(), int(request.query.get("flags") or 0))
            return 200, "true\n"
        if request.method == "DELETE":
            if cas is not None and current is not None and int(cas) != current.modify_index:  # absent: "true"
                return 200, "false\n"
            self.kv.pop(key, None)
            self.index += 1
            return 200, "true\n"
        return 405, "method not allowed"


# -- etcd v3 JSON gateway -----------------------------------------------------------------


@dataclass(frozen=True)
class EtcdKV:
    value: bytes
    lease: int  # 0: on no lease
    create_revision: int
    mod_revision: int
    version: int


@dataclass
class Lease:
    ttl: int
    expires_at: float
    keys: set[bytes] = field(default_factory=set)


class StubEtcd(Stub):
    """/v3/kv/{range,put,deleterange,txn} and /v3/lease/{grant,keepalive,revoke}.
    Leases expire on `clock`, taking their keys with them."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.kvs: dict[bytes, EtcdKV] = {}
        self.leases: dict[int, Lease] = {}
        self.revision = 1
        self._next_lease = 7587000000000000000
        super().__init__()

    # -- what a test does directly ---------------------------------------------------

    def grant(self, ttl: int) -> int:
        with self.lock:
            self._next_lease += 1
            self.leases[self._next_lease] = Lease(ttl, self.clock() + ttl)
            return self._next_lease

    def put(self, key: str, value: str, lease: int = 0) -> int:
        """Write as another client would; the key's new mod_revision."""
        with self.lock:
            self._expire()
            self._put(key.encode(), value.encode(), lease)
            return self.revision

    def revoke(self, lease: int) -> None:
        with self.lock:
            self._drop_lease(lease)

    def keys(self, prefix: str = "") -> dict[str, tuple[str, int]]:
        """key -> (value, lease) of every live key under prefix."""
        with self.lock:
            self._expire()
            return {k.decode(): (kv.value.decode(), kv.lease) for k, kv in sorted(self.kvs.items())
                    if k.startswith(prefix.encode())}

    def paths(self) -> list[str]:
        return [request.path for request in self.requests]

    # -- the gateway ------------------------------------------------------------------

    def handle(self, request: Request) -> Answer:
        if request.method != "POST":
            return 405, {"error": "method not allowed", "code": 12}
        self._expire()
        body = request.json()
        header = {"revision": str(self.revision)}
        if request.path == "/v3/lease/grant":
            lease = self.grant(int(body["TTL"]))
            return 200, {"header": header, "ID": str(lease), "TTL": str(body["TTL"])}
        if request.path == "/v3/lease/keepalive":
            lease_id = int(body["ID"])
            lease = self.leases.get(lease_id)
            if lease is None:  # etcd 3.4: an answer without TTL
                return 200, {"result": {"header": header, "ID": str(lease_id)}}
            lease.expires_at = self.clock() + lease.ttl
            return 200, {"result": {"header": header, "ID": str(lease_id), "TTL": str(lease.ttl)}}
        if request.path == "/v3/lease/revoke":
            if int(body["ID"]) not in self.leases:
                return _lease_not_found()
            self._drop_lease(int(body["ID"]))
            return 200, {"header": header}
        if request.path == "/v3/kv/range":
            return 200, self._range(body)
        if request.path == "/v3/kv/put":
            problem = self._lease_problem(body)
            if problem:
                return problem
            self._put(_key(body), base64.b64decode(body.get("value", "")), int(body.get("lease") or 0))
            return 200, {"header": {"revision": str(self.revision)}}
        if request.path == "/v3/kv/deleterange":
            self._delete(body)
            return 200, {"header": {"revision": str(self.revision)}}
        if request.path == "/v3/kv/txn":
            return self._txn(body)
        return 404, {"error": "Not Found", "code": 5}

    def _txn(self, body: dict[str, Any]) -> Answer:
        succeeded = True
        for compare in body.get("compare") or []:
            if compare.get("target") != "MOD" or compare.get("result") != "EQUAL":
                return 400, {"error": f"stub: unsupported compare {compare}", "code": 3}
            kv = self.kvs.get(_key(compare))
            succeeded = succeeded and (kv.mod_revision if kv else 0) == int(compare.get("mod_revision") or 0)
        operations = body.get("success" if succeeded else "failure") or []
        for operation in operations:
            put = operation.get("request_put")
            problem = self._lease_problem(put) if put is not None else None
            if problem:
                return problem  # etcd refuses the whole transaction
        responses: list[dict[str, Any]] = []
        for operation in operations:
            if "request_put" in operation:
                put = operation["request_put"]
                self._put(_key(put), base64.b64decode(put.get("value", "")), int(put.get("lease") or 0))
                responses.append({"response_put": {"header": {"revision": str(self.revision)}}})
            elif "request_delete_range" in operation:
                deleted = self._delete(operation["request_delete_range"])
                responses.append({"response_delete_range": {"header": {}, "deleted": str(deleted)}})
            elif "request_range" in operation:
                responses.append({"response_range": self._range(operation["request_range"])})
            else:
                return 400, {"error": f"stub: unsupported operation {operation}", "code": 3}
        answer: dict[str, Any] = {"header": {"revision": str(self.revision)}, "responses": responses}
        if succeeded:
            answer["succeeded"] = True  # etcd leaves out a false
        return 200, answer

    def _range(self, body: dict[str, Any]) -> dict[str, Any]:
        found = self._matching(body)
        limit = int(body.get("limit") or 0)
        shown = found[:limit] if limit else found
        answer: dict[str, Any] = {"header": {"revision": str(self.revision)}}
        if shown:
            answer["kvs"] = [_kv_json(key, self.kvs[key]) for key in shown]
            answer["count"] = str(len(found))
        return answer

    def _matching(self, body: dict[str, Any]) -> list[bytes]:
        start = _key(body)
        if not body.get("range_end"):
            return [start] if start in self.kvs else []
        end = base64.b64decode(body["range_end"])
        return sorted(k for k in self.kvs if start <= k < end)

    def _lease_problem(self, put: dict[str, Any]) -> Answer | None:
        lease = put.get("lease")
        if lease == "":
            return 400, {"error": "unexpected end of JSON input", "code": 3}
        if lease is not None and int(lease) != 0 and int(lease) not in self.leases:
            return _lease_not_found()
        return None

    def _put(self, key: bytes, value: bytes, lease: int) -> None:
        self.revision += 1
        old = self.kvs.get(key)
        if old is not None and old.lease in self.leases:
            self.leases[old.lease].keys.discard(key)
        self.kvs[key] = EtcdKV(value, lease, old.create_revision if old else self.revision, self.revision,
                               old.version + 1 if old else 1)
        if lease:
            self.leases[lease].keys.add(key)

    def _delete(self, body: dict[str, Any]) -> int:
        keys = self._matching(body)
        if keys:
            self.revision += 1
        for key in keys:
            kv = self.kvs.pop(key)
            if kv.lease in self.leases:
                self.leases[kv.lease].keys.discard(key)
        return len(keys)

    def _drop_lease(self, lease_id: int) -> None:
        lease = self.leases.pop(lease_id, None)
        if lease is not None and lease.keys:
            self.revision += 1
            for key in lease.keys:
                self.kvs.pop(key, None)

    def _expire(self) -> None:
        for lease_id, lease in list(self.leases.items()):
            if lease.expires_at <= self.clock():
                self._drop_lease(lease_id)


def _key(body: dict[str, Any]) -> bytes:
    return base64.b64decode(body.get("key", ""))


def _kv_json(key: bytes, kv: EtcdKV) -> dict[str, Any]:
    shown: dict[str, Any] = {"key": _b64(key), "create_revision": str(kv.create_revision),
                             "mod_revision": str(kv.mod_revision), "version": str(kv.version)}
    if kv.value:
        shown["value"] = _b64(kv.value)
    if kv.lease:
        shown["lease"] = str(kv.lease)
    return shown


def _lease_not_found() -> Answer:
    return 404, {"error": "etcdserver: requested lease not found",
                 "message": "etcdserver: requested lease not found", "code": 5}
