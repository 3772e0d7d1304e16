"""Consul KV, registrator's layout: `<prefix>/<service-name>/<service-id>` = `<ip>:<port>`.
Through the project's one Consul client. Each key this daemon writes carries
its host's owner tag in the entry's Flags (opaque to Consul and to readers of
the layout); only such keys are ever written over or removed."""

from __future__ import annotations

from typing import Callable

from consul_reg.model import MARKER_DIGEST_KEY, instance_of, owner_meta
from consul_reg.model import RegisteredService, Service
from consul_reg.registries.consul import ConsulClient, ConsulKV
from consul_reg.registries.keys import child_key, owner_tag, segment_problem


class ConsulKVRegistry:
    def __init__(self, client: ConsulClient, prefix: str, hostname: str) -> None:
        self._kv = ConsulKV(client)
        self._client = client
        self.prefix = prefix.strip("/")
        self.hostname = hostname
        self.flags = owner_tag(hostname)
        self.description = f"consulkv {client.endpoint}/{self.prefix}"
        self.on_change: Callable[[], None] = lambda: None

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
            name, _, service_id = key[len(self.prefix) + 1:].partition("/")
            meta = {MARKER_DIGEST_KEY: value}
            # Keys of consul-reg before owner tags: this host's default IDs.
            if flags == self.flags or (flags == 0 and service_id.startswith(self.hostname + ":")
                                       and not instance_of(self.hostname)):
                meta.update(owner_meta(self.hostname))
            found[key] = RegisteredService(id=key, name=name, meta=meta)
        return found

    def register(self, service: Service) -> None:
        self._kv.put(self.key_of(service), self.digest_of(service), self.flags)

    def deregister(self, service: RegisteredService) -> None:
        self._kv.delete(service.id)

    def remove_all(self) -> None:
        for key, service in self.services().items():
            if service.owned_by(self.hostname):
                self._kv.delete(key)

    def set_token(self, token: str | None) -> None:
        self._client.set_token(token)

    def close(self) -> None:
        self._client.close()
