"""Containers whose HEALTHCHECK probes stream huge events must not slow the daemon
down for everyone else. Each probe makes dockerd send exec_create, exec_start and
exec_die events carrying every label of the container: the daemon asks only for the
actions it acts on, so these never reach it. A health check that flaps sends a
health_status event, which the daemon does read, at every probe: each is decoded
once, however many pieces it arrives in.

Run in test_hostile_containers' own dockerd and agent: no other consul-reg on the
machine sees the flood.
"""

from __future__ import annotations

import datetime
import json
import re
import threading
import time
import uuid

import pytest

from consul_reg.docker.client import MAX_EVENT_BYTES, DockerSource
from consul_reg.core.messages import CONTAINER_ACTIONS
from tests.integration.conftest import free_ports, wait_until
from tests.integration.test_hostile_containers import (  # noqa: F401 (fixtures)
    assert_host_unharmed, host, own_docker, run_container, services_of_container, start)

pytestmark = pytest.mark.integration

ROUNDS = 3  # at least; more while the flood has not lasted FLOOD_SECONDS
FLOOD_SECONDS = 8
BOUND = 5.0  # seconds for one registration or removal while the flood runs (usually ~0.1 s)


def _probe_started(container) -> float:
    """When the container's last HEALTHCHECK probe started (dockerd's clock: this host's)."""
    container.reload()
    log = container.attrs["State"]["Health"]["Log"]
    stamp = log[-1]["Start"]  # 2024-01-02T03:04:05.123456789Z, or with an offset
    head, _, rest = stamp.partition(".")
    zone = rest.lstrip("0123456789")
    parsed = datetime.datetime.fromisoformat(head + (zone if zone != "Z" else "+00:00"))
    return parsed.timestamp() + float("0." + rest[:len(rest) - len(zone)] or 0)


def test_healthcheck_events_of_huge_labels_delay_no_other_container(host, own_docker, start_daemon, run_container,
                                                                    hostname):
    agent, api, sentinel = host
    daemon = start(start_daemon, agent, own_docker)
    # ~7 MiB of labels, just under the daemon's bound of one inspect or event (so it is read, not skipped);
    # a `}` every other byte, so that a decoder that retries at each brace retries at every piece
    labels = {f"FLOOD_{n}": "x}" * (512 * 1024 - 64) for n in range(7)}
    every_second = {"test": ["CMD", "true"], "interval": 1_000_000_000, "timeout": 5_000_000_000, "retries": 3}
    # healthy, unhealthy, healthy...: a health_status event (which the daemon must read) at every probe
    flapping = {**every_second, "retries": 1,
                "test": ["CMD-SHELL", "if [ -e /tmp/up ]; then rm /tmp/up; exit 1; else touch /tmp/up; fi"]}
    flooder, second_flooder = (run_container(labels=labels, healthcheck=flapping) for _ in range(2))
    # and one with more than any event may carry (dockerd takes labels far larger): its events are skipped unread
    huge = {f"HUGE_{n}": "x" * (1024 * 1024) for n in range(MAX_EVENT_BYTES // (1024 * 1024) + 4)}
    skipper = run_container(labels=huge, healthcheck=every_second)
    for container in (flooder, second_flooder, skipper):
        wait_until(lambda: container.reload() or container.attrs["State"]["Health"]["Status"] != "starting",
                   timeout=60, message="the flooder's first probe done")
    began = time.time()
    round_ = 0
    # rounds go on while the flooders probe: at least ROUNDS, and until FLOOD_SECONDS of their probes went by
    while round_ < ROUNDS or _probe_started(flooder) < began + FLOOD_SECONDS:
        assert round_ < 100, "the flooder stopped probing"
        good = run_container(ports={"80/tcp": None}, labels={"SERVICE_NAME": "well-behaved"})
        service_id = f"{hostname}:{good.name}:80"
        started = time.monotonic()
        wait_until(lambda: service_id in api.services(), timeout=BOUND, interval=0.05,
                   message=f"round {round_}: a container registered within {BOUND}s of its start during the flood")
        registered = time.monotonic() - started
        good.remove(force=True)
        started = time.monotonic()
        wait_until(lambda: service_id not in api.services(), timeout=BOUND, interval=0.05,
                   message=f"round {round_}: a container deregistered within {BOUND}s of its removal")
        print(f"round {round_}: registered in {registered:.2f}s, deregistered in {time.monotonic() - started:.2f}s")
        round_ += 1
    # The reader never sees the probes' exec_* events: of the skipper's, only its start and health_status
    # (unfiltered: 3 more a second). Skipped events are logged once per window of 5 s: let the flood last
    # past the window that counts every probe before `began`.
    wait_until(lambda: _probe_started(skipper) > began + 6, timeout=60, interval=0.5,
               message="the skipper's probes going on 6 s past the rounds' start")
    skipped = sum(int(n) for n in re.findall(r"skipped (\d+) event\(s\) longer than", daemon.log()))
    assert skipped <= 2, skipped
    assert_host_unharmed(api, daemon, run_container, hostname, sentinel)


def test_dockerd_sends_health_status_for_the_filter_and_no_exec_events(own_docker, run_container, monkeypatch):
    """dockerd 20.10's own reading of the filters the daemon asks: `event=health_status`
    matches "health_status: healthy" and "health_status: unhealthy" (a prefix match
    whenever the filter names health_status), and the probes' exec_* are not sent."""
    monkeypatch.setenv("DOCKER_HOST", own_docker[0])
    mark = uuid.uuid4().hex
    source = DockerSource(timeout=10, filters={"label": [f"crt-events={mark}"]})
    actions: list[str] = []
    both = threading.Event()

    def read(stream) -> None:  # until both health words came, through several probes (each: 3 exec events)
        for event in stream:
            actions.append(str(event.get("Action") or event.get("status")))
            if {"health_status: healthy", "health_status: unhealthy"} <= set(actions):
                both.set()
                return
    try:
        reader = threading.Thread(target=read, args=(source.events(f"{time.time() - 1:.9f}"),), daemon=True)
        reader.start()
        flapping = {"test": ["CMD-SHELL", "if [ -e /tmp/up ]; then rm /tmp/up; exit 1; else touch /tmp/up; fi"],
                    "interval": 1_000_000_000, "timeout": 5_000_000_000, "retries": 1}
        run_container(labels={"crt-events": mark}, healthcheck=flapping)
        assert both.wait(60), actions
    finally:
        source.close()
    assert actions[0] == "start"
    assert not [a for a in actions if a.startswith("exec")], actions
    assert {a.split(":")[0] for a in actions} <= CONTAINER_ACTIONS, actions


def heaviest_labels() -> dict[str, str]:
    """The review's worst case for the mapping (~264 KB): 128 tags of ~250 characters, 58 Meta
    values of 512, 16 tagged addresses, 32 SERVICE_CHECKS with 1 KiB Notes and Names, 32 header
    keys of 4,000 characters, a 2 KiB HTTP check path (~270 ms to map on this machine)."""
    labels = {"SERVICE_TAGS": ",".join(f"t{i:03d}" + "x" * 250 for i in range(128)),
              "SERVICE_CHECKS": json.dumps([{"TCP": ":1", "Notes": "n" * 1000, "Name": "m" * 1000}] * 32),
              "SERVICE_CHECK_HTTP": "/" + "p" * 2000, "SERVICE_CHECK_NOTES": "n" * 1000}
    labels.update({f"SERVICE_M{i:03d}": "v" * 512 for i in range(58)})
    labels.update({f"SERVICE_TAGGED_ADDRESS_A{i}": ("a" * 63 + ".") * 3 + "example.com:80" for i in range(16)})
    labels.update({f"SERVICE_CHECK_HTTP_HEADER_X{i}": "h" * 4000 for i in range(32)})
    return labels


REMAP_BOUND = 1.0  # seconds for one registration or removal beside four flapping heavy containers (~0.15 s;
# mapped at every event, 1.1-3.5 s here)


def test_flapping_health_of_heavy_containers_delays_no_other_container(host, own_docker, start_daemon,
                                                                        run_container, hostname):
    """Four containers with the heaviest labels, 64 ports published and a health that flaps
    every second: each health_status event re-reads the container (its status is new) but
    maps it again only if what the mapping reads changed. Mapped at each event (and at its
    recheck), they delayed another container's registration by 3.7-8.5 s."""
    agent, api, sentinel = host
    daemon = start(start_daemon, agent, own_docker)
    flapping = {"test": ["CMD-SHELL", "if [ -e /tmp/up ]; then rm /tmp/up; exit 1; else touch /tmp/up; fi"],
                "interval": 1_000_000_000, "timeout": 5_000_000_000, "retries": 1}
    # Host ports the kernel calls free: not from this dockerd's allocator, which would walk 256 ports
    # into the ones the machine's other dockerd hands out.
    host_ports = iter(free_ports(4 * 64))
    heavy = [run_container(labels=heaviest_labels(), healthcheck=flapping,
                           ports={f"{p}/tcp": ("127.0.0.1", next(host_ports)) for p in range(1, 65)})
             for _ in range(4)]
    for container in heavy:
        wait_until(lambda: services_of_container(api, container), timeout=60, message="a heavy container's services")
        wait_until(lambda: container.reload() or container.attrs["State"]["Health"]["Status"] != "starting",
                   timeout=60, message="its first probe done")
    began = time.time()
    round_, slowest = 0, 0.0
    while round_ < ROUNDS or _probe_started(heavy[-1]) < began + FLOOD_SECONDS:
        assert round_ < 100, "the heavy containers stopped probing"
        good = run_container(ports={"80/tcp": None}, labels={"SERVICE_NAME": "well-behaved"})
        service_id = f"{hostname}:{good.name}:80"
        started = time.monotonic()
        wait_until(lambda: service_id in api.services(), timeout=REMAP_BOUND, interval=0.05,
                   message=f"round {round_}: a container registered within {REMAP_BOUND}s beside the flapping ones")
        registered = time.monotonic() - started
        good.remove(force=True)
        started = time.monotonic()
        wait_until(lambda: service_id not in api.services(), timeout=REMAP_BOUND, interval=0.05,
                   message=f"round {round_}: a container deregistered within {REMAP_BOUND}s beside the flapping ones")
        deregistered = time.monotonic() - started
        slowest = max(slowest, registered, deregistered)
        print(f"round {round_}: registered in {registered:.2f}s, deregistered in {deregistered:.2f}s")
        round_ += 1
    print(f"slowest of {round_} rounds: {slowest:.2f}s")
    assert_host_unharmed(api, daemon, run_container, hostname, sentinel)
