"""Per-event latency as users see it: Docker's `timeNano` of a container's
`start` (`die`) event -> its service present in (gone from) the agent's
/v1/agent/service/<id>, for consul-reg and for the floor (bench/floor.py:
one inspect and one PUT per event, nothing else), the guarded floor (the
same plus the ownership read consul-reg makes: `floor.py --guarded`) and
registrator when its binary is there, in the same run, against an agent of
the benchmark's own. Also `floor-handoff` (the floor in consul-reg's shape: a
thread reads the events and hands each to the one thread that acts) and
`floor-mapped` (the same with the guarded read and consul-reg's own mapping
and registration body: `floor.py --guarded --mapped --handoff`). Method and
figures in BENCHMARKS.md.

For each subject in turn (floor, consul-reg, floor, consul-reg... for
--runs rounds): start it, warm it up with one container, then start the
--containers containers one at a time, --gap seconds apart; for each, the
benchmark polls the agent on a keep-alive connection (every --poll seconds)
from just before `docker start` until the service answers 200, and takes
the time of that answer; then it kills them one at a time and polls until
404. The event's timeNano comes from the benchmark's own event stream.
Also the subject's CPU seconds over the measurement and its peak RSS.

Usage: .venv/bin/python bench/event_latency.py [--containers 30] [--runs 2]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import docker

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DAEMON_CWD, IMAGE, LABEL, Agent, cpu_seconds  # noqa: E402
from common import daemon_env, describe_ms, load, percentile, proc_status  # noqa: E402
from common import remove_labelled  # noqa: E402

BENCH = Path(__file__).resolve().parent


class Events:
    """The benchmark's own event stream: (container ID, action) -> timeNano."""

    def __init__(self, client: docker.DockerClient) -> None:
        self.times: dict[tuple[str, str], int] = {}
        self._seen = threading.Condition()
        self._stream = client.api.events(decode=True, filters={"type": "container", "label": LABEL})
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for event in self._stream:
            with self._seen:
                self.times[(event["Actor"]["ID"], event.get("Action", ""))] = int(event["timeNano"])
                self._seen.notify_all()

    def wait(self, container_id: str, action: str, timeout: float = 10.0) -> int:
        with self._seen:
            self._seen.wait_for(lambda: (container_id, action) in self.times, timeout)
            return self.times.pop((container_id, action))

    def close(self) -> None:
        self._stream.close()


class Poller:
    """Polls GET /v1/agent/service/<id> on one keep-alive connection."""

    def __init__(self, port: int, interval: float) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.interval = interval

    def until(self, service_id: str, present: bool, timeout: float = 10.0) -> int:
        """time.time_ns() of the first answer saying the service is (not) there."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.connection.request("GET", f"/v1/agent/service/{service_id}")
            response = self.connection.getresponse()
            response.read()
            answered = time.time_ns()
            if (response.status == 200) == present:
                return answered
            time.sleep(self.interval)
        raise TimeoutError(f"{service_id} {'never appeared' if present else 'never went'}")


def in_thread(function, *args) -> threading.Thread:
    thread = threading.Thread(target=function, args=args)
    thread.start()
    return thread


def measure(subject: str, command: list[str], agent: Agent, client, events: Events, containers, hostname: str,
            args) -> dict:
    if subject == "registrator":  # its IDs are <the machine's host name>:<container>:<port>
        hostname = socket.gethostname()
    log = open(f"/tmp/consul-reg-bench-{subject}-{hostname}.log", "wb")
    floor = subject.startswith("floor")
    process = subprocess.Popen(command, stdout=subprocess.PIPE if floor else log, stderr=log,
                               env=daemon_env(args.before if subject == "consul-reg-before" else args.code),
                               cwd=DAEMON_CWD)
    poller = Poller(agent.http_port, args.poll)
    try:
        if floor:
            assert process.stdout is not None and process.stdout.readline().strip() == b"ready"
        time.sleep(1.0 if floor else 2.0)  # its first full pass done
        # Warm-up: one container through start and death, not counted.
        warm = containers[0]
        client.api.start(warm.id)
        poller.until(f"{hostname}:{warm.name}:80", True)
        client.api.kill(warm.id)
        poller.until(f"{hostname}:{warm.name}:80", False)
        events.wait(warm.id, "start"), events.wait(warm.id, "die")
        cpu_before = cpu_seconds(process.pid)
        started_ms, died_ms = [], []
        for container in containers[1:]:
            time.sleep(args.gap)
            starter = in_thread(client.api.start, container.id)
            visible = poller.until(f"{hostname}:{container.name}:80", True)
            starter.join()
            started_ms.append((visible - events.wait(container.id, "start")) / 1e6)
        for container in containers[1:]:
            time.sleep(args.gap)
            killer = in_thread(client.api.kill, container.id)
            gone = poller.until(f"{hostname}:{container.name}:80", False)
            killer.join()
            died_ms.append((gone - events.wait(container.id, "die")) / 1e6)
        cpu = cpu_seconds(process.pid) - cpu_before
        rss = proc_status(process.pid)["VmHWM"] / 1024
    finally:
        process.kill()
        process.wait(timeout=15)
        log.close()
        agent.deregister_all()  # each subject begins with an empty agent
    return {"start": started_ms, "die": died_ms, "cpu_ms_per_event": cpu * 1000 / (2 * len(started_ms)),
            "peak_rss_mb": rss}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--containers", type=int, default=30)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--gap", type=float, default=0.3, help="seconds between two containers")
    parser.add_argument("--poll", type=float, default=0.0005, help="seconds between two polls of the agent")
    parser.add_argument("--only", default="", help="floor, floor-guarded, floor-exact, floor-handoff, floor-mapped, "
                        "consul-reg, consul-reg-before or registrator, or several joined by commas: only these")
    parser.add_argument("--code", default="", help="run the daemon of another checkout (a directory)")
    parser.add_argument("--before", default="", help="also run the daemon of this checkout (a directory), as "
                        "consul-reg-before, in the same rounds: a change measured beside what it changes")
    parser.add_argument("--registrator", default="/tmp/regbuild/registrator",
                        help="gliderlabs/registrator's binary, measured too when it exists")
    parser.add_argument("--json", default="", help="also write the figures to this file")
    args = parser.parse_args()
    client = docker.from_env(timeout=60)
    agent = Agent().start()
    hostname = f"lat{uuid.uuid4().hex[:6]}"
    events = Events(client)
    containers = []
    results: list[tuple[str, dict]] = []
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {load()}", flush=True)
    try:
        for index in range(args.containers + 1):
            containers.append(client.containers.create(
                IMAGE, "sleep 3600", ports={"80/tcp": None}, labels={LABEL: "1"}, name=f"{hostname}-{index}",
                stop_signal="SIGKILL"))
        subjects = {
            "floor": [sys.executable, str(BENCH / "floor.py"), str(agent.http_port), hostname],
            "floor-guarded": [sys.executable, str(BENCH / "floor.py"), str(agent.http_port), hostname, "--guarded"],
            "floor-exact": [sys.executable, str(BENCH / "floor.py"), str(agent.http_port), hostname, "--guarded",
                            "--exact"],
            # consul-reg's shape (a reader thread hands events to one acting thread), without
            # its work; then with the least of its work a start needs (the read, the mapping).
            "floor-handoff": [sys.executable, str(BENCH / "floor.py"), str(agent.http_port), hostname, "--handoff"],
            "floor-mapped": [sys.executable, str(BENCH / "floor.py"), str(agent.http_port), hostname, "--guarded",
                             "--mapped", "--handoff"],
            "consul-reg": [sys.executable, "-m", "consul_reg", "--hostname", hostname, "-resync", "0", agent.uri],
        }
        if args.before:
            subjects["consul-reg-before"] = subjects["consul-reg"]
        if args.registrator and os.path.exists(args.registrator):  # never built here by the benchmark
            subjects["registrator"] = [args.registrator, "-resync", "0", "-ip", "127.0.0.1",
                                       f"consul://127.0.0.1:{agent.http_port}"]
        for run in range(args.runs):
            for subject, command in subjects.items():
                if args.only and subject not in args.only.split(","):
                    continue
                figures = measure(subject, command, agent, client, events, containers, hostname, args)
                results.append((subject, figures))
                print(f"run {run + 1} {subject:10} start->visible {describe_ms(figures['start'])}", flush=True)
                print(f"run {run + 1} {subject:10} die->gone      {describe_ms(figures['die'])}", flush=True)
                print(f"run {run + 1} {subject:10} CPU {figures['cpu_ms_per_event']:.2f} ms per event, "
                      f"peak RSS {figures['peak_rss_mb']:.1f} MB; {load()}", flush=True)
    finally:
        events.close()
        remove_labelled(client)
        agent.stop()
    for reference in ("floor", "floor-guarded"):
        floors = [f for s, f in results if s == reference]
        for name in ("floor-guarded", "floor-exact", "floor-handoff", "floor-mapped", "consul-reg",
                     "consul-reg-before", "registrator"):
            ours = [f for s, f in results if s == name]
            for kind in ("start", "die"):
                for ours_run, floor_run in zip(ours, floors) if name != reference else ():
                    ratio50 = statistics.median(ours_run[kind]) / statistics.median(floor_run[kind])
                    ratio90 = percentile(ours_run[kind], 0.9) / percentile(floor_run[kind], 0.9)
                    print(f"{kind}: {name} / {reference} p50 x{ratio50:.2f}, p90 x{ratio90:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
