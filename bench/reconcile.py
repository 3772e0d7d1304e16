"""Recovery after the agent restarts empty, with --containers containers
(method and figures in BENCHMARKS.md). The in-sync pass itself is timed by
bench/scale.py.

Starts --containers busybox containers (port 80 exposed, consul-reg runs with
-internal: no userland proxies) and an agent of the benchmark's own; runs
consul-reg as a process (-resync 0: the agent watch, not a resync, notices
the restart); waits until all are registered; then --restarts times kills the
agent and starts it again on the same ports (a dev agent comes back empty)
and polls it (every 20 ms) until all services are back.

Usage: .venv/bin/python bench/reconcile.py [--containers 200] [--restarts 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DAEMON_CWD, IMAGE, LABEL, Agent, daemon_env, load, remove_labelled  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--containers", type=int, default=200)
    parser.add_argument("--restarts", type=int, default=3)
    args = parser.parse_args()
    client = docker.from_env(timeout=300, max_pool_size=8)
    hostname = f"rec{uuid.uuid4().hex[:6]}"
    agent = Agent().start()
    daemon = None
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {load()}", flush=True)

    def owned() -> int:
        try:
            return sum(1 for s in agent.services().values() if (s.get("Meta") or {}).get("consul_reg_host") == hostname)
        except OSError:
            return -1
    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda n: client.api.start(client.api.create_container(
                IMAGE, "sleep 3600", ports=[80], labels={LABEL: "1"}, name=f"{hostname}-{n}")["Id"]),
                range(args.containers)))
        daemon = subprocess.Popen([sys.executable, "-m", "consul_reg", "--hostname", hostname, "-internal",
                                   "-resync", "0", "-retry-interval", "100", agent.uri],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  env=daemon_env(), cwd=DAEMON_CWD)
        while owned() != args.containers:
            time.sleep(0.05)
        listing = agent.request("GET", "/v1/agent/services")[1]
        print(f"/v1/agent/services with {args.containers} services: {len(listing)} bytes "
              f"({len(listing) / args.containers:.0f} per service)", flush=True)
        for attempt in range(1, args.restarts + 1):
            agent.restart()
            restarted = time.monotonic()
            while owned() <= 0:
                time.sleep(0.02)
            first = time.monotonic()
            while owned() != args.containers:
                time.sleep(0.02)
            done = time.monotonic()
            print(f"agent restart {attempt}: all {args.containers} back {done - restarted:.2f} s after the agent "
                  f"answered again (first back after {first - restarted:.2f} s, all of them "
                  f"{done - first:.2f} s later); {load()}", flush=True)
    finally:
        if daemon is not None:
            daemon.kill()
        remove_labelled(client)
        agent.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
