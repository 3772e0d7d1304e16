"""A dockerd of the benchmarks' own, so that hundreds of containers never land
on a shared one: own socket, data root, exec root and bridge (no NAT, no
iptables: -internal containers are reached on the bridge from the host).

    .venv/bin/python bench/own_dockerd.py start DIR [--bridge spdbr0 --cidr 10.213.0.1/22]
    DOCKER_HOST=unix://DIR/docker.sock .venv/bin/python bench/burst.py
    .venv/bin/python bench/own_dockerd.py stop DIR

`start` prints the DOCKER_HOST line and builds the test image there
(scripts/make-test-image.sh). `stop` removes every container of that dockerd,
stops it, deletes the bridge and DIR. A /22 holds 1,022 containers (scale.py's
1,000). Never `--bridge none`: a dockerd started so deletes docker0.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import docker

ROOT = Path(__file__).resolve().parents[1]


def start(directory: Path, bridge: str, cidr: str) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["ip", "link", "show", bridge], capture_output=True).returncode != 0:
        subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
        subprocess.run(["ip", "addr", "add", cidr, "dev", bridge], check=True)
        subprocess.run(["ip", "link", "set", bridge, "up"], check=True)
    host = f"unix://{directory / 'docker.sock'}"
    with open(directory / "dockerd.log", "ab") as log:
        process = subprocess.Popen(
            ["dockerd", "--host", host, "--data-root", str(directory / "root"), "--exec-root",
             str(directory / "exec"), "--pidfile", str(directory / "docker.pid"), "--bridge", bridge,
             "--iptables=false", "--ip-masq=false"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    (directory / "bridge").write_text(bridge)
    deadline = time.monotonic() + 60
    while True:
        try:
            docker.DockerClient(base_url=host, timeout=5).ping()
            break
        except Exception:
            if process.poll() is not None or time.monotonic() > deadline:
                print(f"dockerd did not come up; see {directory / 'dockerd.log'}", file=sys.stderr)
                return 1
            time.sleep(0.2)
    subprocess.run(["sh", str(ROOT / "scripts" / "make-test-image.sh")], check=True, env={**os.environ,
                                                                                          "DOCKER_HOST": host})
    print(f"DOCKER_HOST={host}  (dockerd pid {process.pid})")
    return 0


def stop(directory: Path) -> int:
    host = f"unix://{directory / 'docker.sock'}"
    pidfile = directory / "docker.pid"
    if pidfile.exists():
        try:
            client = docker.DockerClient(base_url=host, timeout=120)
            for container in client.api.containers(all=True):
                client.api.remove_container(container["Id"], force=True)
        except Exception as error:
            print(f"could not remove the containers: {error}", file=sys.stderr)
        pid = int(pidfile.read_text())
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
    bridge_file = directory / "bridge"
    if bridge_file.exists():
        subprocess.run(["ip", "link", "delete", bridge_file.read_text().strip()], capture_output=True)
    subprocess.run(["sh", "-c", f"grep -o ' {directory}[^ ]*' /proc/mounts | sort -r | xargs -r -n1 umount -l"],
                   capture_output=True)
    shutil.rmtree(directory, ignore_errors=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--bridge", default="spdbr0")
    parser.add_argument("--cidr", default="10.213.0.1/22")
    args = parser.parse_args()
    return start(args.directory, args.bridge, args.cidr) if args.action == "start" else stop(args.directory)


if __name__ == "__main__":
    sys.exit(main())
