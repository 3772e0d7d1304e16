"""CPU time of one container's mapping for the hostile shapes of issue 12's
keys, pure (no Docker, no Consul): inspect dicts through map_container.

Cases, all on a host-network container declaring 69 ports (64 become services):
- every issue-12 key at its bound: SERVICE_CHECKS with 32 HTTP checks (1.5 KiB
  body, 10 header values each), 40 SERVICE_TAGGED_ADDRESS_* keys, a sidecar
  with 40 upstreams;
- the same without the per-container bound on SERVICE_CHECKS (Limits
  json_checks_per_container raised to 100,000), to show what it saves;
- the heaviest pre-existing shape for comparison: every SERVICE_CHECK_* kind
  and 20 header keys on each of the 64 services;
- the 64 services alone.
Each case runs REPEAT times and the best CPU time (time.process_time) is printed.
Usage: .venv/bin/python bench/definitions.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from typing import Any, Callable

from consul_reg.mapping.services import MappingSettings, map_container
from consul_reg.mapping.validate import Limits

PORTS = ",".join(str(p) for p in range(1, 70))


def container(labels: dict[str, str]) -> dict[str, Any]:
    return {"Id": "ab" * 32, "Name": "/bench", "Config": {"Image": "team/web:1", "Labels": labels},
            "HostConfig": {"NetworkMode": "host"}, "NetworkSettings": {"Networks": {"host": {}}}}


def best(repeat: int, run: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        start = time.process_time()
        run()
        times.append(time.process_time() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    repeat = parser.parse_args().repeat
    settings = MappingSettings(hostname="h", default_address="10.0.0.5")
    checks = [{"HTTP": f"/h{i}", "Interval": "10s", "Body": "x" * 1500, "Header": {"X-A": ["v"] * 10}}
              for i in range(32)]
    issue12 = container({"SERVICE_PORT": PORTS, "SERVICE_CHECKS": json.dumps(checks), "SERVICE_CONNECT": "sidecar",
                         "SERVICE_CONNECT_UPSTREAMS": ",".join(f"s{i}:{20000 + i}" for i in range(40)),
                         **{f"SERVICE_TAGGED_ADDRESS_T{i}": f"10.0.0.{i}:1" for i in range(40)}})
    unbounded = replace(settings, limits=replace(Limits(), json_checks_per_container=100_000))
    old = container({"SERVICE_PORT": PORTS, "SERVICE_CHECK_HTTP": "/h", "SERVICE_CHECK_HTTPS": "/h",
                     "SERVICE_CHECK_TCP": "true", "SERVICE_CHECK_GRPC": "true", "SERVICE_CHECK_TTL": "10s",
                     "SERVICE_CHECK_SCRIPT": "x", "SERVICE_CHECK_DOCKER": "x",
                     **{f"SERVICE_CHECK_HTTP_HEADER_X{i}": "v" for i in range(20)}})
    for label, shape, chosen in (("issue-12 keys at their bounds", issue12, settings),
                                 ("  same, SERVICE_CHECKS unbounded per container", issue12, unbounded),
                                 ("every SERVICE_CHECK_* kind (before issue 12)", old, settings),
                                 ("64 declared ports alone", container({"SERVICE_PORT": PORTS}), settings)):
        records = map_container(shape, chosen)
        checks_made = sum(len(s.checks) for s in records.services)
        print(f"{label}: {best(repeat, lambda: map_container(shape, chosen)) * 1000:.1f} ms, "
              f"{len(records.services)} services, {checks_made} checks")


if __name__ == "__main__":
    main()
