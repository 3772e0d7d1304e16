"""A burst: --containers containers started at once from --threads threads,
then killed at once (method and figures in BENCHMARKS.md).

consul-reg runs (`-internal -resync 0`) against an agent of the benchmark's
own; the containers are created beforehand (busybox, port 80 exposed, not
published: no userland proxies). While they start, the benchmark polls the
agent's /v1/agent/services on one keep-alive connection as fast as it
answers, and takes for every service the time of the first answer that
holds it (and, after the kills, of the first that does not); the poll
period is printed, it bounds the resolution. Each is compared with Docker's
timeNano of that container's `start` (`die`) event. With --poll-gap, the
poll and the probe below wait between two requests, so that measuring does
not keep the agent busy (a listing of 200 records costs it 1-1.5 ms). The
daemon's peak RSS and CPU over the burst are read from /proc. Meanwhile a
probe thread times, one after another, what each start costs the daemon
besides its own work: an inspect of a created container (never started) and
a GET of an absent service from the agent (the guard's read), each on a
kept-alive connection.

Usage: .venv/bin/python bench/burst.py [--containers 200] [--threads 16] [--runs 2]
    [--resync 30 --across-resync 0.05] [--registrator /tmp/regbuild/registrator] [--floor]
    [--poll-gap 0.005]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DAEMON_CWD, IMAGE, LABEL, Agent, free_port  # noqa: E402
from common import cpu_seconds, daemon_env, describe_ms, load, proc_status  # noqa: E402
from common import remove_labelled  # noqa: E402
from event_latency import Events  # noqa: E402


TIMELINE: dict[str, list[tuple[int, int]]] | None = None  # --timeline: each container's (event, seen) ns
GAP = 0.0  # --poll-gap: seconds the listing poll and the probe wait between two requests


def watch(port: int, expected: set[str], present: bool, calls_done: threading.Event) -> tuple[dict[str, int], float]:
    """service ID -> time.time_ns() of the first poll that shows it (present) or no
    longer shows it, until all are seen or 30 s after the Docker calls returned;
    and the mean poll period in ms."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    seen: dict[str, int] = {}
    polls = 0
    began = time.monotonic()
    deadline = float("inf")
    while len(seen) < len(expected) and time.monotonic() < deadline:
        if calls_done.is_set() and deadline == float("inf"):
            deadline = time.monotonic() + 30
        if GAP and polls:
            time.sleep(GAP)
        connection.request("GET", "/v1/agent/services")
        listed = set(json.loads(connection.getresponse().read()))
        now = time.time_ns()
        polls += 1
        for service_id in expected - seen.keys():
            if (service_id in listed) == present:
                seen[service_id] = now
    connection.close()
    return seen, (time.monotonic() - began) * 1000 / max(polls, 1)


def probe(client: docker.DockerClient, reference: str, port: int, stop: threading.Event) -> dict[str, list[float]]:
    """Round trips (ms) of an inspect of `reference` and of the agent's GET of an absent
    service, alternated until `stop`."""
    timed: dict[str, list[float]] = {"inspect": [], "agent GET": []}
    agent = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    while not stop.is_set():
        if GAP:
            stop.wait(GAP)
        began = time.perf_counter()
        client.api.inspect_container(reference)
        timed["inspect"].append((time.perf_counter() - began) * 1000)
        began = time.perf_counter()
        agent.request("GET", "/v1/agent/service/burst-probe-absent")
        agent.getresponse().read()
        timed["agent GET"].append((time.perf_counter() - began) * 1000)
    agent.close()
    return timed


def phase(agent: Agent, events: Events, ids: dict[str, str], docker_call, action: str, present: bool,
          threads: int, probing=None) -> tuple[list[float], float, dict[str, int], float, dict]:
    """Make the Docker call for every container at once; (event -> seen ms for each,
    last seen - last event ms, seen times, poll period ms, what `probing(stop)`
    answered, run beside it until every service was seen)."""
    calls_done, seen_all = threading.Event(), threading.Event()
    result: dict = {}
    watcher = threading.Thread(target=lambda: (result.update(
        zip(("seen", "period"), watch(agent.http_port, set(ids.values()), present, calls_done))), seen_all.set()))
    watcher.start()
    prober = threading.Thread(target=lambda: result.update(probe=probing(seen_all))) if probing else None
    if prober:
        prober.start()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(docker_call, ids))
    calls_done.set()
    watcher.join()
    if prober:
        prober.join()
    times = {cid: events.wait(cid, action) for cid in ids}
    seen = result["seen"]
    if TIMELINE is not None:
        TIMELINE[action] = sorted((times[cid], seen.get(sid, 0)) for cid, sid in ids.items())
    latencies = [(seen[sid] - times[cid]) / 1e6 for cid, sid in ids.items() if sid in seen]
    return (latencies, (max(seen.values(), default=0) - max(times.values())) / 1e6, seen, result["period"],
            result.get("probe", {}))


def wait_resync(status_port: int, resync: float, lead: float) -> float:
    """Until `lead` seconds before the daemon's next resync is due (its /health says how
    long ago the last full pass was); returns the seconds waited."""
    deadline = time.monotonic() + 30
    while True:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", status_port, timeout=5)
            connection.request("GET", "/health")
            age = json.loads(connection.getresponse().read()).get("last_reconcile_seconds_ago")
            connection.close()
            if age is not None:
                break
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)
    wait = max(resync - age - lead, 0.0)
    time.sleep(wait)
    return wait


def one_run(args, client, agent: Agent, events: Events, run: int, subject: str) -> dict:
    hostname = f"burst{uuid.uuid4().hex[:6]}"
    id_host = socket.gethostname() if subject == "registrator" else hostname
    containers = []
    with ThreadPoolExecutor(args.threads) as pool:
        containers = list(pool.map(lambda n: client.api.create_container(
            IMAGE, "sleep 3600", ports=[80], labels={LABEL: "1"}, name=f"{hostname}-{n}",
            host_config=client.api.create_host_config(init=False)), range(args.containers)))
    ids = {c["Id"]: f"{id_host}:{hostname}-{n}:80" for n, c in enumerate(containers)}
    reference = client.api.create_container(IMAGE, "sleep 3600", labels={LABEL: "1"}, name=f"{hostname}-probe")["Id"]
    log = open(f"/tmp/consul-reg-bench-burst-{subject}-{hostname}.log", "wb")
    status_port = free_port()
    floor = subject.startswith("floor")
    if subject == "registrator":
        command = [args.registrator, "-internal", "-resync", "0", f"consul://127.0.0.1:{agent.http_port}"]
    elif floor:
        command = [sys.executable, str(Path(__file__).resolve().parent / "floor.py"), str(agent.http_port), hostname,
                   "--internal", *{"floor": [], "floor-guarded": ["--guarded"],
                                   "floor-mapped": ["--guarded", "--mapped", "--handoff"]}[subject]]
    else:
        resync = ["-resync", str(args.resync)] if args.resync != 30 else []  # 30: the default, not given
        command = [sys.executable, "-m", "consul_reg", "--hostname", hostname, "-internal", *resync,
                   "--status-addr", f"127.0.0.1:{status_port}", *(["--log-level", "DEBUG"] if args.debug else []),
                   agent.uri]
    daemon = subprocess.Popen(command, stdout=subprocess.PIPE if floor else log, stderr=log, env=daemon_env(args.code),
                              cwd=DAEMON_CWD)
    try:
        if floor:
            assert daemon.stdout is not None and daemon.stdout.readline().strip() == b"ready"
        time.sleep(3)  # connected, first full pass done
        placed = ""
        if subject == "consul-reg" and args.across_resync is not None and args.resync > 0:
            waited = wait_resync(status_port, args.resync, args.across_resync)
            placed = f"; burst started {args.across_resync * 1000:.0f} ms before the resync was due " \
                     f"(waited {waited:.1f} s)"
        cpu_before = cpu_seconds(daemon.pid)
        up_ms, last_up, registered, _, probed = phase(
            agent, events, ids, client.api.start, "start", True, args.threads,
            lambda stop: probe(client, reference, agent.http_port, stop))
        time.sleep(1)
        down_ms, last_down, gone, period, _ = phase(agent, events, ids, client.api.kill, "die", False, args.threads)
        cpu = cpu_seconds(daemon.pid) - cpu_before
        rss = proc_status(daemon.pid)["VmHWM"] / 1024
        print(f"run {run} {subject}: {len(registered)}/{len(ids)} registered; start -> visible {describe_ms(up_ms)}; "
              f"last one {last_up:.1f} ms after the last start event{placed}", flush=True)
        print(f"run {run} {subject}: meanwhile, one after another: inspect {describe_ms(probed['inspect'])}; "
              f"agent GET {describe_ms(probed['agent GET'])}", flush=True)
        print(f"run {run} {subject}: {len(gone)}/{len(ids)} removed; die -> gone {describe_ms(down_ms)}; "
              f"last one {last_down:.1f} ms after the last die event", flush=True)
        print(f"run {run} {subject}: missing {len(ids) - len(registered)}, left {len(ids) - len(gone)}; "
              f"agent polled every {period:.1f} ms; CPU {cpu:.2f} s, peak RSS {rss:.1f} MB; {load()}", flush=True)
        if args.timeline:
            with open(args.timeline, "a") as out:
                out.write(json.dumps({"run": run, "subject": subject, **(TIMELINE or {})}) + "\n")
        return {"subject": subject, "up": up_ms, "last_up": last_up, "down": down_ms, "last_down": last_down,
                "missing": len(ids) - len(registered), "left": len(ids) - len(gone)}
    finally:
        daemon.kill()
        daemon.wait(timeout=15)
        log.close()
        with ThreadPoolExecutor(args.threads) as pool:
            list(pool.map(lambda cid: client.api.remove_container(cid, force=True), [*ids, reference]))
        if subject != "consul-reg":  # what it left behind in the agent goes before the next run
            agent.deregister_all()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--containers", type=int, default=200)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--code", default="", help="run the daemon of another checkout (a directory)")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--resync", type=float, default=0, help="consul-reg's -resync (30 is its default)")
    parser.add_argument("--across-resync", type=float, default=None, metavar="SECONDS",
                        help="start the burst this long before consul-reg's resync is due (with --resync)")
    parser.add_argument("--registrator", default="", help="also measure gliderlabs/registrator's binary")
    parser.add_argument("--floor", action="store_true", help="also measure bench/floor.py, plain, --guarded "
                        "(one event after another: an inspect and a PUT, and the ownership read) and "
                        "--guarded --mapped --handoff (consul-reg's mapping, and its shape)")
    parser.add_argument("--timeline", default="", help="write each container's event and seen times (ns) here, "
                        "a JSON object per run and subject, one per line")
    parser.add_argument("--debug", action="store_true", help="consul-reg logs at DEBUG (its passes, in its log)")
    parser.add_argument("--poll-gap", type=float, default=0.0, metavar="SECONDS",
                        help="wait this long between two listings of the agent, and between two probes "
                        "(0: as fast as they answer, which keeps the agent busy)")
    args = parser.parse_args()
    global TIMELINE, GAP
    TIMELINE = {} if args.timeline else None
    GAP = args.poll_gap
    client = docker.from_env(timeout=120, max_pool_size=args.threads)
    agent = Agent().start()
    events = Events(client)
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {load()}", flush=True)
    try:
        for run in range(1, args.runs + 1):
            for subject in ("consul-reg", "registrator", "floor", "floor-guarded", "floor-mapped"):
                if subject == "registrator" and not (args.registrator and os.path.exists(args.registrator)):
                    continue
                if subject.startswith("floor") and not args.floor:
                    continue
                one_run(args, client, agent, events, run, subject)
    finally:
        events.close()
        remove_labelled(client)
        agent.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
