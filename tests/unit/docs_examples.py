"""The service-key examples of the docs (docs/*.md and the README) as data: a `container` block (an optional
`consul-reg ...` line with the daemon's options, then a `docker run ...`
line), then a `registration` block (the JSON the agent is sent, one object or
a list), optionally a `warning` block (lines each warning must contain, one
per warning the mapping gives). tests/unit/test_docs_drift.py runs every
example through the pure mapping and compares.

The world every example lives in is stated once, on docs/service-keys.md
("How to read the examples"), and fixed here: the host is `host1`, the local
agent's advertise address 10.0.0.5 (a Consul 1.8 agent running script
checks), a container's IP on its network 172.17.0.2. The ownership marker's Meta keys and the digest are left out of
the shown registrations (the test checks them separately)."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consul_reg.app import cli
from consul_reg.core.records import MARKER_DIGEST_KEY, marker_meta
from consul_reg.mapping.registration import registration_payload
from consul_reg.mapping.services import map_container

DOCS = Path(__file__).resolve().parents[2] / "docs"
HOSTNAME = "host1"
AGENT_ADDRESS = "10.0.0.5"
AGENT_VERSION = "1.8.7"
CONTAINER_IP = "172.17.0.2"
CONTAINER_ID = "4f2a9c1e7b3d" + "0" * 52

_FENCE = re.compile(r'^```(\w+)\s+title="(container|registration|warning)"\s*\n(.*?)^```\s*$', re.M | re.S)


@dataclass(frozen=True)
class Example:
    page: str
    line: int
    daemon_args: tuple[str, ...]
    docker_args: tuple[str, ...]
    expected: list[dict[str, Any]]
    warnings: tuple[str, ...] | None  # None: not shown on the page (any warnings pass)

    @property
    def name(self) -> str:
        return f"{self.page}:{self.line}"


def examples() -> list[Example]:
    """Every example of every page, in order. A `container` block not followed
    by its `registration` block is an error, so no example goes unchecked."""
    found: list[Example] = []
    readme = DOCS.parent / "README.md"
    for path in [*sorted(DOCS.glob("*.md")), *([readme] if readme.exists() else [])]:
        text = path.read_text()
        blocks = [(m.group(2), m.group(3), text.count("\n", 0, m.start()) + 1) for m in _FENCE.finditer(text)]
        index = 0
        while index < len(blocks):
            kind, body, line = blocks[index]
            where = f"{path.name}:{line}"
            if kind != "container":
                raise AssertionError(f"{where}: a {kind} block without its container block before it")
            if index + 1 >= len(blocks) or blocks[index + 1][0] != "registration":
                raise AssertionError(f"{where}: a container block must be followed by its registration block")
            expected = json.loads(blocks[index + 1][1])
            index += 2
            warnings = None
            if index < len(blocks) and blocks[index][0] == "warning":
                warnings = tuple(w.strip() for w in blocks[index][1].splitlines() if w.strip())
                index += 1
            daemon, docker = _commands(body, where)
            found.append(Example(path.name, line, daemon, docker,
                                 expected if isinstance(expected, list) else [expected], warnings))
    return found


def _commands(body: str, where: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    daemon: tuple[str, ...] = ()
    docker: tuple[str, ...] | None = None
    for command in body.replace("\\\n", " ").splitlines():
        words = shlex.split(command, comments=True)
        if not words:
            continue
        if words[0] == "consul-reg":
            daemon = tuple(words[1:])
        elif words[:2] == ["docker", "run"]:
            docker = tuple(words[2:])
        else:
            raise AssertionError(f"{where}: only `consul-reg ...` and `docker run ...` lines, got {command!r}")
    if docker is None:
        raise AssertionError(f"{where}: a container block needs a `docker run` line")
    return daemon, docker


def inspect_data(docker_args: tuple[str, ...], where: str = "") -> dict[str, Any]:
    """What `docker inspect` shows for a container `docker run <docker_args>`
    started, as far as the mapping reads it. Every option an example uses must
    be known here: an unknown one is an error, never silently ignored."""
    labels: dict[str, str] = {}
    env: list[str] = []
    ports: dict[str, list[dict[str, str]] | None] = {}
    name = "app"
    network = "bridge"
    health: dict[str, Any] | None = None
    args = list(docker_args)
    while args and args[0].startswith("-"):
        option = args.pop(0)
        value = None
        if "=" in option and option.startswith("--"):
            option, value = option.split("=", 1)
        if option in ("-d", "--detach", "--rm"):
            continue
        if value is None:
            if not args:
                raise AssertionError(f"{where}: {option} needs a value")
            value = args.pop(0)
        if option in ("-l", "--label"):
            key, _, label_value = value.partition("=")
            labels[key] = label_value
        elif option in ("-e", "--env"):
            env.append(value)
        elif option == "--name":
            name = value
        elif option in ("--net", "--network"):
            network = value
        elif option in ("-p", "--publish"):
            _publish(ports, value, where)
        elif option == "--expose":
            ports.setdefault(value if "/" in value else f"{value}/tcp", None)
        elif option == "--health-cmd":
            health = {"Test": ["CMD-SHELL", value]}
        elif option in ("--health-interval", "-v", "--volume"):
            pass  # read by Docker, not by the mapping
        else:
            raise AssertionError(f"{where}: the examples' docker run does not know {option}")
    if not args:
        raise AssertionError(f"{where}: docker run needs an image")
    image = args[0]
    networks: dict[str, Any] = {}
    if network != "host":
        networks[network] = {"IPAddress": CONTAINER_IP}
    config: dict[str, Any] = {"Image": image, "Env": env, "Labels": labels,
                              "ExposedPorts": {port: {} for port in ports}, "Hostname": name}
    state: dict[str, Any] = {"Status": "running", "Running": True}
    if health is not None:
        config["Healthcheck"] = health
        state["Health"] = {"Status": "healthy", "Log": []}
    return {
        "Id": CONTAINER_ID,
        "Name": "/" + name,
        "Created": "2026-01-01T00:00:00Z",
        "State": state,
        "Config": config,
        "HostConfig": {"NetworkMode": network if network != "bridge" else "default"},
        "NetworkSettings": {
            "Ports": {} if network == "host" else ports,
            "IPAddress": CONTAINER_IP if network == "bridge" else "",
            "Networks": networks,
        },
    }


def _publish(ports: dict[str, list[dict[str, str]] | None], value: str, where: str) -> None:
    """-p [host-ip:]host-port:container-port[/proto], as Docker records it (a
    port on every address is listed on 0.0.0.0 and on ::)."""
    match = re.fullmatch(r"(?:(\[[0-9a-fA-F:]+\]|[0-9.]+):)?(\d+):(\d+)(/udp|/tcp)?", value)
    if match is None:
        raise AssertionError(f"{where}: the examples publish a fixed host port: -p [ip:]host:container, got {value}")
    host_ip, host_port, container_port, proto = match.groups()
    key = f"{container_port}{proto or '/tcp'}"
    if host_ip:
        bindings = [{"HostIp": host_ip.strip("[]"), "HostPort": host_port}]
    else:
        bindings = [{"HostIp": "0.0.0.0", "HostPort": host_port}, {"HostIp": "::", "HostPort": host_port}]
    ports[key] = (ports.get(key) or []) + bindings


def registrations(example: Example) -> tuple[list[dict[str, Any]], list[str]]:
    """The registrations the mapping gives for `example` (marker and digest
    checked and left out, as the pages show them), and its warnings."""
    daemon_args = list(example.daemon_args)
    if not any(a.split("=")[0] in ("--hostname",) for a in daemon_args):
        daemon_args = ["--hostname", HOSTNAME, *daemon_args]
    config = cli.parse_config(daemon_args, environ={})
    settings = config.mapping_settings(AGENT_ADDRESS, "the Consul agent's advertise address",
                                       AGENT_VERSION, True)
    records = map_container(inspect_data(example.docker_args, example.name), settings)
    shown = []
    for service in records.services:
        payload = registration_payload(service)
        meta = payload["Meta"]
        del meta[MARKER_DIGEST_KEY]
        marker = marker_meta(config.hostname, CONTAINER_ID, config.instance)
        assert {k: meta.pop(k) for k in marker} == marker, "the ownership marker, as the page says"
        if not meta:
            del payload["Meta"]
        shown.append(payload)
    return shown, records.warnings
