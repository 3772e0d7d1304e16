"""Heartbeats at the agent's capacity (method and figures in BENCHMARKS.md).

1. The agent's own ceiling: N port-less services, each with a TTL check, are
   registered in an agent of the benchmark's own; then plain clients
   (http.client, one kept-alive connection per thread) send TTL updates as
   fast as it answers, with 1, 2, 4 and 8 threads, --ceiling-seconds each.
   The best rate is the ceiling.
2. consul-reg's ProbeScheduler alone, in a child process, over the same N
   checks (through the daemon's own Consul client), with the heartbeat
   interval set so that the checks ask for each of --factors times the
   ceiling, --seconds each. Reported: the rate served, lateness (due -> on
   the wire) after the first round and from the third interval on, the
   first round (every check reports at once when added, then at a random
   phase of its interval), the child's CPU per update and peak RSS, and
   whether the overload warning was logged. --code runs the scheduler of
   another checkout (before/after).

Usage: .venv/bin/python bench/heartbeats.py [--checks 2000] [--seconds 90]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, os.environ.get("CONSUL_REG_CODE") or str(Path(__file__).resolve().parents[1]))
from common import Agent, cpu_seconds, load, percentile  # noqa: E402

PREFIX = "hb"


def check_id(n: int) -> str:
    return f"service:{PREFIX}-{n}:heartbeat"


def register_all(agent: Agent, count: int) -> None:
    def register(n: int) -> None:
        body = json.dumps({"ID": f"{PREFIX}-{n}", "Name": "bench-worker",
                           "Checks": [{"CheckID": check_id(n), "Name": "hb", "TTL": "300s"}]}).encode()
        status, _ = agent.request("PUT", "/v1/agent/service/register", body)
        assert status == 200
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(register, range(count)))


def ceiling(agent: Agent, count: int, threads: int, seconds: float) -> tuple[float, float, float]:
    """TTL updates per second the agent served to `threads` plain clients; the
    clients' and the agent's CPU per update (ms)."""
    done = [0] * threads
    stop = time.monotonic() + seconds

    def send(index: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", agent.http_port, timeout=30)
        body = json.dumps({"Status": "passing", "Output": "ceiling"}).encode()
        n = index
        while time.monotonic() < stop:
            connection.request("PUT", f"/v1/agent/check/update/{check_id(n % count)}", body=body)
            response = connection.getresponse()
            response.read()
            assert response.status == 200, response.status
            done[index] += 1
            n += threads
    began, client_cpu, agent_cpu = time.monotonic(), time.process_time(), cpu_seconds(agent.process.pid)
    workers = [threading.Thread(target=send, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    updates = max(sum(done), 1)
    return (sum(done) / (time.monotonic() - began), (time.process_time() - client_cpu) * 1000 / updates,
            (cpu_seconds(agent.process.pid) - agent_cpu) * 1000 / updates)


def child(uri: str, count: int, interval: float, seconds: float, senders: int) -> None:
    from loguru import logger

    from consul_reg.probes.scheduler import ProbeScheduler
    from consul_reg.core.records import Check, ContainerStatus, DaemonProbe, Service
    import consul_reg
    from consul_reg.app.uris import from_uri

    print(f"scheduler from {Path(consul_reg.__file__).parent}", file=sys.stderr)
    warnings: list[str] = []
    logger.remove()
    logger.add(lambda message: warnings.append(str(message)), level="WARNING", format="{message}")
    services = {f"c{n}": [Service(id=f"{PREFIX}-{n}", name="bench-worker", address="", port=None,
                                  container_id=f"c{n}",
                                  checks=(Check(check_id(n), "hb", (("TTL", "300s"),),
                                                DaemonProbe("heartbeat", interval, container_id=f"c{n}")),))]
                for n in range(count)}
    sends: list[tuple[float, float | None]] = []  # (when, lateness)
    loads: list[tuple[float, float, bool]] = []
    options = {"on_sent": lambda late: sends.append((time.monotonic(), late)), "on_load": lambda *l: loads.append(l)}
    if senders:
        options["senders"] = senders
    try:
        scheduler = ProbeScheduler(from_uri(uri, token=None), None, lambda *a: None, **options)  # type: ignore
    except TypeError:  # a checkout from before the load watch (--code)
        del options["on_load"]
        scheduler = ProbeScheduler(from_uri(uri, token=None), None, lambda *a: None, **options)  # type: ignore
    scheduler.start()
    cpu_start, wall_start = time.process_time(), time.monotonic()
    scheduler.replace_all(services, {cid: ContainerStatus(running=True) for cid in services})
    time.sleep(seconds)
    cpu, wall = time.process_time() - cpu_start, time.monotonic() - wall_start
    scheduler.stop()
    first_round = sends[count - 1][0] - wall_start if len(sends) >= count else float("nan")
    later = sorted(late for _, late in sends[count:] if late is not None) or [float("nan")]
    settled_from = wall_start + first_round + 2 * interval  # the first round's wake has passed
    steady_late = sorted(late for when, late in sends[count:] if late is not None and when - late >= settled_from) \
        or [float("nan")]
    steady = [when for when, _ in sends if when >= wall_start + max(first_round, interval)]
    served = len(steady) / (wall_start + seconds - (wall_start + max(first_round, interval))) \
        if steady else float("nan")
    with open("/proc/self/status") as status:
        rss = next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM:"))
    print(json.dumps({
        "sent": len(sends), "served_per_s": served, "first_round_s": first_round, "cpu_share": cpu / wall,
        "cpu_ms_per_update": cpu * 1000 / max(len(sends), 1), "rss_mb": rss,
        "late_p50": statistics.median(later), "late_p99": percentile(later, 0.99), "late_max": later[-1],
        "steady_p50": statistics.median(steady_late), "steady_p99": percentile(steady_late, 0.99),
        "steady_max": steady_late[-1],
        "warned": any("SERVICE_HEARTBEAT_INTERVAL" in w for w in warnings), "loads": loads}))


def run_child(agent: Agent, count: int, interval: float, seconds: float, code: str, senders: int) -> dict:
    env = dict(os.environ, CONSUL_REG_CODE=code) if code else None
    agent_cpu = cpu_seconds(agent.process.pid)
    result = subprocess.run([sys.executable, __file__, "--child", agent.uri, "--checks", str(count),
                             "--interval", str(interval), "--seconds", str(seconds), "--senders", str(senders)],
                            stdout=subprocess.PIPE, text=True, check=True, env=env)
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    figures["agent_cpu_ms_per_update"] = (cpu_seconds(agent.process.pid) - agent_cpu) * 1000 / max(figures["sent"], 1)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checks", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=90.0)
    parser.add_argument("--ceiling-seconds", type=float, default=10.0)
    parser.add_argument("--factors", default="0.5,0.8,2", help="rates asked, as multiples of the ceiling")
    parser.add_argument("--code", default="", help="run the scheduler of another checkout (a directory)")
    parser.add_argument("--child", default="")
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--senders", type=int, default=0, help="the scheduler's sender threads (0: its default)")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.checks, args.interval, args.seconds, args.senders)
        return 0
    agent = Agent().start()
    try:
        print(f"{time.strftime('%Y-%m-%d %H:%M')}, {load()}", flush=True)
        register_all(agent, args.checks)
        rates = {threads: max(ceiling(agent, args.checks, threads, args.ceiling_seconds) for _ in range(2))
                 for threads in (1, 2, 4, 8)}
        best = max(rate for rate, _, _ in rates.values())
        print(f"{args.checks} TTL checks; agent ceiling (plain clients, best of 2 x {args.ceiling_seconds:g} s; "
              "CPU per update of the clients / the agent): " +
              ", ".join(f"{t} thread{'s' if t > 1 else ''} {r:.0f}/s ({c:.2f} / {a:.2f} ms)"
                        for t, (r, c, a) in rates.items()) + f"; {load()}", flush=True)
        for factor in (float(f) for f in args.factors.split(",")):
            interval = args.checks / (factor * best)
            figures = run_child(agent, args.checks, interval, args.seconds, args.code, args.senders)
            print(f"scheduler, asked {factor:g} x ceiling ({factor * best:.0f}/s, interval {interval:.1f} s): "
                  f"served {figures['served_per_s']:.0f}/s ({figures['served_per_s'] / best * 100:.0f}% of the "
                  f"ceiling); lateness after the first round p50 {figures['late_p50'] * 1000:.0f} ms, "
                  f"p99 {figures['late_p99'] * 1000:.0f} ms, max {figures['late_max'] * 1000:.0f} ms; from the third "
                  f"interval on p50 {figures['steady_p50'] * 1000:.0f} ms, p99 {figures['steady_p99'] * 1000:.0f} ms, "
                  f"max {figures['steady_max'] * 1000:.0f} ms; first round "
                  f"{figures['first_round_s']:.1f} s; CPU {figures['cpu_ms_per_update']:.2f} ms/update "
                  f"(the agent's: {figures['agent_cpu_ms_per_update']:.2f} ms) "
                  f"({figures['cpu_share'] * 100:.1f}% of a core); peak RSS {figures['rss_mb']:.1f} MB; overload "
                  f"warning {'logged' if figures['warned'] else 'not logged'}; {load()}", flush=True)
    finally:
        agent.stop()
    return 0


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
    sys.exit(main())
