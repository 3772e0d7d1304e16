"""etcd v3 through its JSON gateway (httpx; base64 keys and values, no grpc).

Every key hangs on this daemon's own lease (TTL -ttl, else 5 minutes), kept
alive while it runs: keys vanish by themselves when the daemon is gone, and
the lease tells whose a key is. The lease's ID is also kept (on the lease
itself) at `/consul-reg/leases/<hostname><prefix>`, so a restarted daemon knows the
keys of its previous run as its own and moves them to its new lease.
Layout (registrator's, in the v3 keyspace):
`<prefix>/<service-name>/<service-id>` = `<ip>:<port>`.
"""

from __future__ import annotations

import base64
import time
from typing import Any, Callable

import httpx

from consul_reg.model import MARKER_DIGEST_KEY, instance_of, owner_meta
from consul_reg.model import RegisteredService, Service
from consul_reg.registries.base import RegistryError, RegistryUnavailable
from consul_reg.registries.keys import child_key, segment_problem

DEFAULT_LEASE_TTL = 300
LEASES_PREFIX = "/consul-reg/leases"


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
                 timeout: float = 5.0) -> None:
        self.base = f"http://{host}:{port}"
        self.http = httpx.Client(base_url=self.base, timeout=timeout)
        self.lease_ttl = lease_ttl
        self.refresh = refresh or lease_ttl / 3  # -ttl-refresh, else a third of the TTL
        self.lease_id = ""
        self.previous_leases: set[str] = set()  # leases of this daemon's earlier runs
        self.marker = marker  # where this daemon's lease ID is kept, on the lease
        self._next_keepalive = 0.0

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self.http.post(path, json=body)
        except httpx.HTTPError as error:
            raise RegistryUnavailable(f"etcd {self.base}: {type(error).__name__}: {error}") from None
        if response.status_code != 200:
            raise RegistryError(f"etcd {self.base}{path}: {response.status_code} {response.text[:300]}")
        try:
            return response.json()
        except ValueError:
            raise RegistryError(f"etcd {self.base}{path}: the answer is not JSON") from None

    def ensure_lease(self) -> bool:
        """Keep our lease alive; grant a new one when it is gone. True when it is new
        (every key must then be put again)."""
        now = time.monotonic()
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
        return max(0.0, self._next_keepalive - time.monotonic())

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

    def __init__(self, host: str, port: int, prefix: str, hostname: str, lease_ttl: int, refresh: float = 0.0) -> None:
        self.prefix = "/" + prefix.strip("/")
        owner_segment = hostname + (f":{instance_of(hostname)}" if instance_of(hostname) else "")
        self.etcd = EtcdV3(host, port, lease_ttl, child_key(LEASES_PREFIX, owner_segment) + self.prefix, refresh)
        self.hostname = hostname
        self.description = f"etcd {host}:{port}{self.prefix}"
        self.on_change: Callable[[], None] = lambda: None

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
        ours = {self.etcd.lease_id, *self.etcd.previous_leases}
        found = {}
        for key, value, lease in self.etcd.range_prefix(self.prefix + "/"):
            name, _, service_id = key[len(self.prefix) + 1:].partition("/")
            # This daemon's keys: on its leases, or of its default IDs (`<hostname>:`, which
            # no other host or container can take).
            owned = (lease != "" and lease in ours) or (service_id.startswith(self.hostname + ":")
                                                         and not instance_of(self.hostname))
            found[key] = RegisteredService(id=key, name=name, meta=self._meta(owned, f"{value}|lease={lease}"))
        return found

    def register(self, service: Service) -> None:
        self.etcd.put(self.key_of(service), self.value_of(service))

    def deregister(self, service: RegisteredService) -> None:
        self.etcd.delete(service.id)

    def remove_all(self) -> None:
        for key, service in self.services().items():
            if service.owned_by(self.hostname):
                self.etcd.delete(key)
        self.etcd.revoke_all()
        self.etcd.delete(self.etcd.marker)

    def close(self) -> None:
        self.etcd.close()

    def _meta(self, owned: bool, digest: str) -> dict[str, str]:
        if not owned:
            return {MARKER_DIGEST_KEY: digest}
        return {**owner_meta(self.hostname), MARKER_DIGEST_KEY: digest}
