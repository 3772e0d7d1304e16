"""What the daemons of a fleet cost the Consul servers (method in BENCHMARKS.md).

On the test harness's cluster (tests/integration/cluster.py: 3 servers, 3 hosts of
client agent + dockerd + consul-reg, shared etcd / ZooKeeper / Consul KV mirrors),
with Consul's default check_update_interval (5m) and the daemons at their default
-resync (30 s): start --per-host containers on each host (half services with a
published port and a Docker HEALTHCHECK, so a daemon-owned docker-health TTL check
re-asserted at every resync; half port-less workers with a daemon-owned heartbeat
every 10 s), wait until every check passes and the Raft log is quiet, then count
the Raft entries a server applies, by kind, over --steady-minutes of steady state
and over --churn-minutes of churn, twice (every second one new container started on
the next host and the oldest churn container removed with docker rm -f): services
with a published port, then port-less workers.

Usage (root): .venv/bin/python bench/cluster_load.py [--per-host 100] [--steady-minutes 10] [--churn-minutes 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.integration.cluster import Cluster, Host  # noqa: E402
from tests.integration.conftest import wait_until  # noqa: E402

CATALOG = ("register", "deregister")
HEALTHCHECK = {"test": ["CMD", "true"], "interval": 30 * 10**9, "timeout": 5 * 10**9, "retries": 3}


def fill(host: Host, count: int) -> None:
    for index in range(count):
        if index % 2:
            host.run(f"w{index}", {"SERVICE_NAME": "bench-worker"})
        else:
            host.docker.containers.run(
                "consul-reg-test/busybox:latest", "sleep 86400", detach=True, name=f"s{index}",
                labels={"SERVICE_NAME": "bench-web"}, stop_signal="SIGKILL", healthcheck=HEALTHCHECK,
                ports={"80/tcp": (host.ip, host.cluster.ports.take(host.ip))})


def passing_checks(cluster: Cluster) -> tuple[int, int]:
    """(passing, all) daemon-owned checks in the catalog."""
    checks = cluster.servers[0].http.get("/v1/health/state/any", params={"stale": "1"}).json()
    ours = [c for c in checks if c["CheckID"].endswith((":heartbeat", ":docker-health"))]
    return sum(c["Status"] == "passing" for c in ours), len(ours)


def applies(cluster: Cluster) -> dict[str, float]:
    """Raft entries applied by kind (server1), plus "reads": queries all servers answered."""
    counts = wait_until(lambda: cluster.raft_applies(), timeout=60, message="the server's metrics")
    counts["reads"] = sum(wait_until(lambda: _queries(server), timeout=60, message="metrics")[0]
                          for server in cluster.servers)
    return counts


def _queries(server: object) -> tuple[float]:
    text = server.http.get("/v1/agent/metrics", params={"format": "prometheus"}).text  # type: ignore[attr-defined]
    return (sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("consul_rpc_query ")),)


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in sorted(set(after) | set(before))
            if after.get(k, 0) != before.get(k, 0)}


def serf_health(cluster: Cluster) -> dict[str, int]:
    """ModifyIndex of every node's serfHealth: a node that flapped (a starved machine) moved it,
    and its writes are Consul's, not the daemons'."""
    checks = wait_until(lambda: cluster.servers[0].http.get("/v1/health/state/any").json(), timeout=60)
    return {c["Node"]: c["ModifyIndex"] for c in checks if c["CheckID"] == "serfHealth"}


def heartbeats(cluster: Cluster) -> float:
    return sum(h.heartbeats_sent() for h in cluster.hosts)


def quiet(cluster: Cluster, seconds: float) -> None:
    """Wait until no catalog write happened for `seconds` (the start's writes are over)."""
    last, since = applies(cluster), time.monotonic()
    deadline = time.monotonic() + 600
    while time.monotonic() - since < seconds:
        if time.monotonic() > deadline:
            raise SystemExit("the catalog never went quiet")
        time.sleep(2)
        now = applies(cluster)
        if any(now.get(k, 0) != last.get(k, 0) for k in CATALOG):  # reads are never quiet: not waited for
            last, since = now, time.monotonic()


def flapped(before: dict[str, int], after: dict[str, int]) -> list[str]:
    return sorted(node for node in after if after[node] != before.get(node))


def report(title: str, minutes: float, moved: dict[str, float], changes: int | None, beats: float,
           flapped: list[str]) -> None:
    reads = moved.pop("reads", 0)
    catalog = sum(moved.get(k, 0) for k in CATALOG)
    kv = sum(v for k, v in moved.items() if k.startswith("kvs"))
    print(f"\n## {title}: {minutes:.1f} min")
    print(f"Raft entries applied by kind: {moved or 'none'}")
    print(f"catalog writes (register + deregister): {catalog:.0f} = {catalog / minutes:.1f}/min; "
          f"Consul KV mirror writes: {kv:.0f}; all entries: {moved.get('all', 0):.0f} "
          f"(the rest are Consul's own: coordinates, autopilot); read queries on the servers: {reads:.0f}")
    print(f"TTL updates the daemons sent meanwhile: {beats:.0f} ({beats / minutes / 60:.1f}/s); "
          f"nodes whose serfHealth changed (their writes are Consul's): {flapped or 'none'}")
    if changes:
        print(f"registration changes: {changes} ({changes / minutes / 60:.2f}/s): "
              f"{catalog / changes:.2f} catalog writes, {kv / changes:.2f} KV writes and "
              f"{reads / changes:.1f} server reads per change")


def churn(cluster: Cluster, kind: str, minutes: float) -> None:
    """Every second: one container started on the next host, the oldest of the last 10 removed
    (docker rm -f). `kind`: "service" (a published port, no check) or "worker" (port-less, heartbeat)."""
    name = f"bench-churn-{kind}"
    running: list[object] = []
    before, beats, t0, changes, n = applies(cluster), heartbeats(cluster), time.monotonic(), 0, 0
    serf = serf_health(cluster)
    while time.monotonic() - t0 < minutes * 60:
        tick = time.monotonic()
        host = cluster.hosts[n % len(cluster.hosts)]
        running.append(host.run(f"{kind}{n}", {"SERVICE_NAME": name}, (80,) if kind == "service" else ()))
        changes += 1
        if len(running) > 10:
            running.pop(0).remove(force=True)  # type: ignore[attr-defined]
            changes += 1
        n += 1
        time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
    elapsed = (time.monotonic() - t0) / 60
    wait_until(lambda: len(cluster.servers[0].http.get(f"/v1/health/service/{name}", params={"passing": "1"}).json())
               == 10, timeout=120, message="the last churn changes registered")
    quiet(cluster, 10)
    report(f"churn of {kind}s (started {n}, removed {n - len(running)})", elapsed, delta(before, applies(cluster)),
           changes, heartbeats(cluster) - beats, flapped(serf, serf_health(cluster)))
    for container in running:
        container.remove(force=True)  # type: ignore[attr-defined]
    quiet(cluster, 10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-host", type=int, default=100)
    parser.add_argument("--steady-minutes", type=float, default=10)
    parser.add_argument("--churn-minutes", type=float, default=3)
    args = parser.parse_args()
    cluster = Cluster(check_update_interval=None, resync="30", log_level="INFO")
    try:
        started = time.monotonic()
        cluster.start()
        with ThreadPoolExecutor(max_workers=len(cluster.hosts)) as pool:
            for future in [pool.submit(fill, h, args.per_host) for h in cluster.hosts]:
                future.result()
        total = args.per_host * len(cluster.hosts)
        wait_until(lambda: passing_checks(cluster) == (total, total), timeout=600, interval=2,
                   message=f"{total} daemon-owned checks passing")
        print(f"# {len(cluster.hosts)} hosts x {args.per_host} containers, {total} daemon-owned TTL checks passing "
              f"after {time.monotonic() - started:.0f} s")
        quiet(cluster, 40)

        before, beats, t0, serf = applies(cluster), heartbeats(cluster), time.monotonic(), serf_health(cluster)
        end = t0 + args.steady_minutes * 60
        while time.monotonic() < end:
            time.sleep(min(30.0, max(0.0, end - time.monotonic())))
            moved = delta(before, applies(cluster))
            print(f"  {(time.monotonic() - t0) / 60:4.1f} min: {moved}", flush=True)
        report("steady state", (time.monotonic() - t0) / 60, delta(before, applies(cluster)), None,
               heartbeats(cluster) - beats, flapped(serf, serf_health(cluster)))

        for kind in ("service", "worker"):
            churn(cluster, kind, args.churn_minutes)
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
