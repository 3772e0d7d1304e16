"""The floor: the least a registrar written in Python can do per event, run
as a process of its own beside the benchmark (bench/event_latency.py).

One thread reads Docker's event stream of every container, as consul-reg
does (raw HTTP on the socket, one JSON line per event); on `start` it
inspects the container over a keep-alive connection and registers its first
published port with one PUT on a keep-alive connection to the agent; on
`die` it deregisters with one PUT, no inspect. Nothing else: no mapping, no
checks, no logging, no state but the IDs.

Usage: python bench/floor.py AGENT_PORT HOSTNAME
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


def main() -> int:
    agent_port, hostname = int(sys.argv[1]), sys.argv[2]
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
        if action == "start":
            docker.request("GET", f"/v1.41/containers/{container_id}/json")
            response = docker.getresponse()
            inspected = json.loads(response.read())
            published = [(port, bindings[0]) for port, bindings in
                         ((inspected.get("NetworkSettings") or {}).get("Ports") or {}).items() if bindings]
            if response.status != 200 or not published:
                continue
            port, binding = published[0]
            service_id = f"{hostname}:{inspected['Name'].lstrip('/')}:{port.split('/')[0]}"
            body = json.dumps({"ID": service_id, "Name": "busybox", "Address": "127.0.0.1",
                               "Port": int(binding["HostPort"]), "Tags": []}).encode()
            agent.request("PUT", "/v1/agent/service/register", body=body)
            agent.getresponse().read()
            registered[container_id] = service_id
        elif action == "die" and container_id in registered:
            agent.request("PUT", f"/v1/agent/service/deregister/{registered.pop(container_id)}")
            agent.getresponse().read()
    return 0


if __name__ == "__main__":
    sys.exit(main())
