"""CPU time of one container's mapping for the hostile shapes of issue 11,
pure (no Docker, no Consul): the same inspect dicts through map_container.

Cases: a 100 KiB SERVICE_TAGS label on a container exposing 1,000 ports
(-internal); --expose 1-65535 (-internal); a -tags template whose literal
regex backtracks catastrophically, on 26 characters of container env.
Each case runs REPEAT times (once for the slow ones) and the best time is
printed. Run it from a checkout: `.venv/bin/python bench/mapping_bounds.py`;
point PYTHONPATH at an older checkout to measure that one (its Template may
lack RE2, that is the point).
Usage: .venv/bin/python bench/mapping_bounds.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable

from consul_reg.mapping.services import MappingSettings, map_container
from consul_reg.mapping.tags_template import Template


def container(labels: dict[str, str], exposed: range, env: list[str] | None = None) -> dict[str, Any]:
    return {"Id": "ab" * 32, "Name": "/bench", "Config": {"Image": "team/web:1", "Labels": labels, "Env": env or [],
                                                          "ExposedPorts": {f"{p}/tcp": {} for p in exposed}},
            "HostConfig": {"NetworkMode": "default"},
            "NetworkSettings": {"Ports": {}, "Networks": {"bridge": {"IPAddress": "172.17.0.2"}}}}


def best(repeat: int, run: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        start = time.process_time()
        run()
        times.append(time.process_time() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    repeat = parser.parse_args().repeat
    internal = MappingSettings(hostname="h", internal=True)
    tags = container({"SERVICE_TAGS": "a," * 51200}, range(1, 1001))
    print(f"100 KiB SERVICE_TAGS, 1,000 exposed ports: {best(repeat, lambda: map_container(tags, internal)):.3f} s")
    expose_all = container({}, range(1, 65536))
    print(f"--expose 1-65535: {best(repeat, lambda: map_container(expose_all, internal)):.3f} s")
    template = MappingSettings(hostname="h", tags_template=Template('{{ matchFirstElement "^(a+)+$" .Config.Env }}'))
    env = container({"SERVICE_NAME": "x"}, range(0), env=["A=" + "a" * 26 + "!"])
    env["Config"]["Env"] = ["a" * 26 + "!"]
    print(f"catastrophic regex, 26 characters: {best(1, lambda: map_container(env, template)):.3f} s")


if __name__ == "__main__":
    main()
