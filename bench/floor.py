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

Usage: python bench/floor.py AGENT_PORT HOSTNAME [--guarded [--exact]] [--internal]
"""

from __future__ import annotations

import http.client
import json
import socket
import sys
import urllib.parse

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


def main() -> int:
    agent_port, hostname = int(sys.argv[1]), sys.argv[2]
    unknown = set(sys.argv[3:]) - {"--guarded", "--exact", "--internal"}
    if unknown:
        sys.exit(f"unknown options: {' '.join(sorted(unknown))}")
    guarded, internal = "--guarded" in sys.argv[3:], "--internal" in sys.argv[3:]
    exact = guarded and "--exact" in sys.argv[3:]
    reader = http.client.HTTPConnection("127.0.0.1", agent_port, timeout=30)
    events = UnixConnection(DOCKER_SOCKET)
    query = urllib.parse.urlencode({"filters": json.dumps({"type": ["container"]})})
    events.request("GET", f"/v1.41/events?{query}")
    stream = events.getresponse()
    docker = UnixConnection(DOCKER_SOCKET)
    agent = http.client.HTTPConnection("127.0.0.1", agent_port, timeout=30)
    registered: dict[str, str] = {}
    print("ready", flush=True)
    while line := stream.readline():
        event = json.loads(line)
        action, container_id = event.get("Action"), event["Actor"]["ID"]
        name = (event["Actor"].get("Attributes") or {}).get("name", "")
        if action == "start":
            if guarded:  # sent now, its answer read after the inspect's
                reader.request("GET", f"/v1/agent/services?{scope_filter(hostname, name)}")
            docker.request("GET", f"/v1.41/containers/{container_id}/json")
            response = docker.getresponse()
            inspected = json.loads(response.read())
            network = inspected.get("NetworkSettings") or {}
            if internal:
                address = network.get("IPAddress") or ""
                published = [(port, port.split("/")[0]) for port in
                             (inspected.get("Config") or {}).get("ExposedPorts") or {}]
            else:
                address = "127.0.0.1"
                published = [(port, bindings[0]["HostPort"]) for port, bindings in
                             (network.get("Ports") or {}).items() if bindings]
            held = json.loads(reader.getresponse().read()) if guarded else {}
            if response.status != 200 or not published:
                continue
            port, host_port = published[0]
            service_id = f"{hostname}:{inspected['Name'].lstrip('/')}:{port.split('/')[0]}"
            if service_id in held and held[service_id].get("Meta", {}).get("floor") != "1":
                continue  # not ours
            record = {"ID": service_id, "Name": "busybox", "Address": address, "Port": int(host_port), "Tags": []}
            body = json.dumps({**record, "Meta": {"floor": "1"}} if guarded else record).encode()
            agent.request("PUT", "/v1/agent/service/register", body=body)
            agent.getresponse().read()
            registered[container_id] = service_id
        elif action == "die" and container_id in registered:
            service_id = registered.pop(container_id)
            if exact:
                reader.request("GET", f"/v1/agent/service/{urllib.parse.quote(service_id, safe='')}")
                answer = reader.getresponse()
                record = json.loads(answer.read()) if answer.status == 200 else {}
                if record.get("Meta", {}).get("floor") != "1":
                    continue  # gone, or not ours
            elif guarded:
                reader.request("GET", f"/v1/agent/services?{scope_filter(hostname, name, (service_id,))}")
                held = json.loads(reader.getresponse().read())
                if held.get(service_id, {}).get("Meta", {}).get("floor") != "1":
                    continue  # gone, or not ours
            agent.request("PUT", f"/v1/agent/service/deregister/{service_id}")
            agent.getresponse().read()
    return 0


if __name__ == "__main__":
    sys.exit(main())
