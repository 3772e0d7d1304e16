"""What Docker lets a container declare, and what inspecting it costs the daemon
(method and figures in BENCHMARKS.md). Run it on a dockerd of your own
(bench/own_dockerd.py): it creates containers with one label, or one env
variable, of --sizes MiB each (created, not started: a started process's env is
bounded by execve, a created container's is not).

For each: whether dockerd accepted it, then `DockerSource.inspect` in this
process (consul_reg of --code, for before/after): the outcome, the wall time,
and the peak RSS growth (`/proc/self/clear_refs` gets 5 first, so VmHWM restarts
at the current RSS). Every container is removed at the end.

Usage: DOCKER_HOST=unix:///tmp/spd/docker.sock .venv/bin/python bench/inspect_bound.py [--sizes 1,8,9,64]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import IMAGE, LABEL, load, proc_status, remove_labelled  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1,8,9,64")
    parser.add_argument("--code", default="", help="a directory holding another checkout's consul_reg")
    args = parser.parse_args()
    if args.code:
        sys.path.insert(0, args.code)
    import docker

    from consul_reg.docker.client import DockerSource
    client = docker.from_env(timeout=300)
    source = DockerSource(timeout=60)
    import consul_reg
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {load()}, consul_reg from {consul_reg.__file__}", flush=True)
    try:
        for mib in (float(s) for s in args.sizes.split(",")):
            value = "x" * int(mib * 1024 * 1024)
            for kind in ("label", "env"):
                try:
                    created = client.api.create_container(
                        IMAGE, "true", labels={LABEL: "1", **({"big": value} if kind == "label" else {})},
                        environment=[f"BIG={value}"] if kind == "env" else None)
                except Exception as error:
                    print(f"{mib:g} MiB {kind}: dockerd refused it: {str(error)[:200]}", flush=True)
                    continue
                Path("/proc/self/clear_refs").write_text("5")
                before = proc_status_self()["VmRSS"]
                began = time.perf_counter()
                try:
                    answer = source.inspect(created["Id"])
                    outcome = f"read ({len(str(answer)) // 1024} KiB as text)"
                except Exception as error:
                    outcome = f"{type(error).__name__}: {str(error)[-120:]}"
                spent = (time.perf_counter() - began) * 1000
                grown = proc_status_self()["VmHWM"] - before
                answer = None
                print(f"{mib:g} MiB {kind}: accepted by dockerd; inspect {spent:.0f} ms, peak RSS growth "
                      f"{grown / 1024:.1f} MB; {outcome}", flush=True)
                client.api.remove_container(created["Id"], force=True)
    finally:
        source.close()
        remove_labelled(client)
    return 0


def proc_status_self() -> dict[str, int]:
    import os
    return proc_status(os.getpid())


if __name__ == "__main__":
    sys.exit(main())
