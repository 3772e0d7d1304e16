"""Time and peak memory of reading env files and running exec checks from hostile containers.

Method (BENCHMARKS.md): one busybox container (with --init) holding a directory with a
sparse 1 TiB file, a 10 MiB file, a 64 KiB file and a 20-byte env file. Each case calls
DockerSource.read_file / exec_in_container in this process `--runs` times; before each
call /proc/self/clear_refs is written "5" so VmHWM restarts at the current RSS, and the
peak growth is VmHWM after the call minus VmRSS before it. CPU is this process's
time.process_time() over the call. For the normal cases docker-py's own exec (create,
start, inspect on the sync loop's kind of client) is timed the same way, as reference.

    .venv/bin/python bench/container_io.py [--runs 20]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable

import docker

from consul_reg.docker.client import DockerSource, FileUnreadable

IMAGE = "consul-reg-test/busybox:latest"
LIMIT = 64 * 1024


def memory_kib(key: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(key + ":"))


def measure(action: Callable[[], Any], runs: int) -> dict[str, Any]:
    seconds, growth, cpu, outcome = [], [], [], ""
    for _ in range(runs):
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        before, started, cpu_started = memory_kib("VmRSS"), time.monotonic(), time.process_time()
        try:
            result = action()
            outcome = f"{result[0]}" if isinstance(result, tuple) else "text"
        except FileUnreadable:
            outcome = "FileUnreadable"
        seconds.append(time.monotonic() - started)
        cpu.append(time.process_time() - cpu_started)
        growth.append(memory_kib("VmHWM") - before)
    return {"outcome": outcome, "p50_ms": statistics.median(seconds) * 1000, "max_ms": max(seconds) * 1000,
            "cpu_ms": statistics.median(cpu) * 1000, "peak_growth_kib": max(growth)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    client = docker.from_env()
    container = client.containers.run(
        IMAGE, ["sh", "-c", "mkdir /data && truncate -s 1099511627776 /data/big && "
                            "head -c 10485760 /dev/zero > /ten && head -c 65536 /dev/zero | tr '\\0' a > /cap && "
                            "echo SERVICE_NAME=web > /svc.env && exec sleep 3600"],
        detach=True, init=True, labels={"consul-reg-test": "bench"}, stop_signal="SIGKILL")
    source = DockerSource()
    try:
        deadline = time.monotonic() + 30
        while container.exec_run(["test", "-s", "/svc.env"]).exit_code != 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        cases: list[tuple[str, Callable[[], Any], int]] = [
            ("read: directory holding a sparse 1 TiB file", lambda: source.read_file(container.id, "/data", LIMIT, 10), args.runs),
            ("read: the sparse 1 TiB file itself", lambda: source.read_file(container.id, "/data/big", LIMIT, 10), args.runs),
            ("read: 10 MiB regular file", lambda: source.read_file(container.id, "/ten", LIMIT, 10), args.runs),
            ("read: 64 KiB file (at the cap)", lambda: source.read_file(container.id, "/cap", LIMIT, 10), args.runs),
            ("read: 18-byte env file", lambda: source.read_file(container.id, "/svc.env", LIMIT, 10), args.runs),
            ("exec: `true`", lambda: source.exec_in_container(container.id, "true", 10), args.runs),
            ("exec: `true` via docker-py (reference)", lambda: docker_py_exec(client, container.id, "true"), args.runs),
            ("exec: `yes`, timeout 2 s", lambda: source.exec_in_container(container.id, "yes", 2), max(3, args.runs // 4)),
            ("exec: `sleep 100`, timeout 1 s", lambda: source.exec_in_container(container.id, "sleep 100", 1),
             max(3, args.runs // 4)),
        ]
        print("| case | outcome | p50 ms | max ms | CPU p50 ms | peak RSS growth KiB |")
        print("|---|---|---|---|---|---|")
        for name, action, runs in cases:
            row = measure(action, runs)
            print(f"| {name} | {row['outcome']} | {row['p50_ms']:.1f} | {row['max_ms']:.1f} | {row['cpu_ms']:.1f} | "
                  f"{row['peak_growth_kib']} |")
        left = [p[-1] for p in container.top()["Processes"] if "sleep 3600" not in p[-1]]
        print(f"\nprocesses left behind by the timed-out execs: {left or 'none'}")
    finally:
        source.close()
        container.remove(force=True)


def docker_py_exec(client: docker.DockerClient, container_id: str, command: str) -> tuple[int, str]:
    created = client.api.exec_create(container_id, ["/bin/sh", "-c", command])
    output = client.api.exec_start(created["Id"])
    return client.api.exec_inspect(created["Id"])["ExitCode"], output.decode()


if __name__ == "__main__":
    main()
