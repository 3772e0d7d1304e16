"""Where one event's time goes: consul-reg's Daemon in-process against an agent
of the benchmark's own, with time stamps (time.time_ns, the clock of Docker's
timeNano) taken at each step of a container's `start` and `die`: the event
read from the stream, the loop taking its batch, the inspect sent and
answered, the agent's listing read ahead for the batch (issue 24) or the
guard's read of the agent's record sent and answered, the register
(deregister) sent and answered. A step a path does not take is left out. Containers are started
and killed one at a time, --gap seconds apart. Prints the median of each
step. Method in BENCHMARKS.md.

With --burst ASKERS, every container is started at once (from ASKERS processes),
then, once all are registered, killed at once; each step's p50 and p90 over the
burst are printed, and beside them how much later the daemon's event thread
read each event than a process of its own that only reads Docker's event
stream ("a plain reader").

Usage: .venv/bin/python bench/trace_event.py [--containers 40] [--gap 0.3] [--burst ASKERS]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

import docker

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import IMAGE, LABEL, Agent, load, remove_labelled  # noqa: E402

from consul_reg.docker import client as docker_source

from consul_reg.sync import desires, early, loop, primary  # noqa: E402
from consul_reg.app.cli import parse_config  # noqa: E402
from consul_reg.app.daemon import Daemon  # noqa: E402
from consul_reg.consul import agent as consul  # noqa: E402
from consul_reg.core.messages import Stop  # noqa: E402

MARKS: dict[str, dict[str, int]] = defaultdict(dict)  # container or service ID -> step -> time_ns
BATCH: list[str] = []  # the container IDs of the batch the loop is handling
ACTIONS: dict[str, str] = {}  # of the batch's containers: their events' actions
NOTICING = threading.local()  # (container ID, "start" or "die") while Docker's event thread begins its reads


def instrument() -> None:
    events = docker_source.DockerSource.events

    def traced_events(self, since):
        stream = events(self, since)  # subscribed here, as the daemon's own call is

        def marked():
            for event in stream:
                actor = (event.get("Actor") or {}).get("ID", "")
                MARKS[actor].setdefault(f"{event.get('Action')} read", time.time_ns())
                MARKS[actor].setdefault(f"{event.get('Action')} docker", int(event.get("timeNano") or 0))
                yield event
        return marked()
    docker_source.DockerSource.events = traced_events

    handle = loop.Loop.handle

    def traced_handle(self, batch):
        now = time.time_ns()
        BATCH[:] = [m.container_id for m in batch if getattr(m, "container_id", "")]
        ACTIONS.clear()
        ACTIONS.update({m.container_id: m.action for m in batch if getattr(m, "container_id", "")})
        for message in batch:
            if getattr(message, "container_id", ""):
                MARKS[message.container_id].setdefault(f"{message.action} batch", now)
        return handle(self, batch)
    loop.Loop.handle = traced_handle

    noticed = early.EarlyReads.noticed

    def traced_noticed(self, event):
        # the reads begun on Docker's event thread as it reads the event (issue 24)
        NOTICING.event = (event.container_id, "die" if event.action in ("kill", "die") else "start")
        MARKS[event.container_id].setdefault(f"{event.action} noticed", time.time_ns())
        try:
            return noticed(self, event)
        finally:
            NOTICING.event = None
            MARKS[event.container_id].setdefault(f"{event.action} posted", time.time_ns())
    early.EarlyReads.noticed = traced_noticed

    inspect_later = docker_source.DockerSource.inspect_later
    inspect_result = docker_source._InspectLater.result

    def traced_inspect_later(self, container_id):
        MARKS[container_id].setdefault("inspect sent", time.time_ns())
        answer = inspect_later(self, container_id)
        answer.traced_id = container_id
        return answer

    def traced_inspect_result(self):
        container_id = getattr(self, "traced_id", "")
        MARKS[container_id].setdefault("inspect asked for", time.time_ns())
        try:
            return inspect_result(self)
        finally:
            MARKS[container_id].setdefault("inspect answered", time.time_ns())
    docker_source.DockerSource.inspect_later = traced_inspect_later
    docker_source._InspectLater.result = traced_inspect_result

    inspect = docker_source.DockerSource.inspect

    def traced_inspect(self, container_id):
        MARKS[container_id].setdefault("inspect sent", time.time_ns())
        try:
            return inspect(self, container_id)
        finally:
            MARKS[container_id].setdefault("inspect answered", time.time_ns())
    docker_source.DockerSource.inspect = traced_inspect

    later = consul.ConsulRegistry.services_in_later
    taken = consul._ServicesLater.result

    def traced_later(self, scope, wait=True):
        noticing = getattr(NOTICING, "event", None)
        batch = [noticing] if noticing else \
            [(cid, "die" if "start read ahead answered" in MARKS[cid] else "start") for cid in BATCH]
        for container_id, action in batch:
            MARKS[container_id].setdefault(f"{action} read ahead sent", time.time_ns())
        answer = later(self, scope, wait)
        answer.batch = batch
        return answer

    def traced_taken(self):
        for container_id, action in getattr(self, "batch", ()):
            MARKS[container_id].setdefault(f"{action} read ahead asked for", time.time_ns())
        try:
            return taken(self)
        finally:
            for container_id, action in getattr(self, "batch", ()):
                MARKS[container_id].setdefault(f"{action} read ahead answered", time.time_ns())
    consul.ConsulRegistry.services_in_later = traced_later
    consul._ServicesLater.result = traced_taken

    matching = consul.ConsulRegistry.services_matching

    def traced_matching(self, service_ids):
        # the start's read of a service, then its die's: each kept apart
        service_id = sorted(service_ids)[0]
        action = "die" if "register answered" in MARKS[service_id] else "start"
        MARKS[service_id].setdefault(f"{action} get sent", time.time_ns())
        try:
            return matching(self, service_ids)
        finally:
            MARKS[service_id].setdefault(f"{action} get answered", time.time_ns())
    consul.ConsulRegistry.services_matching = traced_matching

    build = desires.DesireBuilder.build

    def traced_build(self, container, env, key=""):
        try:
            return build(self, container, env, key)
        finally:
            MARKS[str(container.get("Id") or "")].setdefault("mapped", time.time_ns())
    desires.DesireBuilder.build = traced_build

    sync = primary.Primary.sync

    def traced_sync(self, *args, **kwargs):
        for container_id in BATCH:
            MARKS[container_id].setdefault(f"{ACTIONS.get(container_id, 'start')} sync", time.time_ns())
        return sync(self, *args, **kwargs)
    primary.Primary.sync = traced_sync

    for name in ("register", "deregister"):
        original = getattr(consul.ConsulRegistry, name)

        def traced(self, service, original=original, name=name):
            MARKS[service.id].setdefault(f"{name} sent", time.time_ns())
            try:
                return original(self, service)
            finally:
                MARKS[service.id].setdefault(f"{name} answered", time.time_ns())
        setattr(consul.ConsulRegistry, name, traced)


def thread_cpu() -> dict[str, int]:
    """Nanoseconds on a CPU of each of this process's threads, by name (Linux schedstat);
    threads of one name (the loop's I/O pool) are summed."""
    total: dict[str, int] = defaultdict(int)
    names = {t.native_id: t.name.split("_")[0] for t in threading.enumerate()}
    for task in Path("/proc/self/task").iterdir():
        try:
            ns = int((task / "schedstat").read_text().split()[0])
        except OSError:
            continue
        total[names.get(int(task.name), "other")] += ns
    return dict(total)


DOCKER_CONNECTION = """
import http.client, json, socket, sys, time, urllib.parse
class Unix(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect("/var/run/docker.sock")
connection = Unix("localhost")
"""  # the start of each helper process's script below

ASKER = DOCKER_CONNECTION + """
for line in sys.stdin:
    action, container_id = line.split()
    connection.request("POST", f"/containers/{container_id}/{action}")
    response = connection.getresponse()
    response.read()
    print(response.status, flush=True)
"""

READER = DOCKER_CONNECTION + """
query = urllib.parse.urlencode({"filters": json.dumps({"type": ["container"]})})
connection.request("GET", "/events?" + query)
stream = connection.getresponse()
print("ready", flush=True)
while line := stream.readline():
    now = time.time_ns()
    event = json.loads(line)
    print(event.get("Action"), event["Actor"]["ID"], now, flush=True)
"""


class PlainReader:
    """Docker's event stream read by a process of its own that does nothing else: when
    each event could be read, to compare with the daemon's event thread (--burst). Its
    lines are taken as they come (a full pipe would stop it reading Docker's stream)."""

    def __enter__(self) -> PlainReader:
        self.read_at: dict[tuple[str, str], int] = {}
        self.process = subprocess.Popen([sys.executable, "-c", READER], stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError("the plain event reader did not start")
        self.taker = threading.Thread(target=self._take, daemon=True)
        self.taker.start()
        return self

    def _take(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            words = line.split()
            if len(words) == 3 and words[2].isdigit():
                self.read_at[(words[0], words[1])] = int(words[2])

    def __exit__(self, *_: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        self.taker.join(timeout=10)


class DockerAsker:
    """`start` and `kill` requests made by a small process of its own, one at a time."""

    def __enter__(self) -> DockerAsker:
        self.process = subprocess.Popen([sys.executable, "-c", ASKER], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)
        return self

    def ask(self, action: str, container_id: str) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"{action} {container_id}\n")
        self.process.stdin.flush()
        status = self.process.stdout.readline().strip()
        if status not in ("204", "304"):
            raise RuntimeError(f"docker {action} {container_id[:12]}: {status or 'no answer'}")

    def __exit__(self, *_: object) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=10)


def ask_at_once(action: str, containers: list, askers: int) -> None:
    """One action for every container, from `askers` processes at once (a burst)."""
    def ask_share(share: list) -> None:
        with DockerAsker() as asker:
            for container in share:
                asker.ask(action, container.id)
    threads = [threading.Thread(target=ask_share, args=(containers[n::askers],)) for n in range(askers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def wait_for(mark: str, count: int, deadline: float = 60.0) -> None:
    """Until `count` services carry `mark` ("register answered": the burst's containers are
    all registered), polled; RuntimeError after `deadline` seconds."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if sum(1 for marks in list(MARKS.values()) if mark in marks) >= count:
            return
        time.sleep(0.05)
    raise RuntimeError(f"only {sum(1 for m in list(MARKS.values()) if mark in m)} of {count} services had "
                       f"{mark!r} within {deadline:.0f}s")


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--containers", type=int, default=40)
    parser.add_argument("--gap", type=float, default=0.3)
    parser.add_argument("--burst", type=int, default=0, metavar="ASKERS",
                        help="start (then kill) every container at once, from ASKERS processes; "
                             "prints each step's p50 / p90 over the burst")
    args = parser.parse_args()
    from loguru import logger

    logger.remove()
    logger.add(open("/dev/null", "w"), level="INFO", format="{time:YYYY-MM-DDTHH:mm:ss.SSSZ} {level: <7} {message}")
    instrument()
    client = docker.from_env(timeout=60)
    agent = Agent().start()
    hostname = f"trace{uuid.uuid4().hex[:6]}"
    daemon = Daemon(parse_config(["--hostname", hostname, "-resync", "0", agent.uri], {}))
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {load()}", flush=True)
    containers = []
    plain = PlainReader()
    try:
        containers = [client.containers.create(IMAGE, "sleep 3600", ports={"80/tcp": None}, labels={LABEL: "1"},
                                               name=f"{hostname}-{n}", stop_signal="SIGKILL")
                      for n in range(args.containers)]
        time.sleep(2)
        cpu_before = thread_cpu()
        # Docker is asked by a process of its own: a request made here would hold this
        # process's GIL in the very milliseconds the daemon's threads answer the event.
        if args.burst:
            with plain:
                ask_at_once("start", containers, args.burst)
                wait_for("register answered", len(containers))
                ask_at_once("kill", containers, args.burst)
                wait_for("deregister answered", len(containers))
        else:
            with DockerAsker() as asker:
                for container in containers:
                    asker.ask("start", container.id)
                    time.sleep(args.gap)
                for container in containers:
                    asker.ask("kill", container.id)
                    time.sleep(args.gap)
        time.sleep(1)
        cpu_after = thread_cpu()
        spent = {name: (cpu_after[name] - cpu_before.get(name, 0)) / 1e6 / (2 * len(containers)) for name in cpu_after}
        print("CPU per event by thread (ms, start and die averaged): " + ", ".join(
            f"{name} {ms:.3f}" for name, ms in sorted(spent.items(), key=lambda item: -item[1]) if ms >= 0.005))
        daemon.loop.post(Stop())
        thread.join(timeout=10)
    finally:
        remove_labelled(client)
        agent.stop()
    # In the order they come: the early inspect is sent before the event is posted (sync/early.py).
    steps = {"start": ["start docker", "start read", "inspect sent", "start posted", "start batch", "inspect asked for",
                       "inspect answered", "mapped", "start sync", "start get sent", "start get answered", "register sent",
                       "register answered"],
             "die": ["die docker", "die read", "die posted", "die batch", "die sync", "die get sent", "die get answered",
                     "deregister sent", "deregister answered"]}
    for action, names in steps.items():
        gaps: dict[str, list[float]] = defaultdict(list)
        for container in containers:
            marks = {**MARKS[container.id], **MARKS[f"{hostname}:{container.name}:80"]}
            present = [name for name in names if name in marks]
            if present[:1] != names[:1] or present[-1:] != names[-1:]:
                continue
            for before, after in zip(present, present[1:]):
                gaps[f"{before} -> {after}"].append((marks[after] - marks[before]) / 1e6)
            if f"{action} read ahead answered" in marks:
                sent, answered = marks[f"{action} read ahead sent"], marks[f"{action} read ahead answered"]
                gaps["(read ahead: batch -> sent)"].append((sent - marks[f"{action} batch"]) / 1e6)
                gaps["(read ahead: sent -> answered)"].append((answered - sent) / 1e6)
                asked = marks.get(f"{action} read ahead asked for", answered)
                gaps["(read ahead: sent -> taken up)"].append((asked - sent) / 1e6)
                gaps["(read ahead: taken up -> answered)"].append((answered - asked) / 1e6)
                gaps["(read ahead: answered -> write sent)"].append(
                    (marks[names[-2]] - answered) / 1e6)
            gaps["total"].append((marks[names[-1]] - marks[names[0]]) / 1e6)
            plain_read = getattr(plain, "read_at", {}).get((action, container.id))
            if plain_read is not None:
                gaps["(a plain reader's read -> ours)"].append((marks[f"{action} read"] - plain_read) / 1e6)
        if args.burst:
            print(f"{action} (n={len(gaps['total'])}): " + "; ".join(
                f"{step} {statistics.median(values):.2f} / {quantile(values, 0.9):.2f} (n={len(values)})"
                for step, values in gaps.items()) + " ms (p50 / p90)")
            continue
        print(f"{action} (n={len(gaps['total'])}): " + "; ".join(
            f"{step} {statistics.median(values):.2f} (n={len(values)})" for step, values in gaps.items())
            + " ms (medians)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
