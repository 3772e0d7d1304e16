"""Cost of an in-sync reconcile with 200 containers, and recovery after an
agent restart (method in BENCHMARKS.md).

Starts its own Consul dev agent (so it can kill it), 200 busybox containers
(-internal, exposed port 80: no userland proxies), then:
1. in-process, consul-reg's Daemon does a first full sync (registers all),
   then N more full syncs, each timed, with every Docker and Consul HTTP call
   counted (writes must be 0);
2. consul-reg runs as a process with -resync 5; the agent is killed and
   restarted empty; the time until all 200 services are back is measured.
Usage: .venv/bin/python bench/reconcile.py [--containers 200]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import docker
import httpx
from loguru import logger

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.integration.conftest import OwnAgent  # noqa: E402  (the tests' own agent launcher)

from consul_reg.cli import parse_config  # noqa: E402
from consul_reg.daemon import Daemon  # noqa: E402
from consul_reg.docker_source import DockerSource  # noqa: E402
from consul_reg.registries import from_uri  # noqa: E402

IMAGE = "consul-reg-test/busybox:latest"
LABEL = "consul-reg-bench"


class Counting:
    """Wraps an object; counts calls of the named methods."""

    def __init__(self, inner, names):
        self._inner, self.calls = inner, {n: 0 for n in names}

    def __getattr__(self, name):
        attribute = getattr(self._inner, name)
        if name not in self.calls:
            return attribute

        def counted(*args, **kwargs):
            self.calls[name] += 1
            return attribute(*args, **kwargs)
        return counted


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--containers", type=int, default=200)
    parser.add_argument("--passes", type=int, default=10)
    args = parser.parse_args()
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    client = docker.from_env(timeout=120)
    workdir = Path(f"/tmp/consul-reg-bench-{uuid.uuid4().hex[:6]}")
    workdir.mkdir()
    agent = OwnAgent(workdir).start()
    hostname = f"bench{uuid.uuid4().hex[:6]}"
    containers = []
    process = None
    try:
        for index in range(args.containers):
            created = client.api.create_container(IMAGE, "sleep 3600", ports=[80], labels={LABEL: "1"},
                                                  name=f"{hostname}-{index}", stop_signal="SIGKILL")
            client.api.start(created)
            containers.append(client.containers.get(created["Id"]))
        config = parse_config(["--hostname", hostname, "-internal", "-resync", "0", agent.uri], {})
        docker_source = Counting(DockerSource(), ["list_containers", "inspect", "ping"])
        registry = Counting(from_uri(agent.uri, None), ["services", "agent_info", "register", "deregister"])
        daemon = Daemon(config, docker_source, registry)  # type: ignore[arg-type]
        assert daemon.connect()
        daemon.full_sync()
        registered = registry.calls["register"]
        times = []
        for _ in range(args.passes):
            for counter in (docker_source.calls, registry.calls):
                for name in counter:
                    counter[name] = 0
            started = time.perf_counter()
            daemon.full_sync()
            times.append((time.perf_counter() - started) * 1000)
        calls = {**docker_source.calls, **registry.calls}
        http_calls = calls["list_containers"] + calls["inspect"] + calls["services"] + calls["agent_info"]
        print(f"{args.containers} containers ({registered} registered at the first pass)")
        print(f"in-sync full reconcile: median {statistics.median(times):.1f} ms, max {max(times):.1f} ms "
              f"over {args.passes} passes; HTTP calls per pass: {http_calls} "
              f"(docker list {calls['list_containers']}, inspect {calls['inspect']}; consul reads "
              f"{calls['services'] + calls['agent_info']}); writes: {calls['register'] + calls['deregister']}")

        process = subprocess.Popen([sys.executable, "-m", "consul_reg", "--hostname", hostname, "-internal",
                                    "-resync", "5", "-retry-interval", "100", agent.uri],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        api = httpx.Client(base_url=agent.address, timeout=10)

        def count() -> int:
            try:
                return sum(1 for s in api.get("/v1/agent/services").json().values()
                           if (s.get("Meta") or {}).get("consul_reg_host") == hostname)
            except httpx.HTTPError:
                return -1
        while count() != args.containers:
            time.sleep(0.1)
        for attempt in range(3):
            agent.restart()
            restarted = time.monotonic()
            while count() <= 0:
                time.sleep(0.02)
            first = time.monotonic()
            while count() != args.containers:
                time.sleep(0.02)
            done = time.monotonic()
            print(f"agent restart {attempt + 1}: all {args.containers} back {done - restarted:.2f} s after it "
                  f"(noticed at the next pass, -resync 5: {first - restarted:.2f} s; re-registering all: "
                  f"{done - first:.2f} s)")
    finally:
        if process is not None:
            process.kill()
        agent.stop()
        for container in containers:
            container.remove(force=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
