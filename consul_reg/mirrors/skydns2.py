"""SkyDNS2 / CoreDNS etcd layout on etcd v3, on this daemon's lease:
`/skydns/<domain labels reversed>/<service-name>/<service-id>` =
`{"host": ip, "port": port}` (plus "ttl" with -ttl)."""

from __future__ import annotations

import json
import re
import time

from consul_reg.core.backoff import Clock
from consul_reg.core.records import Service
from consul_reg.mirrors.etcd import EtcdRegistry

DNS_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")  # fullmatch


class SkyDNS2Registry(EtcdRegistry):
    def __init__(self, host: str, port: int, domain: str, hostname: str, lease_ttl: int, record_ttl: int,
                 refresh: float = 0.0, clock: Clock = time.monotonic) -> None:
        labels = [label for label in domain.strip("/").split(".") if label]
        super().__init__(host, port, "/skydns/" + "/".join(reversed(labels)), hostname, lease_ttl, refresh, clock)
        self.description = f"skydns2 {host}:{port} ({domain.strip('/')})"
        self.record_ttl = record_ttl

    def accepts(self, service: Service) -> str:
        refusal = super().accepts(service)
        if refusal:
            return refusal
        for what, value in (("name", service.name), ("ID", service.id)):
            if not DNS_LABEL.fullmatch(value):
                return (f"service {what} {value!r} is not a DNS label (letters, digits and '-', at most 63): "
                        "SkyDNS cannot serve it; set SERVICE_ID / SERVICE_NAME to one")
        return ""

    def value_of(self, service: Service) -> str:
        record: dict[str, object] = {"host": service.address}
        if service.port is not None:
            record["port"] = service.port
        if self.record_ttl:
            record["ttl"] = self.record_ttl
        return json.dumps(record, separators=(",", ":"))
