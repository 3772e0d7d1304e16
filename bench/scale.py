"""1,000 running containers on one host (method and figures in BENCHMARKS.md).

Starts --containers busybox containers (port 80 exposed, not published:
consul-reg runs with -internal, no userland proxies) and an agent of the
benchmark's own, then:
1. consul-reg as a process at its defaults (-resync 30) plus -internal:
   the time from its start to all services present in the agent (polled
   every 50 ms), its RSS after --settle seconds, and its CPU over --idle
   seconds as a share of one core (a resync every 30 s and the agent watch
   included);
2. consul-reg's loop in-process over the same containers: after the first
   full pass, 2 x --passes more full passes (what -resync runs), each timed,
   alternately with the agent listed beside Docker (as the daemon does) and
   after it (as before 2026-11-30),
   with every Docker and agent call counted (an in-sync pass must write
   nothing and read little).
Every container is removed at the end (and at the start: leftovers of a
broken run, by the benchmark's label).

Usage: .venv/bin/python bench/scale.py [--containers 1000] [--idle 60] [--passes 10]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import DAEMON_CWD, IMAGE, LABEL, Agent  # noqa: E402
from common import daemon_env, idle_figures, load, remove_labelled  # noqa: E402


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


def owned(agent: Agent, hostname: str) -> int:
    try:
        return sum(1 for s in agent.services().values() if (s.get("Meta") or {}).get("consul_reg_host") == hostname)
    except OSError:
        return -1


def as_process(args, agent: Agent, hostname: str) -> None:
    log = open(f"/tmp/consul-reg-bench-scale-{hostname}.log", "wb")
    started = time.monotonic()
    daemon = subprocess.Popen([sys.executable, "-m", "consul_reg", "--hostname", hostname, "-internal", agent.uri],
                              stdout=log, stderr=log, env=daemon_env(), cwd=DAEMON_CWD)
    try:
        while owned(agent, hostname) < args.containers and time.monotonic() - started < 300:
            time.sleep(0.05)
        all_in = time.monotonic() - started
        print(f"daemon start -> all {owned(agent, hostname)} registered: {all_in:.2f} s; {load()}", flush=True)
        status, after, share = idle_figures(daemon.pid, args.settle, args.idle)
        print(f"idle with {args.containers} containers: VmRSS {status['VmRSS'] / 1024:.1f} MB "
              f"({after['VmRSS'] / 1024:.1f} MB {args.idle:g} s later), VmHWM {after['VmHWM'] / 1024:.1f} MB, "
              f"{after['Threads']} threads; CPU {share * 100:.2f}% of a core over {args.idle:g} s "
              f"(-resync 30); {load()}", flush=True)
    finally:
        daemon.kill()
        daemon.wait(timeout=15)
        log.close()


def in_process(args, agent: Agent, hostname: str) -> None:
    from loguru import logger

    from consul_reg.app.cli import parse_config
    from consul_reg.app.daemon import Daemon
    from consul_reg.core.messages import Reload, Start

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    daemon = Daemon(parse_config(["--hostname", hostname, "-internal", "-resync", "0", agent.uri], {}))
    daemon.docker = Counting(daemon.docker, ["list_containers", "inspect"])  # type: ignore[assignment]
    # What the loop writes through: the agent behind its guard; the guard's reads are counted too.
    daemon.registry = daemon.registries.agent.registry = Counting(  # type: ignore
        daemon.registry, ["services", "check_owners", "agent_info", "register", "deregister", "services_matching"])
    info = daemon.connect()
    assert info is not None
    loop = daemon.build(info)
    loop.handle([Start(info)])
    times, calls, sequential = [], [], []
    pool = loop.primary.io
    for n in range(2 * args.passes):
        for counter in (daemon.docker.calls, daemon.registry.calls):  # type: ignore[attr-defined]
            for name in counter:
                counter[name] = 0
        # Alternately as the daemon does (the agent listed beside Docker, on the loop's I/O pool)
        # and with the agent listed after Docker (no pool for the primary: what the daemon did before).
        loop.primary.io = pool if n % 2 == 0 else None
        began = time.perf_counter()
        loop.handle([Reload()])
        (times if n % 2 == 0 else sequential).append((time.perf_counter() - began) * 1000)
        calls.append({**daemon.docker.calls, **daemon.registry.calls})  # type: ignore[attr-defined]
    loop.primary.io = pool
    reads = {}
    for name, read in (("docker list", daemon.docker.list_containers), ("agent services", daemon.registry.services),
                       ("agent checks", daemon.registry.check_owners)):
        spent = []
        for _ in range(5):
            began = time.perf_counter()
            read()
            spent.append((time.perf_counter() - began) * 1000)
        reads[name] = statistics.median(spent)
    print("the pass's reads alone (wall, median of 5): " +
          ", ".join(f"{name} {ms:.1f} ms" for name, ms in reads.items()), flush=True)
    last = calls[-1]
    reads = last["list_containers"] + last["inspect"] + last["services"] + last["check_owners"] + last["agent_info"]
    print(f"in-sync full pass, the agent listed after Docker (the passes in between): median "
          f"{statistics.median(sequential):.1f} ms, min {min(sequential):.1f}, max {max(sequential):.1f}", flush=True)
    print(f"in-sync full pass over {len(loop.containers.desires)} containers: median {statistics.median(times):.1f} ms, "
          f"min {min(times):.1f}, max {max(times):.1f} over {args.passes} passes; HTTP reads per pass {reads} "
          f"(docker list {last['list_containers']}, inspect {last['inspect']}, agent services {last['services']}, "
          f"agent checks {last['check_owners']}, agent self {last['agent_info']}); writes {max(c['register'] + c['deregister'] for c in calls)}; "
          f"{load()}", flush=True)
    loop.probes.stop()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--containers", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--settle", type=float, default=10.0)
    parser.add_argument("--idle", type=float, default=60.0)
    parser.add_argument("--passes", type=int, default=10)
    args = parser.parse_args()
    client = docker.from_env(timeout=300, max_pool_size=args.threads)
    remove_labelled(client)
    hostname = f"scale{uuid.uuid4().hex[:6]}"
    agent = Agent().start()
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {load()}", flush=True)
    try:
        began = time.monotonic()

        def run(n: int) -> None:
            created = client.api.create_container(IMAGE, "sleep 36000", ports=[80], labels={LABEL: "1"},
                                                  name=f"{hostname}-{n}")
            client.api.start(created["Id"])
        with ThreadPoolExecutor(args.threads) as pool:
            list(pool.map(run, range(args.containers)))
        print(f"{args.containers} containers started in {time.monotonic() - began:.0f} s; {load()}", flush=True)
        as_process(args, agent, hostname)
        in_process(args, agent, hostname)
    finally:
        began = time.monotonic()
        remove_labelled(client)
        print(f"containers removed in {time.monotonic() - began:.0f} s", flush=True)
        agent.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
