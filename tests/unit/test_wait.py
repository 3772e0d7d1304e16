"""`consul-reg wait`'s waiting logic against a fake agent (a real HTTP server that
answers /v1/health/service with Consul's blocking-query semantics) and a fake
clock: a blocking query whose wait runs out moves the fake clock by its whole
wait, so a time-out of minutes takes a fraction of a second."""

from __future__ import annotations

import io
import threading
from typing import Any

import httpx
import pytest

from consul_reg.app.cli import UsageError, build_parser
from consul_reg.app.wait import (
    EXIT_DONE,
    EXIT_TIMED_OUT,
    MAX_OUTPUT_SHOWN,
    Expected,
    View,
    main,
    next_request,
    unmet,
    until_done,
)
from consul_reg.app.wait_args import parse_wait
from consul_reg.consul.health import CheckHealth, InstanceHealth, container_services, service_health
from consul_reg.core.errors import RegistryError
from consul_reg.core.records import Owner
from tests.unit.fakes import FakeClock
from tests.unit.stub_agent import stub_client

NODE = "node-1"
WEB = Expected("h:web:80", "web", "web", ("service:h:web:80",))


class FakeHealthAgent:
    """/v1/health/service/<name> as Consul answers it: X-Consul-Index; a request with an
    index not below the current one blocks until a change, or until its wait runs out
    (then the fake clock moves by the wait it asked for)."""

    def __init__(self, clock: FakeClock, real_block: float = 0.1) -> None:
        self.clock, self.real_block = clock, real_block
        self.index = 10
        self.entries: dict[str, list[dict[str, Any]]] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.headers: list[dict[str, str]] = []
        self.status = 200
        self.changed = threading.Condition()
        self.blocked = threading.Event()  # a blocking query is waiting now

    def set(self, name: str, entries: list[dict[str, Any]]) -> None:
        with self.changed:
            self.entries[name] = entries
            self.index += 1
            self.blocked.clear()  # the query waiting now answers: wait for the next one
            self.changed.notify_all()

    def handler(self, request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params)
        self.requests.append((request.url.path, params))
        self.headers.append(dict(request.headers))
        name = request.url.path.rsplit("/", 1)[-1]
        with self.changed:
            if self.status != 200:
                return httpx.Response(self.status, text="rpc error: no cluster leader")
            asked = int(params.get("index", "0"))
            if asked and asked >= self.index:
                self.blocked.set()
                if not self.changed.wait_for(lambda: self.index > asked, timeout=self.real_block):
                    self.clock.advance(float(params["wait"].rstrip("s")))
                    self.blocked.clear()
            return httpx.Response(200, json=self.entries.get(name, []), headers={"X-Consul-Index": str(self.index)})

    def health_requests(self) -> list[dict[str, str]]:
        return [params for path, params in self.requests if path.startswith("/v1/health/service/")]


def entry(service_id: str, name: str, *checks: tuple[str, str, str], node: str = NODE) -> dict[str, Any]:
    return {"Node": {"Node": node}, "Service": {"ID": service_id, "Service": name},
            "Checks": [{"CheckID": cid, "Name": cid, "Status": status, "Output": output, "ServiceID": service_id}
                       for cid, status, output in checks]}


def run(agent: FakeHealthAgent, clock: FakeClock, expected: list[Expected], mode: str = "passing",
        timeout: float = 120.0, token: str | None = None) -> tuple[threading.Thread, dict[str, Any]]:
    client = stub_client(agent.handler, token=token)
    result: dict[str, Any] = {"out": io.StringIO(), "err": io.StringIO()}

    def pause(stop: threading.Event, seconds: float) -> bool:  # a watch's back-off, on the fake clock
        clock.advance(seconds)
        return stop.is_set()

    def target() -> None:
        result["code"] = until_done(client, NODE, expected, mode, [e.container for e in expected], lambda: [],
                                    timeout, clock() + timeout, clock, result["out"], result["err"], pause=pause)
        client.close()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, result


def finish(thread: threading.Thread, result: dict[str, Any]) -> int:
    thread.join(timeout=20)
    assert not thread.is_alive(), "wait did not end"
    return int(result["code"])


def test_passing_once_registered_and_every_check_passes_one_request_per_change():
    clock = FakeClock()
    agent = FakeHealthAgent(clock, real_block=10.0)
    thread, result = run(agent, clock, [WEB])
    assert agent.blocked.wait(10)
    agent.set("web", [entry("h:web:80", "web", ("service:h:web:80", "critical", "connection refused"))])
    assert agent.blocked.wait(10)
    agent.set("web", [entry("h:web:80", "web", ("service:h:web:80", "passing", "HTTP GET: 200 OK"))])
    assert finish(thread, result) == EXIT_DONE
    assert result["out"].getvalue() == "passing: service h:web:80 (web) of container web\n"
    health = agent.health_requests()
    # The first asks at once; every later one is a blocking query on the index last seen, never a
    # poll: one per change (and the next may already be in flight when the answer is judged done).
    assert "index" not in health[0]
    assert [(p["index"], p["wait"]) for p in health[1:]] in ([("10", "120s"), ("11", "120s")],
                                                              [("10", "120s"), ("11", "120s"), ("12", "120s")]), health
    assert all(p["filter"] == f'Node.Node == "{NODE}"' for p in health)


def test_time_out_names_the_failing_check_with_its_output_escaped_and_bounded():
    clock = FakeClock()
    agent = FakeHealthAgent(clock)
    hostile = "HTTP GET http://10.0.0.5:8080/health: 503\x1b[2J\nforged line\u202e" + "x" * 10_000
    agent.set("web", [entry("h:web:80", "web", ("service:h:web:80", "critical", hostile))])
    thread, result = run(agent, clock, [WEB], timeout=300)
    assert finish(thread, result) == EXIT_TIMED_OUT
    err = result["err"].getvalue()
    lines = err.splitlines()
    assert lines[0].startswith("consul-reg wait: timed out after 300s waiting for 1 service(s) to be passing")
    assert len(lines) == 2, err  # the output's newline did not make a line of its own
    assert lines[1].startswith("  service h:web:80 (web) of container web: check service:h:web:80 "
                               "(service:h:web:80) is critical: HTTP GET http://10.0.0.5:8080/health: 503\\x1b[2J "
                               "forged line\\u202e")
    assert "\x1b" not in err and "\u202e" not in err
    # the agent's 4 KiB as consul/health.py keeps it, cut to MAX_OUTPUT_SHOWN characters for the terminal
    assert len(lines[1]) < MAX_OUTPUT_SHOWN + 150 and lines[1].endswith("xxx...(4096 chars)")
    # Five minutes of waiting were one blocking query after the first read: no polling.
    assert len(agent.health_requests()) == 2, agent.health_requests()
    assert result["out"].getvalue() == ""


def test_missing_services_and_checks_are_named_at_the_time_out():
    clock = FakeClock()
    agent = FakeHealthAgent(clock)
    db = Expected("h:db:5432", "db", "db")
    agent.set("web", [entry("h:web:80", "web")])  # registered, its check not yet
    thread, result = run(agent, clock, [WEB, db], timeout=10)
    assert finish(thread, result) == EXIT_TIMED_OUT
    err = result["err"].getvalue()
    assert "  service h:web:80 (web) of container web: check service:h:web:80 not registered\n" in err
    assert "  service h:db:5432 (db) of container db: not registered\n" in err


def test_registered_ignores_checks_and_another_nodes_instance_does_not_count():
    clock = FakeClock()
    agent = FakeHealthAgent(clock)
    agent.set("web", [entry("h:web:80", "web", ("service:h:web:80", "passing", ""), node="other-node")])
    thread, result = run(agent, clock, [WEB], mode="registered", timeout=5)
    assert finish(thread, result) == EXIT_TIMED_OUT
    assert "service h:web:80 (web) of container web: not registered" in result["err"].getvalue()

    agent.set("web", [entry("h:web:80", "web", ("service:h:web:80", "critical", "refused"))])
    thread, result = run(agent, clock, [WEB], mode="registered", timeout=5)
    assert finish(thread, result) == EXIT_DONE
    assert result["out"].getvalue() == "registered: service h:web:80 (web) of container web\n"


def test_gone_once_the_instance_left():
    clock = FakeClock()
    agent = FakeHealthAgent(clock, real_block=10.0)
    agent.set("web", [entry("h:web:80", "web", ("service:h:web:80", "passing", ""))])
    thread, result = run(agent, clock, [WEB], mode="gone")
    assert agent.blocked.wait(10)
    agent.set("web", [])
    assert finish(thread, result) == EXIT_DONE
    assert result["out"].getvalue() == "gone: service h:web:80 (web) of container web\n"
    assert [p.get("index") for p in agent.health_requests()] in ([None, "11"], [None, "11", "12"])


def test_an_agent_error_is_shown_and_waited_out():
    clock = FakeClock()
    agent = FakeHealthAgent(clock)
    agent.status = 500
    thread, result = run(agent, clock, [WEB], timeout=60)
    assert finish(thread, result) == EXIT_TIMED_OUT
    assert "service h:web:80 (web) of container web: consul http://127.0.0.1:" in result["err"].getvalue()
    assert "no cluster leader" in result["err"].getvalue()
    # a failing agent is asked again after a doubling pause (0.5 s up to 5 s), never in a tight loop
    assert 12 <= len(agent.health_requests()) <= 16, len(agent.health_requests())


def test_the_token_is_sent_as_the_daemon_sends_it():
    clock = FakeClock()
    agent = FakeHealthAgent(clock)
    agent.set("web", [entry("h:web:80", "web", ("service:h:web:80", "passing", ""))])
    thread, result = run(agent, clock, [WEB], token="s3cr3t-t0ken")
    assert finish(thread, result) == EXIT_DONE
    assert agent.headers[0].get("x-consul-token") == "s3cr3t-t0ken"
    assert "s3cr3t" not in result["out"].getvalue() + result["err"].getvalue()


def test_service_health_keeps_the_nodes_instances_and_bounds_outputs():
    clock = FakeClock()
    agent = FakeHealthAgent(clock)
    agent.set("web", [entry("a", "web", ("c1", "passing", "o" * 100_000)), entry("b", "web", node="elsewhere"),
                      {"Node": "not a dict"}, "junk"])
    index, instances = service_health(stub_client(agent.handler), "web", NODE)
    assert index == agent.index
    assert [i.service_id for i in instances] == ["a"]
    assert len(instances[0].checks[0].output) == 4096


@pytest.mark.parametrize(("index", "answered", "took", "pause", "expected"), [
    (0, 10, 0.01, 0.0, (10, 0.0)),       # the first answer: block on its index at once
    (10, 11, 0.01, 0.0, (11, 0.0)),      # news: ask again at once
    (10, 10, 300.0, 0.0, (10, 0.0)),     # the wait ran out: ask again at once (one request per wait)
    (10, 10, 0.01, 0.0, (10, 0.5)),      # the same index back at once: no news, back off
    (10, 10, 0.01, 0.5, (10, 1.0)),
    (10, 10, 0.01, 4.0, (10, 5.0)),      # capped
    (10, 3, 0.01, 0.0, (0, 0.0)),        # the index went backwards (agent restarted): read afresh
    (10, 0, 0.01, 0.0, (0, 0.5)),        # no index at all: never a tight loop
])
def test_next_request(index, answered, took, pause, expected):
    assert next_request(index, answered, took, pause) == expected


def test_unmet_judges_each_mode():
    passing = InstanceHealth("h:web:80", "web", (CheckHealth("service:h:web:80", "", "passing", "", "h:web:80"),))
    warning = InstanceHealth("h:web:80", "web", (CheckHealth("service:h:web:80", "", "warning", "slow", "h:web:80"),
                                                 CheckHealth("serfHealth", "Serf", "passing", "", "")))
    views = {"web": View((passing,))}
    assert unmet("passing", [WEB], views) == []
    assert unmet("registered", [WEB], views) == []
    assert unmet("gone", [WEB], views) == ["service h:web:80 (web) of container web: still registered"]
    assert unmet("gone", [WEB], {"web": View(())}) == []
    assert unmet("passing", [WEB], {"web": View((warning,))}) == [
        "service h:web:80 (web) of container web: check service:h:web:80 is warning: slow"]
    assert unmet("passing", [WEB], {}) == ["service h:web:80 (web) of container web: no answer from the agent yet"]
    # IDs compare as Consul folds them (case-insensitively)
    assert unmet("registered", [Expected("H:Web:80", "web", "web")], views) == []


def test_parse_wait_modes_timeout_and_order():
    args = parse_wait(["--gone", "--timeout", "1m30s", "--hostname", "h", "web", "db", "consul://127.0.0.1:8501"],
                      environ={})
    assert (args.mode, args.timeout, args.containers) == ("gone", 90.0, ("web", "db"))
    assert args.config.hostname == "h" and args.config.registry_uris == ("consul://127.0.0.1:8501",)
    assert parse_wait(["--timeout=45", "web"], environ={}).timeout == 45.0
    assert parse_wait(["web"], environ={"CONSUL_HTTP_ADDR": "10.0.0.9:8500"}).config.registry_uris == (
        "consul://10.0.0.9:8500",)
    assert parse_wait(["web"], environ={}).mode == "passing"
    for argv, reason in [(["--gone", "--passing", "web"], "exclude each other"),
                         (["--timeout", "soon", "web"], "not a duration"),
                         (["--timeout", "0s", "web"], "not a duration above 0"),
                         (["web", "--gone"], "options go first"),
                         (["--gone"], "at least one container"),
                         (["we b"], "not a container name or ID"),
                         (["web", "etcd://127.0.0.1:2379/x"], "not a Consul agent URI"),
                         (["consul://127.0.0.1:8500", "web"], "the registry URI goes after the containers")]:
        with pytest.raises(UsageError, match=reason):
            parse_wait(argv, environ={})


def test_help_and_usage_exit_codes(capsys):
    assert main(["--help"]) == 0
    assert "usage: consul-reg wait [--passing | --registered | --gone]" in capsys.readouterr().out
    assert "`consul-reg wait --help`" in " ".join(build_parser().format_help().split())  # the daemon's --help names it
    assert main(["--timeout", "never", "web"]) == 2
    assert "--timeout 'never'" in capsys.readouterr().err


def test_container_services_are_this_daemons_only():
    container_id = "ab" * 32
    ours = {"Service": "web", "Meta": {"external-source": "consul-reg", "consul_reg_host": "h",
                                       "consul_reg_container": container_id}}
    listed = {"h:web:80": ours,
              "other:web:80": {**ours, "Meta": {**ours["Meta"], "consul_reg_host": "other"}},
              "h:web:81": {**ours, "Meta": {**ours["Meta"], "consul_reg_instance": "blue"}},
              "h:db:1": {**ours, "Meta": {**ours["Meta"], "consul_reg_container": "cd" * 32}},
              "junk": "not an entry"}
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.params["filter"])
        return httpx.Response(200, json=listed)

    client = stub_client(handler)
    assert container_services(client, container_id, Owner("h")) == {"h:web:80": "web"}
    assert container_services(client, container_id, Owner("h", "blue")) == {"h:web:81": "web"}
    assert seen == [f'Meta.consul_reg_container == "{container_id}"'] * 2
    with pytest.raises(RegistryError, match="not a container ID"):
        container_services(client, 'x" or 1 == 1', Owner("h"))
