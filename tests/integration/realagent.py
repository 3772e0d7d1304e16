"""The daemon's real loop, mapping, ownership guard and Consul client against a
Consul agent of the test's own; only Docker is faked (containers are inspect
dicts, so no hostile container ever runs on any dockerd)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Iterator

import pytest

from consul_reg.app.config import Config
from consul_reg.consul.agent import ConsulClient, ConsulEndpoint, ConsulRegistry
from consul_reg.consul.guard import OwnershipGuard
from consul_reg.core.messages import Message
from consul_reg.probes.scheduler import ProbeScheduler
from consul_reg.sync.desires import DesireBuilder
from consul_reg.sync.loop import Loop, LoopSettings
from tests.integration.conftest import OwnAgent
from tests.unit.fakes import FakeDocker


class RealAgentLoop:
    def __init__(self, agent: OwnAgent, hostname: str) -> None:
        self.hostname = hostname
        self.agent = agent
        self.api = agent.api()
        self.client = ConsulClient(ConsulEndpoint("http", "127.0.0.1", agent.http_port))
        self.registry = ConsulRegistry(self.client)
        self.config = Config(hostname=hostname, registry_uris=(agent.uri,), resync_seconds=0)
        info = self.registry.agent_info()
        self.docker = FakeDocker()
        self.probes = ProbeScheduler(self.registry, self.docker, lambda sid, cid: None)
        settings = self.config.mapping_settings("10.0.0.1", "test", info.version, info.runs_remote_scripts)
        self.loop = Loop(LoopSettings(owner=self.config.owner, resync_seconds=0, retry_interval=1.0), self.docker,
                         OwnershipGuard(self.registry, self.config.owner),
                         DesireBuilder(self.config.container_rules(), self.docker, settings), self.probes)
        self.primary = self.loop.primary
        self.primary.identity = info

    def send(self, *messages: Message) -> None:
        assert self.loop.handle(list(messages))

    def check_owner(self, check_id: str) -> str | None:
        check = self.api.http.get("/v1/agent/checks").json().get(check_id)
        return None if check is None else check["ServiceID"]

    def close(self) -> None:
        self.probes.stop()
        self.client.close()
        self.api.http.close()


@pytest.fixture
def real_agent_loop(tmp_path: Path) -> Iterator[RealAgentLoop]:
    agent = OwnAgent(tmp_path).start()
    harness = RealAgentLoop(agent, f"r{uuid.uuid4().hex[:6]}")
    try:
        yield harness
    finally:
        harness.close()
        agent.stop()
