"""etcd v3 through its JSON gateway (base64 keys and values, no grpc), on the
daemon's own transport: kept-alive connections, each call within its timeout,
each answer bounded (MAX_ANSWER_BYTES).

Every key hangs on this daemon's own lease (TTL -ttl, else 5 minutes), kept
alive while it runs: keys vanish by themselves when the daemon is gone, and
the lease tells whose a key is. The lease's ID is also kept (on the lease
itself) at `/consul-reg/leases/<hostname><prefix>`, so a restarted daemon knows the
keys of its previous run as its own and moves them to its new lease.
Layout (registrator's, in the v3 keyspace):
`<prefix>/<service-name>/<service-id>` = `<ip>:<port>`.

A key is written or removed only in a transaction that compares its
mod_revision with the one its owner was read at: a key another host's daemon
took in between (on its own lease) is never written over or removed.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from consul_reg.core.backoff import Clock
from consul_reg.core.errors import RegistryError, RegistryNotOurs, RegistryUnavailable
from consul_reg.core.records import MARKER_DIGEST_KEY, Owner, RegisteredService, Service, as_owner, owner_meta
from consul_reg.mirrors.keys import HOLDER_KEY, child_key, default_id_owned, segment_problem, shown
from consul_reg.transport.pool import TRANSPORT_ERRORS, ConnectionPool

DEFAULT_LEASE_TTL = 300
LEASES_PREFIX = "/consul-reg/leases"
SWAP_TRIES = 3  # as new, then at the revision read (twice): a key that changes at each is left
MAX_LEASE_MARKERS = 1000  # read to name the host holding a contested key's lease
LEASE_NOT_FOUND = "requested lease not found"  # etcd's refusal of a put on a lease it does not hold
# A range of every key under the prefix is the largest answer: ~100 bytes a key, and
# etcd's own default request limit is 1.5 MiB a value. An answer past this is refused.
MAX_ANSWER_BYTES = 64 * 1024 * 1024
_JSON = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class EtcdEntry:
    value: str
    lease: str  # "" when on no lease
    mod_revision: int


def _entry(kv: dict[str, Any]) -> EtcdEntry:
    return EtcdEntry(_unb64(kv.get("value", "")), str(kv.get("lease") or ""), int(kv.get("mod_revision") or 0))


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode("utf-8", "replace")


def _prefix_end(prefix: str) -> str:
    """etcd's range_end for "every key starting with prefix"."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return base64.b64encode(bytes(raw)).decode()


class EtcdV3:
    """The few v3 gateway calls the mirrors need, plus this daemon's lease."""

    def __init__(self, host: str, port: int, lease_ttl: int, marker: str, refresh: float = 0.0,
                 timeout: float = 5.0, clock: Clock = time.monotonic) -> None:
        self.base = f"http://{host}:{port}"
        # One caller, the mirror's worker thread: one kept-alive connection in use at a time.
        self.http = ConnectionPool(host=host, port=port, max_connections=2, timeout=timeout,
                                   max_body=MAX_ANSWER_BYTES)
        self.lease_ttl = lease_ttl
        self.refresh = refresh or lease_ttl / 3  # -ttl-refresh, else a third of the TTL
        self.lease_id = ""
        self.previous_leases: set[str] = set()  # leases of this daemon's earlier runs
        self.marker = marker  # where this daemon's lease ID is kept, on the lease
        self._next_keepalive = 0.0
        self._clock = clock

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self.http.request("POST", path, json.dumps(body).encode(), _JSON)
        except TRANSPORT_ERRORS as error:  # no connection, no HTTP, past the timeout, an answer over the bound
            raise RegistryUnavailable(f"etcd {self.base}: {type(error).__name__}: {error}") from None
        if response.status_code != 200:
            if LEASE_NOT_FOUND in response.text:  # lost between two keep-alives: replaced at the next step
                self._next_keepalive = 0.0
            raise RegistryError(f"etcd {self.base}{path}: {response.status_code} {response.text[:300]}")
        try:
            return response.json()
        except ValueError:
            raise RegistryError(f"etcd {self.base}{path}: the answer is not JSON") from None

    def ensure_lease(self) -> bool:
        """Keep our lease alive; grant a new one when it is gone. True when it is new
        (every key must then be put again)."""
        now = self._clock()
        if self.lease_id and now < self._next_keepalive:
            return False
        if self.lease_id:
            answer = self.call("/v3/lease/keepalive", {"ID": self.lease_id})
            if int((answer.get("result") or {}).get("TTL") or 0) > 0:
                self._next_keepalive = now + self.refresh
                return False
            self.previous_leases.discard(self.lease_id)
        else:
            previous = self.get(self.marker)
            if previous:
                self.previous_leases.add(previous)
        granted = self.call("/v3/lease/grant", {"TTL": self.lease_ttl})
        self.lease_id = str(granted["ID"])
        self.put(self.marker, self.lease_id)
        self._next_keepalive = now + self.refresh
        return True

    def seconds_until_keepalive(self) -> float:
        return max(0.0, self._next_keepalive - self._clock())

    def get(self, key: str) -> str | None:
        answer = self.call("/v3/kv/range", {"key": _b64(key)})
        kvs = answer.get("kvs") or []
        return _unb64(kvs[0].get("value", "")) if kvs else None

    def range_prefix(self, prefix: str) -> list[tuple[str, str, str]]:
        """(key, value, lease ID) of every key under prefix."""
        answer = self.call("/v3/kv/range", {"key": _b64(prefix), "range_end": _prefix_end(prefix)})
        return [(_unb64(kv["key"]), _unb64(kv.get("value", "")), str(kv.get("lease") or ""))
                for kv in answer.get("kvs") or []]

    def put(self, key: str, value: str) -> None:
        self.call("/v3/kv/put", {"key": _b64(key), "value": _b64(value), "lease": self.lease_id})

    def entry(self, key: str) -> EtcdEntry | None:
        kvs = self.call("/v3/kv/range", {"key": _b64(key)}).get("kvs") or []
        return _entry(kvs[0]) if kvs else None

    def swap(self, key: str, revision: int, request: dict[str, Any]) -> tuple[bool, EtcdEntry | None]:
        """Run `request` (request_put / request_delete_range) only while the key's
        mod_revision is `revision` (0: the key does not exist). Else (False, the
        key as it is now)."""
        answer = self.call("/v3/kv/txn", {
            "compare": [{"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(revision)}],
            "success": [request],
            "failure": [{"request_range": {"key": _b64(key)}}],
        })
        if answer.get("succeeded"):
            return True, None
        responses = answer.get("responses") or [{}]
        kvs = (responses[0].get("response_range") or {}).get("kvs") or []
        return False, (_entry(kvs[0]) if kvs else None)

    def put_request(self, key: str, value: str) -> dict[str, Any]:
        return {"request_put": {"key": _b64(key), "value": _b64(value), "lease": self.lease_id}}

    @staticmethod
    def delete_request(key: str) -> dict[str, Any]:
        return {"request_delete_range": {"key": _b64(key)}}

    def lease_holder(self, lease: str) -> str:
        """The owner segment (host, host:instance) whose lease marker names `lease`, or ""."""
        prefix = LEASES_PREFIX + "/"
        answer = self.call("/v3/kv/range", {"key": _b64(prefix), "range_end": _prefix_end(prefix),
                                            "limit": MAX_LEASE_MARKERS})
        for kv in answer.get("kvs") or []:
            if _unb64(kv.get("value", "")) == lease:
                return _unb64(kv["key"])[len(prefix):].partition("/")[0]
        return ""

    def delete(self, key: str) -> None:
        self.call("/v3/kv/deleterange", {"key": _b64(key)})

    def revoke_all(self) -> None:
        """Revoke this daemon's leases: etcd deletes every key on them at once."""
        for lease in {self.lease_id, *self.previous_leases} - {""}:
            self.call("/v3/lease/revoke", {"ID": lease})
        self.lease_id = ""
        self.previous_leases.clear()

    def close(self) -> None:
        self.http.close()


class EtcdRegistry:
    """`<prefix>/<service-name>/<service-id>` = `<ip>:<port>` on this daemon's lease."""

    replaceable = False

    def __init__(self, host: str, port: int, prefix: str, hostname: Owner | str, lease_ttl: int,
                 refresh: float = 0.0, clock: Clock = time.monotonic) -> None:
        self.prefix = "/" + prefix.strip("/")
        owner = as_owner(hostname)
        owner_segment = owner.host + (f":{owner.instance}" if owner.instance else "")
        self.etcd = EtcdV3(host, port, lease_ttl, child_key(LEASES_PREFIX, owner_segment) + self.prefix, refresh,
                           clock=clock)
        self.hostname = owner
        self.description = f"etcd {host}:{port}{self.prefix}"
        self.on_change: Callable[[], None] = lambda: None

    def listen(self, on_change: Callable[[], None]) -> None:
        """`on_change` is called when this registry's state was lost (its worker relists)."""
        self.on_change = on_change

    def identity(self) -> str:
        return ""  # never replaced under us: its state loss comes through `maintain` and `listen`

    def key_of(self, service: Service) -> str:
        return child_key(self.prefix, service.name, service.id)

    def accepts(self, service: Service) -> str:
        """Empty when the service can be written here, else why not."""
        return segment_problem(service.name) or segment_problem(service.id)

    def value_of(self, service: Service) -> str:
        return f"{service.address}:{service.port}" if service.port is not None else service.address

    def digest_of(self, service: Service) -> str:
        return f"{self.value_of(service)}|lease={self.etcd.lease_id}"

    def maintain(self) -> bool:
        """Keep the lease alive; True when a new lease means everything must be put again."""
        return self.etcd.ensure_lease()

    def seconds_until_maintenance(self) -> float:
        return self.etcd.seconds_until_keepalive()

    def services(self) -> dict[str, RegisteredService]:
        self.etcd.ensure_lease()
        found = {}
        for key, value, lease in self.etcd.range_prefix(self.prefix + "/"):
            name = key[len(self.prefix) + 1:].partition("/")[0]
            meta = {MARKER_DIGEST_KEY: f"{value}|lease={lease}"}
            if self._owns(key, lease):
                meta.update(owner_meta(self.hostname))
            else:
                meta[HOLDER_KEY] = f"etcd lease {lease}" if lease else "a key on no lease (not consul-reg's)"
            found[key] = RegisteredService(id=key, name=name, meta=meta)
        return found

    def register(self, service: Service) -> None:
        key = self.key_of(service)
        request = self.etcd.put_request(key, self.value_of(service))
        revision = 0  # first as a new key: one request in the usual case
        for _ in range(SWAP_TRIES):
            done, current = self.etcd.swap(key, revision, request)
            if done:
                return
            if current is not None and not self._owns(key, current.lease):
                raise RegistryNotOurs(f"{key} is held by {self.holder_of(current)}: left as it is")
            revision = 0 if current is None else current.mod_revision
        raise RegistryNotOurs(f"{key} changed under this daemon at each of {SWAP_TRIES} tries: left as it is")

    def deregister(self, service: RegisteredService) -> None:
        current = self.etcd.entry(service.id)
        for _ in range(SWAP_TRIES):
            if current is None:
                return
            if not self._owns(service.id, current.lease):
                raise RegistryNotOurs(f"{service.id} is now held by {self.holder_of(current)}: not removed")
            done, current = self.etcd.swap(service.id, current.mod_revision, self.etcd.delete_request(service.id))
            if done:
                return
        raise RegistryNotOurs(f"{service.id} changed under this daemon at each of {SWAP_TRIES} tries: not removed")

    def remove_all(self) -> None:
        for service in self.services().values():
            if service.owned_by(self.hostname):
                self.deregister(service)
        self.etcd.revoke_all()
        self.etcd.delete(self.etcd.marker)

    def holder_of(self, entry: EtcdEntry) -> str:
        """Who holds a key that is not ours, for one warning (one extra read)."""
        if not entry.lease:
            return f"a key on no lease, not consul-reg's (value {shown(entry.value)})"
        host = self.etcd.lease_holder(entry.lease)
        who = f"host {shown(host)}'s consul-reg" if host else "another daemon"
        return f"{who} (etcd lease {entry.lease}, value {shown(entry.value)})"

    def _owns(self, key: str, lease: str) -> bool:
        """On this daemon's lease (or an earlier run's), or one of its default IDs."""
        service_id = key[len(self.prefix) + 1:].partition("/")[2]
        ours = {self.etcd.lease_id, *self.etcd.previous_leases}
        return (lease != "" and lease in ours) or default_id_owned(service_id, self.hostname)

    def close(self) -> None:
        self.etcd.close()
