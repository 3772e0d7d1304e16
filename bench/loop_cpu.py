"""The daemon's own work per event, without Docker's or the agent's: the
sync loop (router, desire, mapping, plan, apply, snapshot, logging) fed
`start` and `die` hints, with an inspect answer taken once from the real
dockerd (a busybox container, one published port) and an agent that only
records. Measured as the loop thread's CPU time (time.thread_time), so the
machine's load matters little; with --known other containers already
registered, to show what grows with their number. With --gap, the thread
sleeps that long before each event, as the daemon idles between events on a
quiet host: the same work then takes more CPU time (the core, not the code).

Usage: .venv/bin/python bench/loop_cpu.py [--events 300] [--known 0,1000] [--profile] [--gap 0.01]
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import json
import pstats
import sys
import time
from pathlib import Path

import docker

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import IMAGE, LABEL, describe_ms  # noqa: E402

from loguru import logger  # noqa: E402

from consul_reg.core.calls import Ready  # noqa: E402

from consul_reg.app.config import Config  # noqa: E402
from consul_reg.sync.desires import DesireBuilder  # noqa: E402
from consul_reg.probes.scheduler import ProbeScheduler  # noqa: E402
from consul_reg.sync.loop import Loop, LoopSettings  # noqa: E402
from consul_reg.app.metrics import Metrics  # noqa: E402
from consul_reg.core.records import registered_form  # noqa: E402
from consul_reg.consul.agent import registration_payload  # noqa: E402
from consul_reg.core.records import AgentInfo  # noqa: E402
from consul_reg.core.messages import DockerEvent, Reload, Start  # noqa: E402

HOST = "bench"


class Docker:
    def __init__(self, template: dict, summary: dict) -> None:
        self.template = template
        self.summary = summary
        self.containers: dict[str, dict] = {}

    def add(self, index: int) -> str:
        data = copy.deepcopy(self.template)
        data["Id"] = f"{index:064x}"
        data["Name"] = f"/c{index}"
        self.containers[data["Id"]] = data
        return data["Id"]

    def list_containers(self) -> list[dict]:
        """Docker's listing as decoded from its answer: each entry a copy of a real one."""
        return json.loads(json.dumps([{**self.summary, "Id": cid, "Names": [c["Name"]]}
                                      for cid, c in self.containers.items()]))

    def inspect(self, container_id: str) -> dict | None:
        found = self.containers.get(container_id)
        return json.loads(json.dumps(found)) if found is not None else None  # a fresh dict, as a real inspect

    def inspect_later(self, container_id: str):  # never posted to: the benchmark calls handle() itself
        raise NotImplementedError

    def request_env_file(self, container_id: str, path: str) -> None:
        pass  # the benchmark's container names no env file

    def exec_in_container(self, *args) -> tuple[int, str]:
        return 0, ""


class Agent:
    description = "null agent"

    def __init__(self) -> None:
        self.records: dict = {}
        self.filter_cpu = 0.0  # thread CPU seconds spent filtering as the agent would

    def agent_info(self) -> AgentInfo:
        return AgentInfo("1.8.7", "node", "node-1", "127.0.0.1", True)

    def services(self) -> dict:
        return dict(self.records)

    def register(self, service) -> None:
        json.dumps(registration_payload(service)).encode()  # the body the real client builds
        self.records[service.id] = registered_form(service)

    def deregister(self, service) -> None:
        self.records.pop(service.id, None)

    def check_owners(self, check_ids=None) -> dict:
        return {}  # the benchmark's container declares no check

    def services_in_later(self, scope, wait=True):  # the batch's read ahead, answered at once
        # The real agent filters on its side: the loop's thread never pays for it, so
        # the time this fake takes is counted apart and taken out of each event's.
        began = time.thread_time()
        answer = {sid: record for sid, record in self.records.items() if scope.covers(sid)}
        self.filter_cpu += time.thread_time() - began
        return Ready(answer)

    def update_check(self, *args) -> None:
        pass

    def enable_maintenance(self, *args) -> None:
        pass

    def disable_maintenance(self, *args) -> None:
        pass

    def maintenance_reasons(self, service_ids) -> dict:
        return {}

    def ours_now(self, service_ids, container_id) -> set:
        return set(service_ids)

    def checked_against(self, held):
        return self  # records only: nothing to check


def real_inspect() -> tuple[dict, dict]:
    """A running busybox container's inspect answer and listing entry."""
    client = docker.from_env(timeout=60)
    container = client.containers.create(IMAGE, "sleep 60", ports={"80/tcp": None}, labels={LABEL: "1"})
    try:
        container.start()
        return (client.api.inspect_container(container.id),
                client.api.containers(filters={"id": container.id})[0])
    finally:
        container.remove(force=True)


def build_loop(template: dict, summary: dict, known: int) -> tuple[Loop, Docker]:
    config = Config(hostname=HOST, registry_uris=("consul://x",), resync_seconds=0)
    docker_api, agent = Docker(template, summary), Agent()
    settings = config.mapping_settings("127.0.0.1", "bench", "1.8.7", True)
    loop = Loop(LoopSettings(owner=HOST, resync_seconds=0, retry_interval=1.0), docker_api, agent,
                DesireBuilder(config.container_rules(), docker_api, settings),
                ProbeScheduler(agent, docker_api, lambda *a: None), metrics=Metrics())
    for index in range(known):
        docker_api.add(index)
    loop.handle([Start(agent.agent_info())])
    assert len(agent.records) == known
    return loop, docker_api


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--known", default="0,1000")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--sort", default="tottime")
    parser.add_argument("--passes", type=int, default=5, help="in-sync full passes timed")
    parser.add_argument("--passes-only", action="store_true", help="only the full passes (profiled with --profile)")
    parser.add_argument("--gap", type=float, default=0.0, help="seconds slept before each event (0: back to back)")
    args = parser.parse_args()
    logger.remove()
    logger.add(open("/dev/null", "w"), level="INFO", format="{time:YYYY-MM-DDTHH:mm:ss.SSSZ} {level: <7} {message}")
    template, summary = real_inspect()
    for known in (int(k) for k in args.known.split(",")):
        loop, docker_api = build_loop(template, summary, known)
        passes = []
        for _ in range(args.passes):
            began = time.thread_time()
            loop.handle([Reload()])
            passes.append((time.thread_time() - began) * 1000)
        print(f"{known} other containers: in-sync full pass CPU {describe_ms(passes)} (the listing decoded "
              "from JSON included, the agent's answer not)")
        if args.passes_only:
            if args.profile:
                profile = cProfile.Profile(time.thread_time)
                profile.enable()
                loop.handle([Reload()])
                profile.disable()
                pstats.Stats(profile).strip_dirs().sort_stats(args.sort).print_stats(40)
            continue
        profile = cProfile.Profile(time.thread_time) if args.profile else None
        start_ms, die_ms = [], []
        for n in range(args.events):
            container_id = docker_api.add(100_000 + n)
            for action, into in (("start", start_ms), ("die", die_ms)):
                if args.gap:
                    time.sleep(args.gap)
                hint = DockerEvent(container_id, action, time.time_ns(), exit_code="137" if action == "die" else "")
                if profile:
                    profile.enable()
                began, filtered = time.thread_time(), loop.primary.agent.filter_cpu
                loop.handle([hint])
                into.append((time.thread_time() - began - (loop.primary.agent.filter_cpu - filtered)) * 1000)
                if profile:
                    profile.disable()
            del docker_api.containers[container_id]
        if args.gap:
            print(f"{known} other containers: each event after {args.gap * 1000:g} ms asleep")
        print(f"{known} other containers: start batch CPU {describe_ms(start_ms)}")
        print(f"{known} other containers: die batch CPU   {describe_ms(die_ms)}")
        if profile:
            pstats.Stats(profile).strip_dirs().sort_stats(args.sort).print_stats(40)
    return 0


if __name__ == "__main__":
    sys.exit(main())
