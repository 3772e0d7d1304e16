"""The floor: the least a registrar written in Python can do per event, run
as a process of its own beside the benchmark (bench/event_latency.py).

One thread reads Docker's event stream of every container, as consul-reg
does (raw HTTP on the socket, one JSON line per event); on `start` it
inspects the container over a keep-alive connection and registers its first
published port with one PUT on a keep-alive connection to the agent; on
`die` it deregisters with one PUT, no inspect. Nothing else: no mapping, no
checks, no logging, no state but the IDs.

With --guarded, the least a registrar that keeps the ownership rule (a record
not ours is never written over) can do on Consul 1.8.7, which has neither a
conditional write nor a blocking read of the agent's services: before each
PUT it reads the agent's records of the container's IDs with the filter
consul-reg sends (`ID matches "(?i)^(<host>:<name>|<host>:<name>:.*|...)$"`)
and writes only when the ID is free or carries its own mark. On `start` that
read is sent before the inspect, on a connection of its own, and its answer
read after the inspect's (as consul-reg's read ahead); on `die` it comes
before the deregistration.

With --guarded --exact, a death's read is `GET /v1/agent/service/<id>` of the
exact ID instead (no filter for the agent to parse; it does not see the
other spellings of the ID that Consul's catalog folds into one, which
consul-reg's read does): the cheapest read before a deregistration.

With --internal (bench/burst.py, whose containers publish no port), it
registers the container's IP and exposed port, as `-internal` does.

With --handoff, consul-reg's shape: one thread reads the events and hands each,
through a queue, to the one thread that acts on it (consul-reg's sync loop).

With --mapped, a start registers what consul-reg's own mapping
(mapping/services.py) makes of the inspect, in consul-reg's registration body
(`registration_payload`), with the daemon's default settings: the work consul-reg
must do for a start beyond the guarded floor, without its loop, plan or logging.
Together (`--guarded --mapped --handoff`), a start costs what consul-reg's required
work costs in its shape, with nothing else: the rule's read, the mapping, the hop.
(Its death reads before the deregistration, as --guarded does; consul-reg reads at
the kill, so for a death `--handoff` alone is the one to compare with.)

Usage: python bench/floor.py AGENT_PORT HOSTNAME [--guarded [--exact]] [--internal] [--handoff] [--mapped]
"""

from __future__ import annotations

import http.client
import json
import queue
import socket
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

DOCKER_SOCKET = "/var/run/docker.sock"


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("docker", timeout=30)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def scope_filter(hostname: str, name: str, ids: tuple[str, ...] = ()) -> str:
    patterns = sorted({f"{hostname}:{name}", f"{hostname}:{name}:.*", *ids})
    return urllib.parse.urlencode({"filter": f'ID matches "(?i)^({"|".join(patterns)})$"'})


OPTIONS = {"--guarded", "--exact", "--internal", "--handoff", "--mapped"}


def main() -> int:
    agent_port, hostname = int(sys.argv[1]), sys.argv[2]
    unknown = set(sys.argv[3:]) - OPTIONS
    if unknown:
        sys.exit(f"unknown options: {' '.join(sorted(unknown))}")
    guarded, internal = "--guarded" in sys.argv[3:], "--internal" in sys.argv[3:]
    exact = guarded and "--exact" in sys.argv[3:]
    mapper = Mapper(hostname, internal) if "--mapped" in sys.argv[3:] else None
    reader = http.client.HTTPConnection("127.0.0.1", agent_port, timeout=30)
    events = UnixConnection(DOCKER_SOCKET)
    query = urllib.parse.urlencode({"filters": json.dumps({"type": ["container"]})})
    events.request("GET", f"/v1.41/events?{query}")
    stream = events.getresponse()
    docker = UnixConnection(DOCKER_SOCKET)
    agent = http.client.HTTPConnection("127.0.0.1", agent_port, timeout=30)
    registered: dict[str, str] = {}

    def handle(action: str, container_id: str, name: str) -> None:
        if action == "start":
            if guarded:  # sent now, its answer read after the inspect's
                reader.request("GET", f"/v1/agent/services?{scope_filter(hostname, name)}")
            docker.request("GET", f"/v1.41/containers/{container_id}/json")
            response = docker.getresponse()
            inspected = json.loads(response.read())
            held = json.loads(reader.getresponse().read()) if guarded else {}
            if response.status != 200:
                return
            if mapper is not None:
                found = mapper.record(inspected)
                if found is None:
                    return
                service_id, record = found
            else:
                network = inspected.get("NetworkSettings") or {}
                if internal:
                    address = network.get("IPAddress") or ""
                    published = [(port, port.split("/")[0]) for port in
                                 (inspected.get("Config") or {}).get("ExposedPorts") or {}]
                else:
                    address = "127.0.0.1"
                    published = [(port, bindings[0]["HostPort"]) for port, bindings in
                                 (network.get("Ports") or {}).items() if bindings]
                if not published:
                    return
                port, host_port = published[0]
                service_id = f"{hostname}:{inspected['Name'].lstrip('/')}:{port.split('/')[0]}"
                record = {"ID": service_id, "Name": "busybox", "Address": address, "Port": int(host_port),
                          "Tags": []}
            if service_id in held and held[service_id].get("Meta", {}).get("floor") != "1":
                return  # not ours
            if guarded:
                record = {**record, "Meta": {**record.get("Meta", {}), "floor": "1"}}
            agent.request("PUT", "/v1/agent/service/register", body=json.dumps(record).encode())
            agent.getresponse().read()
            registered[container_id] = service_id
        elif action == "die" and container_id in registered:
            service_id = registered.pop(container_id)
            if exact:
                reader.request("GET", f"/v1/agent/service/{urllib.parse.quote(service_id, safe='')}")
                answer = reader.getresponse()
                record = json.loads(answer.read()) if answer.status == 200 else {}
                if record.get("Meta", {}).get("floor") != "1":
                    return  # gone, or not ours
            elif guarded:
                reader.request("GET", f"/v1/agent/services?{scope_filter(hostname, name, (service_id,))}")
                held = json.loads(reader.getresponse().read())
                if held.get(service_id, {}).get("Meta", {}).get("floor") != "1":
                    return  # gone, or not ours
            agent.request("PUT", f"/v1/agent/service/deregister/{service_id}")
            agent.getresponse().read()

    def read() -> Iterator[tuple[str, str, str]]:
        while line := stream.readline():
            event = json.loads(line)
            yield (event.get("Action"), event["Actor"]["ID"],
                   (event["Actor"].get("Attributes") or {}).get("name", ""))

    print("ready", flush=True)
    if "--handoff" not in sys.argv[3:]:
        for action, container_id, name in read():
            handle(action, container_id, name)
        return 0
    # consul-reg's shape: one thread reads Docker's events and hands each to the one
    # thread that acts (its sync loop), through a queue.
    inbox: queue.SimpleQueue[tuple[str, str, str] | None] = queue.SimpleQueue()

    def forward() -> None:
        try:
            for event in read():
                inbox.put(event)
        finally:
            inbox.put(None)  # the acting thread ends too, whatever ended the stream
    threading.Thread(target=forward, daemon=True).start()
    while (event := inbox.get()) is not None:
        handle(*event)
    return 0


class Mapper:
    """consul-reg's own mapping (mapping/services.py, pure), with the daemon's default
    settings for this host name, and its registration body: what consul-reg must do
    for a start beyond the guarded floor, with none of its loop, plan or logging."""

    def __init__(self, hostname: str, internal: bool) -> None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from consul_reg.app.config import Config
        from consul_reg.consul.agent import registration_payload
        from consul_reg.mapping.services import map_container
        config = Config(hostname=hostname, registry_uris=("consul://127.0.0.1:8500",), internal=internal)
        self._settings = config.mapping_settings("127.0.0.1", "the floor's default", "1.8.7", True)
        self._map, self._payload = map_container, registration_payload

    def record(self, inspected: dict) -> tuple[str, dict] | None:
        services = self._map(inspected, self._settings).services
        return (services[0].id, self._payload(services[0])) if services else None


if __name__ == "__main__":
    sys.exit(main())
