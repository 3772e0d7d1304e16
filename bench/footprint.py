"""The idle daemon's footprint (method and figures in BENCHMARKS.md).

1. consul-reg at its defaults (-resync 30, no mirror, no status endpoint)
   against an agent of the benchmark's own: after --settle seconds, its
   VmRSS, VmHWM and threads; then its CPU over --idle seconds, as a share
   of one core (/proc/<pid>/stat).
2. What the megabytes are: a fresh interpreter imports, one after another,
   the modules the daemon loads, in the order they first come in, and the
   growth of its VmRSS after each is printed (a shared library's pages
   count where it is first loaded).

Usage: .venv/bin/python bench/footprint.py [--settle 15] [--idle 60]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DAEMON_CWD, Agent, daemon_env, idle_figures, load  # noqa: E402

# The daemon's imports, heaviest parts apart, in the order the daemon first loads them.
LAYERS = ["ssl", "concurrent.futures", "asyncio", "multiprocessing", "loguru", "h11",
          "cachetools", "consul_reg.mapping.services", "consul_reg.app.daemon", "consul_reg.app.cli"]
# Imported only when a feature asks for them: re2 (a -tags template with a regular expression),
# docker-py (the ssh extra: a DOCKER_HOST of ssh:// or npipe://), prometheus_client (the status
# endpoint), kazoo (ZooKeeper). Measured after the layers above. etcd and SkyDNS2 run on the
# daemon's own transport (h11, above): no HTTP library is loaded for any of them.
OPTIONAL = ["re2", "docker", "prometheus_client", "kazoo"]

MEASURE = """
import importlib, sys
def rss():
    return next(int(l.split()[1]) / 1024 for l in open('/proc/self/status') if l.startswith('VmRSS'))
previous = rss()
print(f"interpreter (python {sys.version.split()[0]}): {previous:.1f} MB")
layers, optional = sys.argv[1].split(","), sys.argv[2].split(",")
for name in layers:
    importlib.import_module(name)
    now = rss()
    print(f"  + {name}: {now - previous:.1f} MB")
    previous = now
print(f"the daemon's imports: {previous:.1f} MB")
loaded = [name for name in optional if name in sys.modules]
print(f"optional parts the daemon's imports loaded: {', '.join(loaded) or 'none'}; each when used:")
for name in optional:
    importlib.import_module(name)
    now = rss()
    print(f"  + {name}: {now - previous:.1f} MB")
    previous = now
"""


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--settle", type=float, default=15.0)
    parser.add_argument("--code", default="", help="run the daemon of another checkout (a directory)")
    parser.add_argument("--idle", type=float, default=60.0)
    args = parser.parse_args()
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {load()}", flush=True)
    agent = Agent().start()
    daemon = subprocess.Popen([sys.executable, "-m", "consul_reg", "--hostname", f"fp{uuid.uuid4().hex[:6]}",
                               agent.uri], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=daemon_env(args.code), cwd=DAEMON_CWD)
    try:
        status, after, share = idle_figures(daemon.pid, args.settle, args.idle)
        print(f"idle daemon: VmRSS {status['VmRSS'] / 1024:.1f} MB (after {args.idle:g} s more: "
              f"{after['VmRSS'] / 1024:.1f} MB), VmHWM {after['VmHWM'] / 1024:.1f} MB, {after['Threads']} threads; "
              f"CPU {share * 100:.2f}% of a core over {args.idle:g} s; {load()}", flush=True)
    finally:
        daemon.kill()
        daemon.wait(timeout=15)
        agent.stop()
    subprocess.run([sys.executable, "-c", MEASURE, ",".join(LAYERS), ",".join(OPTIONAL)], check=True, env=daemon_env(args.code),
                   cwd=DAEMON_CWD)
    return 0


if __name__ == "__main__":
    sys.exit(main())
