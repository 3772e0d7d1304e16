"""Cost of the heartbeat scheduler: 2,000 daemon-owned TTL checks (method in BENCHMARKS.md).

The parent registers 2,000 port-less services, each with a daemon-owned
heartbeat TTL check, straight into the agent; then a child process runs
only consul-reg's ProbeScheduler over them (heartbeat every 10 s, TTL 30 s)
for --seconds, and reports its own CPU time, peak RSS and how late each
heartbeat went out. Usage: .venv/bin/python bench/heartbeats.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from loguru import logger

from consul_reg.heartbeat import ProbeScheduler
from consul_reg.model import ContainerStatus, Service
from consul_reg.registries import from_uri
from consul_reg.workers import heartbeat_check
from consul_reg.labels import KeyValue

URI = "consul://127.0.0.1:8500"


def services(prefix: str, count: int, interval: str) -> list[Service]:
    keys = {"heartbeat_ttl": KeyValue("30s", "label", "SERVICE_HEARTBEAT_TTL"),
            "heartbeat_interval": KeyValue(interval, "label", "SERVICE_HEARTBEAT_INTERVAL")}
    made = []
    for index in range(count):
        service_id = f"{prefix}:worker-{index}"
        check = heartbeat_check(keys, service_id, "bench-worker", f"container-{index}", [])
        made.append(Service(id=service_id, name="bench-worker", address="127.0.0.1", port=None, checks=(check,),
                            container_id=f"container-{index}"))
    return made


def lateness_first_round(scheduler: ProbeScheduler, count: int) -> float:
    return max(scheduler.lateness[:count], default=float("nan"))


class _NoExec:
    def exec_in_container(self, container_id, command, timeout):
        raise RuntimeError("not used")


def child(prefix: str, count: int, seconds: float) -> None:
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    registry = from_uri(URI, token=None)
    wanted = services(prefix, count, "10s")
    scheduler = ProbeScheduler(registry, _NoExec(), lambda *_: None, senders=int(os.environ.get("SENDERS", "4")))
    scheduler.start()
    cpu_start = time.process_time()
    wall_start = time.monotonic()
    scheduler.set_services(wanted, {s.container_id: ContainerStatus() for s in wanted})
    time.sleep(seconds)
    cpu = time.process_time() - cpu_start
    wall = time.monotonic() - wall_start
    scheduler.stop()
    lateness = sorted(scheduler.lateness[count:] or [float("nan")])  # after the first round, sent all at once
    with open("/proc/self/status") as status:
        rss = next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM:"))
    print(json.dumps({"sent": scheduler.sent, "first_round": lateness_first_round(scheduler, count), "cpu_share": cpu / wall, "rss_mb": rss,
                      "late_p50": statistics.median(lateness), "late_p99": lateness[int(len(lateness) * 0.99)],
                      "late_max": lateness[-1], "rounds": len(lateness)}))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checks", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--child", default="")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.checks, args.seconds)
        return 0
    prefix = f"hb{uuid.uuid4().hex[:6]}"
    registry = from_uri(URI, token=None)
    wanted = services(prefix, args.checks, "10s")
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(registry.register, wanted))
    try:
        result = subprocess.run([sys.executable, __file__, "--checks", str(args.checks), "--seconds",
                                 str(args.seconds), "--child", prefix], stdout=subprocess.PIPE, text=True, check=True)
        figures = json.loads(result.stdout.strip().splitlines()[-1])
    finally:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(registry.deregister, wanted))  # type: ignore[arg-type]
    print(f"{args.checks} TTL checks, heartbeat every 10 s, {args.seconds:g} s: {figures['sent']} updates sent")
    print(f"scheduler CPU: {figures['cpu_share'] * 100:.1f}% of one core; peak RSS {figures['rss_mb']:.1f} MB")
    print(f"first round (all {args.checks} due at once): last sent after {figures['first_round']:.1f} s")
    print(f"lateness after it: p50 {figures['late_p50'] * 1000:.1f} ms, p99 {figures['late_p99'] * 1000:.1f} ms, "
          f"max {figures['late_max'] * 1000:.1f} ms")
    return 0


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
    sys.exit(main())
