"""Where a per-event's CPU goes: consul-reg's Daemon in-process against an
agent of the benchmark's own, its loop thread and event reader thread each
under cProfile, while --containers containers are started and killed one at
a time (each waited for in the agent). Prints the top functions by
cumulative and by own time per thread. A profiler, not a timing: cProfile
inflates small functions; use it to find what runs, and bench/event_latency.py
to time it.

Usage: .venv/bin/python bench/profile_event.py [--containers 50] [--sort tottime]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import threading
import time
import uuid
from pathlib import Path

import docker

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import IMAGE, LABEL, Agent, describe_ms, remove_labelled  # noqa: E402

from consul_reg.docker import events as docker_events

from consul_reg.app import logs

from consul_reg.sync import loop  # noqa: E402
from consul_reg.app.cli import parse_config  # noqa: E402
from consul_reg.app.daemon import Daemon  # noqa: E402
from consul_reg.core.messages import Stop  # noqa: E402

PROFILES: dict[str, cProfile.Profile] = {}
HANDLE_CPU_MS: list[float] = []


def cpu_timed(function):
    """The loop's handle(), its own thread's CPU time recorded per call (no profiler)."""
    def wrapper(self, batch):
        started = time.thread_time()
        try:
            return function(self, batch)
        finally:
            if batch and any(getattr(m, "container_id", "") for m in batch):
                HANDLE_CPU_MS.append((time.thread_time() - started) * 1000)
    return wrapper


def profiled(name: str, function):
    def wrapper(*args, **kwargs):
        profile = PROFILES[name] = cProfile.Profile(time.thread_time)  # CPU, not waits
        profile.enable()
        try:
            return function(*args, **kwargs)
        finally:
            profile.disable()
    return wrapper


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--containers", type=int, default=50)
    parser.add_argument("--sort", default="tottime")
    parser.add_argument("--top", type=int, default=35)
    parser.add_argument("--cpu", action="store_true", help="no profiler: CPU time of each batch the loop handles")
    args = parser.parse_args()
    client = docker.from_env(timeout=60)
    agent = Agent().start()
    hostname = f"prof{uuid.uuid4().hex[:6]}"
    if args.cpu:
        loop.Loop.handle = cpu_timed(loop.Loop.handle)
    else:
        loop.Loop.run = profiled("loop", loop.Loop.run)
        docker_events.read_events = profiled("events", docker_events.read_events)
    log = open(f"/tmp/consul-reg-profile-{hostname}.log", "w")
    config = parse_config(["--hostname", hostname, "-resync", "0", agent.uri], {})
    logs.setup(config.log_level, config.log_format)
    from loguru import logger
    logger.remove()
    logger.add(log, level="INFO", format="{time:YYYY-MM-DDTHH:mm:ss.SSSZ} {level: <7} {message}")
    daemon = Daemon(config)
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    containers = []
    try:
        time.sleep(2)
        for index in range(args.containers):
            containers.append(client.containers.create(IMAGE, "sleep 3600", ports={"80/tcp": None},
                                                       labels={LABEL: "1"}, name=f"{hostname}-{index}",
                                                       stop_signal="SIGKILL"))
        for container in containers:
            client.api.start(container.id)
            wait_for(agent, f"{hostname}:{container.name}:80", True)
        for container in containers:
            client.api.kill(container.id)
            wait_for(agent, f"{hostname}:{container.name}:80", False)
        daemon.loop.post(Stop())
        thread.join(timeout=10)
    finally:
        remove_labelled(client)
        agent.stop()
    daemon.stopping.set()
    if args.cpu:
        print(f"loop CPU per batch with a container event: {describe_ms(HANDLE_CPU_MS)}")
        print(f"total {sum(HANDLE_CPU_MS):.1f} ms over {2 * args.containers} container starts and deaths")
    for name, profile in PROFILES.items():
        print(f"==== {name} thread, sorted by {args.sort}")
        pstats.Stats(profile).strip_dirs().sort_stats(args.sort).print_stats(args.top)
    return 0


def wait_for(agent: Agent, service_id: str, present: bool) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status, _ = agent.request("GET", f"/v1/agent/service/{service_id}")
        if (status == 200) == present:
            return
        time.sleep(0.002)
    raise TimeoutError(service_id)


if __name__ == "__main__":
    sys.exit(main())
