"""One request's round trip through consul_reg.transport.pool, in the benchmark's own
process: wall time per call and CPU per call, for the two hot paths (the
agent's PUT of a TTL update and a service registration, Docker's inspect of
one container), against an agent of the benchmark's own and the dockerd of
DOCKER_HOST (one labelled container, removed at the end); and a service's register +
deregister through ConsulRegistry alone and through the OwnershipGuard
(registries/guard.py: a GET of the record before each write). `--code` imports
consul_reg from another checkout, so the same run can time before and after.

For each case: --warm calls not counted, then --calls calls one after
another on the pool; wall p50/p90 per call, and the process's CPU time
(`time.process_time`) over all the calls divided by their number.

Usage: .venv/bin/python bench/roundtrip.py [--calls 2000] [--code DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import IMAGE, LABEL, Agent, load, percentile, remove_labelled  # noqa: E402


def timed(call, calls: int, warm: int) -> tuple[list[float], float]:
    for _ in range(warm):
        call()
    walls = []
    cpu_before = time.process_time()
    for _ in range(calls):
        started = time.perf_counter()
        call()
        walls.append((time.perf_counter() - started) * 1e6)
    return walls, (time.process_time() - cpu_before) * 1e6 / calls


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--warm", type=int, default=200)
    parser.add_argument("--code", default="", help="a directory holding another checkout's consul_reg")
    args = parser.parse_args()
    if args.code:
        sys.path.insert(0, args.code)
    import docker

    from consul_reg.docker.client import DockerSource
    from consul_reg.transport.pool import ConnectionPool
    import consul_reg.transport.pool as http_pool
    from consul_reg.core.records import RegisteredService, Service, owner_meta
    from consul_reg.consul.agent import ConsulClient, ConsulEndpoint, ConsulRegistry
    from consul_reg.consul.guard import OwnershipGuard

    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {load()}, http_pool from {http_pool.__file__}", flush=True)
    client = docker.from_env(timeout=60)
    agent = Agent().start()
    container = client.containers.run(IMAGE, "sleep 3600", detach=True, labels={LABEL: "1"},
                                      stop_signal="SIGKILL")
    try:
        definition = {"ID": "rt", "Name": "rt", "Port": 80,
                      "Check": {"CheckID": "rt-ttl", "TTL": "60s"}}
        pool = ConnectionPool(host="127.0.0.1", port=agent.http_port, max_connections=4, timeout=10)
        body = json.dumps(definition).encode()
        update = json.dumps({"Status": "passing", "Output": "ok"}).encode()
        source = DockerSource()
        registry = ConsulRegistry(ConsulClient(ConsulEndpoint("http", "127.0.0.1", agent.http_port)))
        guard = OwnershipGuard(registry, "rthost")
        service = Service(id="rthost:web:80", name="web", address="10.0.0.1", port=80, tags=("a", "b"),
                          meta=tuple(owner_meta("rthost").items()), container_id="c" * 64, container_name="web")
        record = RegisteredService(id=service.id, name=service.name, meta=dict(service.meta))

        def cycle(primary) -> None:
            primary.register(service)
            primary.deregister(record)
        cases = {
            "agent PUT service/register": lambda: pool.request("PUT", "/v1/agent/service/register", body),
            "agent PUT check/update (TTL)": lambda: pool.request("PUT", "/v1/agent/check/update/rt-ttl", update),
            "agent GET service/<id> (guard), 200": lambda: pool.request("GET", "/v1/agent/service/rt"),
            "agent GET service/<id> (guard), 404": lambda: pool.request("GET", "/v1/agent/service/none"),
            "docker GET containers/<id>/json": lambda: source.inspect(container.id),
            "registry register+deregister": lambda: cycle(registry),
            "guard: GET, register, GET, deregister": lambda: cycle(guard),
        }
        for name, call in cases.items():
            walls, cpu = timed(call, args.calls, args.warm)
            print(f"{name:38} wall p50 {statistics.median(walls):7.0f} / p90 {percentile(walls, 0.9):7.0f} us, "
                  f"CPU {cpu:6.0f} us per call (n={args.calls})", flush=True)
        pool.close()
        source.close()
        registry.client.close()
    finally:
        remove_labelled(client)
        agent.stop()
    print(load())
    return 0


if __name__ == "__main__":
    sys.exit(main())
