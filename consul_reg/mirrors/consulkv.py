"""Consul KV, registrator's layout: `<prefix>/<service-name>/<service-id>` = `<ip>:<port>`.
Through the project's one Consul client. Each key this daemon writes carries
its host's owner tag in the entry's Flags (opaque to Consul and to readers of
the layout); only such keys are ever written over or removed (and keys of
this host's default IDs, which no container may choose, are written over
whoever wrote them), and each write or removal is a check-and-set on the index
the owner was read at, so another host's daemon that took the key in between
is never written over."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass

from consul_reg.consul.agent import ConsulClient, ConsulKV
from consul_reg.core.errors import RegistryNotFound, RegistryNotOurs
from consul_reg.core.records import MARKER_DIGEST_KEY, RegisteredService, Service, owner_meta
from consul_reg.mirrors.keys import HOLDER_KEY, child_key, default_id_owned, owner_tag, segment_problem, shown

CAS_TRIES = 2  # a key that changes under every try is left to the next step


@dataclass(frozen=True)
class _Entry:
    value: str
    flags: int
    index: int  # ModifyIndex: the check-and-set token


class ConsulKVRegistry:
    replaceable = True

    def __init__(self, client: ConsulClient, prefix: str, hostname: str) -> None:
        self._kv = ConsulKV(client)
        self._client = client
        self.prefix = prefix.strip("/")
        self.hostname = hostname
        self.flags = owner_tag(hostname)
        self.description = f"consulkv {client.endpoint}/{self.prefix}"
        self.on_change: Callable[[], None] = lambda: None

    def listen(self, on_change: Callable[[], None]) -> None:
        """`on_change` is called when this registry's state was lost (its worker relists)."""
        self.on_change = on_change

    def key_of(self, service: Service) -> str:
        return child_key(self.prefix, service.name, service.id)

    def accepts(self, service: Service) -> str:
        return segment_problem(service.name) or segment_problem(service.id)

    def digest_of(self, service: Service) -> str:
        return f"{service.address}:{service.port}" if service.port is not None else service.address

    def maintain(self) -> bool:
        return False

    def seconds_until_maintenance(self) -> float:
        return 3600.0

    def identity(self) -> str:
        """The agent's node ID: a new one means an agent that came back empty.
        (Watching the prefix itself would wake every host's daemon at any host's
        change: thousands of full reads a second on a large fleet.)"""
        info = self._client.json("GET", ("agent", "self"), "read the agent's own information") or {}
        return str((info.get("Config") or {}).get("NodeID") or "")

    def services(self) -> dict[str, RegisteredService]:
        found = {}
        for key, (value, flags) in self._kv.items(self.prefix).items():
            if not key.startswith(self.prefix + "/"):
                continue  # "services2/..." shares the text prefix, not the folder
            name = key[len(self.prefix) + 1:].partition("/")[0]
            meta = {MARKER_DIGEST_KEY: value}
            if self._owns(key, flags):
                meta.update(owner_meta(self.hostname))
            elif self._takes_back(key):
                continue  # listed as absent: written over when wanted, never removed
            else:
                meta[HOLDER_KEY] = self._holder(flags, value)
            found[key] = RegisteredService(id=key, name=name, meta=meta)
        return found

    def register(self, service: Service) -> None:
        key = self.key_of(service)
        body = self.digest_of(service).encode()
        for _ in range(CAS_TRIES):
            current = self._entry(key)
            if current is not None and not self._owns(key, current.flags) and not self._takes_back(key):
                raise RegistryNotOurs(f"{key} is held by {self._holder(current.flags, current.value)}: "
                                      "left as it is")
            index = 0 if current is None else current.index  # 0: only if the key does not exist
            if self._swapped("PUT", key, {"flags": str(self.flags), "cas": str(index)}, body):
                return
        raise RegistryNotOurs(f"{key} changed under this daemon at each of {CAS_TRIES} tries: left as it is")

    def deregister(self, service: RegisteredService) -> None:
        for _ in range(CAS_TRIES):
            current = self._entry(service.id)
            if current is None:
                return
            if not self._owns(service.id, current.flags):
                raise RegistryNotOurs(f"{service.id} is now held by {self._holder(current.flags, current.value)}: "
                                      "not removed")
            if self._swapped("DELETE", service.id, {"cas": str(current.index)}, None):
                return
        raise RegistryNotOurs(f"{service.id} changed under this daemon at each of {CAS_TRIES} tries: not removed")

    def remove_all(self) -> None:
        for service in self.services().values():
            if service.owned_by(self.hostname):
                self.deregister(service)

    def _owns(self, key: str, flags: int) -> bool:
        return flags == self.flags or (flags == 0 and self._takes_back(key))

    def _takes_back(self, key: str) -> bool:
        """One of this host's default IDs, whoever wrote it: no container may choose one,
        so another writer took it (an older consul-reg of another host, by hand). The
        rightful host writes over it when it wants it, as in etcd; it never removes one
        it did not write (another --instance of this host may hold it)."""
        return default_id_owned(key[len(self.prefix) + 1:].partition("/")[2], self.hostname)

    @staticmethod
    def _holder(flags: int, value: str) -> str:
        if flags == 0:
            return f"a writer other than consul-reg (Flags 0, value {shown(value)})"
        return f"another host's consul-reg (owner tag {flags}, value {shown(value)})"

    def _entry(self, key: str) -> _Entry | None:
        try:
            entries = self._client.json("GET", ("kv", *key.split("/")), f"read KV {key}")
        except RegistryNotFound:
            return None
        for entry in entries or []:
            if isinstance(entry, dict) and entry.get("Key") == key:
                value = base64.b64decode(entry.get("Value") or "").decode("utf-8", "replace")
                return _Entry(value, int(entry.get("Flags") or 0), int(entry.get("ModifyIndex") or 0))
        return None

    def _swapped(self, method: str, key: str, params: dict[str, str], body: bytes | None) -> bool:
        """A check-and-set write or delete; False when the key changed since it was read."""
        what = f"{'write' if method == 'PUT' else 'delete'} KV {key}"
        response = self._client.call(method, ("kv", *key.split("/")), what, params=params, body=body)
        return response.text.strip() == "true"

    def set_token(self, token: str | None) -> None:
        self._client.set_token(token)

    def close(self) -> None:
        self._client.close()
