"""Consul KV, registrator's layout: `<prefix>/<service-name>/<service-id>` = `<ip>:<port>`.
Through the project's one Consul client. Keys of this host are those whose
service ID starts with `<hostname>:`; nothing else is ever removed."""

from __future__ import annotations

from consul_reg.model import MARKER_DIGEST_KEY, MARKER_HOST_KEY, MARKER_SOURCE_KEY, MARKER_SOURCE_VALUE
from consul_reg.model import RegisteredService, Service
from consul_reg.registries.consul import ConsulEndpoint, ConsulRegistry


class ConsulKVRegistry:
    def __init__(self, endpoint: ConsulEndpoint, prefix: str, hostname: str, token: str | None) -> None:
        self._consul = ConsulRegistry(endpoint, token=token)
        self.prefix = prefix.strip("/")
        self.hostname = hostname
        self.description = f"consulkv {endpoint}/{self.prefix}"

    def key_of(self, service: Service) -> str:
        return f"{self.prefix}/{service.name}/{service.id}"

    def accepts(self, service: Service) -> str:
        return ""

    def digest_of(self, service: Service) -> str:
        return f"{service.address}:{service.port}" if service.port is not None else service.address

    def maintain(self) -> bool:
        return False

    def seconds_until_maintenance(self) -> float:
        return 3600.0

    def services(self) -> dict[str, RegisteredService]:
        found = {}
        for key, value in self._consul.kv_items(self.prefix + "/").items():
            name, _, service_id = key[len(self.prefix) + 1:].partition("/")
            meta = {MARKER_DIGEST_KEY: value}
            if service_id.startswith(self.hostname + ":"):
                meta.update({MARKER_SOURCE_KEY: MARKER_SOURCE_VALUE, MARKER_HOST_KEY: self.hostname})
            found[key] = RegisteredService(id=key, name=name, meta=meta)
        return found

    def register(self, service: Service) -> None:
        self._consul.kv_put(self.key_of(service), self.digest_of(service))

    def deregister(self, service: RegisteredService) -> None:
        self._consul.kv_delete(service.id)

    def close(self) -> None:
        self._consul.close()
