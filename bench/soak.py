"""Soak: does anything in consul-reg grow with uptime? (method in BENCHMARKS.md)

Starts consul-reg (defaults, -resync 30) against the local agent, 200
port-less workers whose heartbeats it reports (20 TTL updates/s), then churns:
every `--every` seconds one container with a published port is started and
the previous one removed. The daemon's RSS (VmRSS) and thread count are
sampled every `--sample` seconds into a CSV; the summary compares the
median of the first samples after warm-up with the median of the last ones.

Usage: .venv/bin/python bench/soak.py [--seconds 7200] [--workers 200] [--every 3] [--sample 60]
       [--consul http://127.0.0.1:8500]   (Docker as the docker CLI finds it: DOCKER_HOST)
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import docker
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import IMAGE, proc_status  # noqa: E402

LABEL = "consul-reg-soak"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=7200)
    parser.add_argument("--workers", type=int, default=200)
    parser.add_argument("--every", type=float, default=3.0)
    parser.add_argument("--sample", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=600.0)
    parser.add_argument("--csv", default="bench/soak.csv")
    parser.add_argument("--consul", default="http://127.0.0.1:8500", help="the agent (HTTP address)")
    args = parser.parse_args()

    client = docker.from_env(timeout=120)
    run = uuid.uuid4().hex[:6]
    hostname = f"soak-{run}"
    labels = {LABEL: run}
    log = open(f"/tmp/{hostname}.log", "wb")
    uri = "consul://" + args.consul.split("://", 1)[-1]
    daemon = subprocess.Popen([sys.executable, "-m", "consul_reg", "--hostname", hostname, "--log-level", "WARNING",
                               uri], stdout=log, stderr=subprocess.STDOUT)
    rows: list[tuple[float, int, int]] = []
    started = time.monotonic()
    try:
        for index in range(args.workers):
            client.containers.run(IMAGE, "sleep 100000", detach=True, name=f"{hostname}-w{index}",
                                  labels={**labels, "SERVICE_NAME": "soak-worker"}, stop_signal="SIGKILL")
        previous = None
        next_sample = time.monotonic()
        count = 0
        while time.monotonic() - started < args.seconds:
            web = client.containers.run(IMAGE, "sleep 100000", detach=True, name=f"{hostname}-c{count}",
                                        labels=labels, ports={"80/tcp": None}, stop_signal="SIGKILL")
            count += 1
            if previous is not None:
                previous.remove(force=True)
            previous = web
            if time.monotonic() >= next_sample:
                status = proc_status(daemon.pid)
                rows.append((round(time.monotonic() - started, 1), status["VmRSS"], status["Threads"]))
                print(f"{rows[-1][0]:>8}s rss={status['VmRSS']} kB threads={status['Threads']} "
                      f"containers churned={count}", flush=True)
                next_sample += args.sample
            time.sleep(args.every)
        services = httpx.get(f"{args.consul}/v1/agent/services").json()
        ours = [s for s in services.values() if (s.get("Meta") or {}).get("consul_reg_host") == hostname]
        print(f"in the agent at the end: {len(ours)} services of the soak (expected {args.workers + 1})")
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        for container in client.containers.list(all=True, filters={"label": f"{LABEL}={run}"}):
            container.remove(force=True)
        services = httpx.get(f"{args.consul}/v1/agent/services").json()
        for service_id, service in services.items():
            if (service.get("Meta") or {}).get("consul_reg_host") == hostname:
                httpx.put(f"{args.consul}/v1/agent/service/deregister/{service_id}")
    with open(args.csv, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["seconds", "rss_kb", "threads"])
        writer.writerows(rows)
    after = [r for r in rows if r[0] >= args.warmup]
    if len(after) >= 4:
        head = statistics.median(r[1] for r in after[: len(after) // 4])
        tail = statistics.median(r[1] for r in after[-(len(after) // 4):])
        print(f"RSS after warm-up: first quarter median {head / 1024:.1f} MB, last quarter median "
              f"{tail / 1024:.1f} MB ({(tail - head) / 1024:+.1f} MB); max {max(r[1] for r in rows) / 1024:.1f} MB; "
              f"threads {min(r[2] for r in after)}-{max(r[2] for r in after)}; {count} containers churned")
    return 0


if __name__ == "__main__":
    sys.exit(main())
