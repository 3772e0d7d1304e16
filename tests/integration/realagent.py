"""The daemon's real loop, mapping, ownership guard and Consul client against a
Consul agent of the test's own; only Docker is faked (containers are inspect
dicts, so no hostile container ever runs on any dockerd)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from consul_reg.app.config import Config
from consul_reg.sync.desires import DesireBuilder
from consul_reg.sync.drain import Drainer
from consul_reg.probes.scheduler import ProbeScheduler
from consul_reg.sync.loop import Loop
from consul_reg.app.metrics import Metrics
from consul_reg.sync.primary import Primary
from consul_reg.consul.agent import ConsulClient, ConsulEndpoint, ConsulRegistry
from consul_reg.consul.guard import guarded
from consul_reg.sync.router import Hint
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
        self.primary = Primary(guarded(self.registry, self.config.owner), self.config.owner, 1.0, time.monotonic)
        self.primary.identity = info
        self.docker = FakeDocker()
        self.probes = ProbeScheduler(self.registry, self.docker, lambda sid, cid: None)
        settings = self.config.mapping_settings("10.0.0.1", "test", info.version, info.runs_remote_scripts)
        self.loop = Loop(deregister_mode="always", resync_seconds=0, env_file_interval=10.0, retry_interval=1.0,
                         docker=self.docker, primary=self.primary,
                         builder=DesireBuilder(self.config, self.docker, settings), probes=self.probes,
                         drainer=Drainer(self.primary.agent, 30.0), mirrors=[], env_reader=None, metrics=Metrics())

    def send(self, *hints: Hint) -> None:
        assert self.loop.handle(list(hints))

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
