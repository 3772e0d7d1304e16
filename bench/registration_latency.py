"""Event-to-Consul latency and peak RSS of the daemon (method in BENCHMARKS.md).

Starts consul-reg, then 30 busybox containers one after another, then kills
them one after another. For each container: Docker's `start` event timeNano
-> the moment the daemon's register call returned (its JSON log record), and
`die` timeNano -> its deregister call returned. A service is in the agent
once that call returned 200, so the log time is when it became present.

Usage: .venv/bin/python bench/registration_latency.py [--containers 30]
(needs scripts/bootstrap.sh to have run: dockerd, Consul, the test image).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import docker

IMAGE = "consul-reg-test/busybox:latest"
LABEL = "consul-reg-bench"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def summary(name: str, values_ms: list[float]) -> str:
    return (f"{name}: n={len(values_ms)} p50={statistics.median(values_ms):.1f} ms "
            f"p90={percentile(values_ms, 0.9):.1f} ms max={max(values_ms):.1f} ms")


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--containers", type=int, default=30)
    args = parser.parse_args()

    client = docker.from_env()
    hostname = f"bench{uuid.uuid4().hex[:6]}"
    log_path = tempfile.mktemp(prefix="consul-reg-bench-", suffix=".log")
    events: dict[tuple[str, str], int] = {}
    stop_events = threading.Event()

    def read_events() -> None:
        for event in client.api.events(decode=True, filters={"type": "container", "label": LABEL}):
            if event.get("Action") in ("start", "die"):
                events[(event["Actor"]["ID"], event["Action"])] = int(event["timeNano"])
            if stop_events.is_set():
                return

    threading.Thread(target=read_events, daemon=True).start()
    with open(log_path, "wb") as log:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "consul_reg", "--hostname", hostname, "--log-format", "json", "-resync", "0"],
            stdout=log, stderr=subprocess.STDOUT)
    containers = []
    try:
        time.sleep(2)  # let the daemon connect and finish its first pass before measuring
        for index in range(args.containers):
            containers.append(client.containers.run(
                IMAGE, "sleep 600", detach=True, ports={"80/tcp": None}, labels={LABEL: "1"},
                name=f"{hostname}-{index}", stop_signal="SIGKILL"))
            time.sleep(0.2)
        time.sleep(2)
        for container in containers:
            container.kill()
            time.sleep(0.2)
        time.sleep(2)
        rss = peak_rss_mb(daemon.pid)
    finally:
        stop_events.set()
        daemon.terminate()
        daemon.wait(timeout=15)
        for container in containers:
            container.remove(force=True)

    done: dict[tuple[str, str], int] = {}
    with open(log_path) as log:
        for line in log:
            try:
                record = json.loads(line)["record"]
            except (ValueError, KeyError):
                continue
            extra = record.get("extra", {})
            action, service_id = extra.get("action"), extra.get("service_id", "")
            if action in ("register", "deregister") and service_id.startswith(hostname + ":"):
                name = service_id.split(":")[1]
                done[(name, action)] = int(record["time"]["timestamp"] * 1e9)
    register_ms, deregister_ms = [], []
    for container in containers:
        start, die = events.get((container.id, "start")), events.get((container.id, "die"))
        registered, deregistered = done.get((container.name, "register")), done.get((container.name, "deregister"))
        if start and registered:
            register_ms.append((registered - start) / 1e6)
        if die and deregistered:
            deregister_ms.append((deregistered - die) / 1e6)
    print(summary("start event -> registered  ", register_ms))
    print(summary("die event   -> deregistered", deregister_ms))
    print(f"daemon peak RSS (VmHWM): {rss:.1f} MB")
    os.unlink(log_path)
    return 0 if len(register_ms) == len(deregister_ms) == args.containers else 1


if __name__ == "__main__":
    sys.exit(main())
