"""What a daemon at its defaults does not load: the parts only a feature needs are
imported when it is used (their megabytes in BENCHMARKS.md's footprint breakdown).
Checked in a fresh interpreter, after the imports the daemon's start makes."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Each with the feature that loads it.
LOADED_ONLY_WHEN_USED = {
    "re2": "a -tags template with a regular expression",
    "prometheus_client": "--status-addr",
    "http.server": "--status-addr",
    "http.client": "--status-addr (http.server's); never the transport, whose errors are its own",
    "email": "--status-addr (http.server's)",
    "kazoo": "a zookeeper:// mirror",
    "docker": "DOCKER_HOST=ssh:// or npipe://",
    "tarfile": "a file read out of a container",
}


def test_a_daemon_at_its_defaults_loads_no_optional_part() -> None:
    code = ("import sys, loguru, consul_reg.app.daemon, consul_reg.app.cli\n"
            "from consul_reg.app.cli import parse_config\n"
            "parse_config(['consul://127.0.0.1:8500'])\n"
            "from consul_reg.docker.client import DockerSource\n"
            "DockerSource().close()\n"
            f"print(sorted(m for m in {sorted(LOADED_ONLY_WHEN_USED)!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_check_sees_a_part_that_is_loaded() -> None:
    """Not vacuous: the same check names what a feature's module loads."""
    code = ("import sys, consul_reg.app.status\n"
            f"print(sorted(m for m in {sorted(LOADED_ONLY_WHEN_USED)!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert {"http.server", "http.client", "email"} <= set(ast.literal_eval(out.stdout))
