"""`consul-reg wait`'s waiting logic against a fake agent (a real HTTP server that
answers /v1/health/service with Consul's blocking-query semantics) and a fake
clock: a blocking query whose wait runs out moves the fake clock by its whole
wait, so a time-out of minutes takes a fraction of a second."""

from __future__ import annotations

import io
import re
import socket
import threading
import time
from typing import Any

import httpx
import pytest
from consul_reg.app.cli import UsageError, build_parser, parse_config
from consul_reg.app.explain import read_env_file
from consul_reg.app.wait import (
    EXIT_DONE,
    EXIT_TIMED_OUT,
    MAX_BLOCK_SECONDS,
    _expected,
    _records_of_removed,
    main,
    next_request,
    until_done,
    wait,
)
from consul_reg.app.wait_judge import MAX_OUTPUT_SHOWN, Expected, View, unmet
from consul_reg.app.wait_args import parse_wait
from consul_reg.consul.health import CheckHealth, InstanceHealth, marked_services, service_health
from consul_reg.core.errors import RegistryError
from consul_reg.core.records import Owner, marker_meta

from tests.unit.fakes import FakeClock
from tests.unit.stub_agent import StubAgent, stub_client

NODE = "node-1"
CID = "c0" * 32  # the container waited on
OTHER_CID = "0d" * 32  # an earlier container of the same name, or another with the same SERVICE_ID
WEB = Expected("h:web:80", "web", "web", ("service:h:web:80",), CID, Owner("h"))


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
        self.failures = 0  # the next requests answered with a 500 (an agent going away)
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
            if self.failures:
                self.failures -= 1
                return httpx.Response(500, text="agent restarting")
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


def entry(service_id: str, name: str, *checks: tuple[str, str, str], node: str = NODE,
          meta: dict[str, str] | None = None) -> dict[str, Any]:
    meta = marker_meta("h", CID) if meta is None else meta  # as the daemon of host h marks CID's records
    return {"Node": {"Node": node}, "Service": {"ID": service_id, "Service": name, "Meta": meta},
            "Checks": [{"CheckID": cid, "Name": cid, "Status": status, "Output": output, "ServiceID": service_id}
                       for cid, status, output in checks]}


def run(agent: FakeHealthAgent, clock: FakeClock, expected: list[Expected], mode: str = "passing",
        timeout: float = 120.0, token: str | None = None, changed: Any = lambda: []
        ) -> tuple[threading.Thread, dict[str, Any]]:
    client = stub_client(agent.handler, token=token)
    result: dict[str, Any] = {"out": io.StringIO(), "err": io.StringIO()}

    def pause(stop: threading.Event, seconds: float) -> bool:  # a watch's back-off, on the fake clock
        clock.advance(seconds)
        return stop.is_set()

    def target() -> None:
        result["code"] = until_done(client, NODE, expected, mode, [e.container for e in expected], changed,
                                    clock(), clock() + timeout, clock, result["out"], result["err"], pause=pause)
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
    # poll: one per change (and the next may already be in flight when the answer is judged done),
    # each waiting a minute at most.
    assert "index" not in health[0]
    assert [(p["index"], p["wait"]) for p in health[1:]] in ([("10", "60s"), ("11", "60s")],
                                                              [("10", "60s"), ("11", "60s"), ("12", "60s")]), health
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
    # Five minutes of waiting were five blocking queries of a minute each after the first read: no polling.
    assert [p.get("wait") for p in agent.health_requests()] == [None] + ["60s"] * 5, agent.health_requests()
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
    assert agent.health_requests() and [h.get("x-consul-token") for h in agent.headers] == \
        ["s3cr3t-t0ken"] * len(agent.headers)


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


MARKED = tuple(sorted(marker_meta("h", CID).items()))


def test_unmet_judges_each_mode():
    passing = InstanceHealth("h:web:80", "web", (CheckHealth("service:h:web:80", "", "passing", "", "h:web:80"),),
                             MARKED)
    warning = InstanceHealth("h:web:80", "web", (CheckHealth("service:h:web:80", "", "warning", "slow", "h:web:80"),
                                                 CheckHealth("serfHealth", "Serf", "passing", "", "")), MARKED)
    views = {"web": View((passing,))}
    assert unmet("passing", [WEB], views) == []
    assert unmet("registered", [WEB], views) == []
    assert unmet("gone", [WEB], views) == ["service h:web:80 (web) of container web: still registered"]
    assert unmet("gone", [WEB], {"web": View(())}) == []
    assert unmet("passing", [WEB], {"web": View((warning,))}) == [
        "service h:web:80 (web) of container web: check service:h:web:80 is warning: slow"]
    assert unmet("passing", [WEB], {}) == ["service h:web:80 (web) of container web: no answer from the agent yet"]
    # IDs compare as Consul folds them (case-insensitively)
    assert unmet("registered", [Expected("H:Web:80", "web", "web", (), CID, Owner("h"))], views) == []


def test_node_checks_count_for_passing():
    """A critical serfHealth or the node's maintenance keeps routers (and DNS) off every
    instance of the node: --passing waits for them as the docs say."""
    for check_id, name in [("serfHealth", "Serf Health Status"), ("_node_maintenance", "Node Maintenance Mode")]:
        instance = InstanceHealth("h:web:80", "web", (
            CheckHealth("service:h:web:80", "", "passing", "", "h:web:80"),
            CheckHealth(check_id, name, "critical", "Agent not live or unreachable", "")), MARKED)
        assert unmet("passing", [WEB], {"web": View((instance,))}) == [
            f"service h:web:80 (web) of container web: node check {check_id} ({name}) is critical: "
            "Agent not live or unreachable"]
        assert unmet("registered", [WEB], {"web": View((instance,))}) == []


@pytest.mark.parametrize(("meta", "held_by"), [
    (marker_meta("h", OTHER_CID), "container 0d0d0d0d0d0d, by the daemon of host h"),  # the old container
    (marker_meta("h", CID, "blue"), "container c0c0c0c0c0c0, by the daemon of host h --instance blue"),
    (marker_meta("other", CID), "container c0c0c0c0c0c0, by the daemon of host other"),
    ({}, "a record consul-reg did not mark"),
])
def test_an_instance_of_another_container_or_daemon_does_not_count(meta, held_by):
    """`docker rm -f app && docker run --name app` (or a fixed SERVICE_ID) while the daemon lags:
    the catalog's instance under the expected ID is the old container's, passing. It does not count."""
    clock = FakeClock()
    agent = FakeHealthAgent(clock)
    agent.set("web", [entry("h:web:80", "web", ("service:h:web:80", "passing", "HTTP GET: 200 OK"), meta=meta)])
    thread, result = run(agent, clock, [WEB], mode="registered", timeout=5)
    assert finish(thread, result) == EXIT_TIMED_OUT
    assert result["err"].getvalue().splitlines()[1:] == [
        f"  service h:web:80 (web) of container web: not registered (the ID is held by {held_by})"]
    # the daemon catches up: the new container's record replaces the old one
    agent.set("web", [entry("h:web:80", "web", ("service:h:web:80", "passing", "HTTP GET: 200 OK"))])
    thread, result = run(agent, clock, [WEB], timeout=5)
    assert finish(thread, result) == EXIT_DONE


def test_gone_waits_on_any_consul_regs_record_of_the_container_only():
    of_other = InstanceHealth("h:web:80", "web", (), tuple(marker_meta("h", OTHER_CID).items()))
    by_blue = InstanceHealth("h:web:80", "web", (), tuple(marker_meta("h", CID, "blue").items()))
    gone = Expected("h:web:80", "web", "web", (), CID)  # --gone: any owner
    assert unmet("gone", [gone], {"web": View((of_other,))}) == []  # the new container's: not ours to wait on
    assert unmet("gone", [gone], {"web": View((by_blue,))}) == [
        "service h:web:80 (web) of container web: still registered"]


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


def test_marked_services_lists_every_consul_reg_record_with_its_marker():
    listed = {"h:web:80": {"Service": "web", "Meta": {**marker_meta("h", CID), "consul_reg_digest": "d"}},
              "other:web:80": {"Service": "web", "Meta": marker_meta("other", CID)},
              "h:web:81": {"Service": "web", "Meta": marker_meta("h", CID, "blue")},
              "h:db:1": {"Service": "db", "Meta": marker_meta("h", OTHER_CID)},
              "by-hand": {"Service": "web", "Meta": {"consul_reg_container": CID}},  # not a consul-reg marker
              "junk": "not an entry"}
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.params.get("filter", ""))
        return httpx.Response(200, json=listed)

    client = stub_client(handler)
    of_cid = marked_services(client, CID)
    assert sorted(r.id for r in of_cid) == ["h:web:80", "h:web:81", "other:web:80"]
    assert [r.id for r in of_cid if r.owned_by(Owner("h", "blue"))] == ["h:web:81"]
    assert sorted(r.id for r in marked_services(client)) == ["h:db:1", "h:web:80", "h:web:81", "other:web:80"]
    assert seen == [f'Meta.consul_reg_container == "{CID}"', ""]
    with pytest.raises(RegistryError, match="not a container ID"):
        marked_services(client, 'x" or 1 == 1')


def test_after_an_agent_error_the_watch_asks_afresh_as_a_restarted_agents_index_went_down():
    """The agent restarts while a blocking query waits: the query fails, and the restarted
    agent counts its index from 1 again. A query on the old index would block until its
    wait ran out (past the deadline, before the fix), though the service is registered."""
    clock = FakeClock()
    agent = FakeHealthAgent(clock)
    agent.set("web", [])
    start = clock()

    def restart(request: httpx.Request) -> httpx.Response:
        if len(agent.health_requests()) == 1:  # the first blocking query: the agent goes away under it
            with agent.changed:
                agent.index = 3
                agent.entries["web"] = [entry("h:web:80", "web", ("service:h:web:80", "passing", ""))]
            agent.requests.append((request.url.path, dict(request.url.params)))
            return httpx.Response(500, text="agent restarting")
        return agent.handler(request)

    client = stub_client(restart)
    out, err = io.StringIO(), io.StringIO()

    def pause(stop: threading.Event, seconds: float) -> bool:
        clock.advance(seconds)
        return stop.is_set()

    code = until_done(client, NODE, [WEB], "registered", ["web"], lambda: [], start, start + 300, clock, out, err,
                      pause=pause)
    client.close()
    assert code == EXIT_DONE, err.getvalue()
    asked = agent.health_requests()
    assert [p.get("index") for p in asked[:3]] == [None, "11", None], asked  # afresh after the error
    assert clock() - start < 5  # a back-off, never a blocking query's whole wait
    assert all(float(p["wait"].rstrip("s")) <= MAX_BLOCK_SECONDS for p in asked if "wait" in p)


def test_a_removed_containers_records_are_found_by_its_id_or_its_name():
    """`--gone` for a container already removed asks the agent: its records stay until the
    daemon catches up (before the fix, a removed container counted as gone at once)."""
    listed = {"h:web:80": {"Service": "web", "Meta": marker_meta("h", CID)},
              "H:Web": {"Service": "web-worker", "Meta": marker_meta("h", CID)},  # port-less, folded
              "custom": {"Service": "api", "Meta": marker_meta("h", CID)},  # a SERVICE_ID: found by the container
              "other:web:80": {"Service": "web", "Meta": marker_meta("other", CID)},  # another daemon's, same one
              "h:webby:80": {"Service": "web", "Meta": marker_meta("h", OTHER_CID)},  # another name
              "h:web:8080": {"Service": "web", "Meta": marker_meta("h", "ee" * 32, "blue")},  # another --instance
              "h:web:81": {"Service": "web", "Meta": {"consul_reg_container": "ff" * 32}}}  # not consul-reg's
    client = stub_client(lambda request: httpx.Response(200, json=listed))
    config = parse_config(["--hostname", "h"], environ={})
    of_cid = ["H:Web", "custom", "h:web:80", "other:web:80"]
    assert sorted(r.id for r in _records_of_removed(config, client, "web", lambda: 5.0)) == of_cid
    assert sorted(r.id for r in _records_of_removed(config, client, CID[:12], lambda: 5.0)) == of_cid
    assert sorted(r.id for r in _records_of_removed(config, client, CID, lambda: 5.0)) == of_cid
    assert _records_of_removed(config, client, "c0c0", lambda: 5.0) == []  # too short to be taken as an ID
    assert _records_of_removed(config, client, "db", lambda: 5.0) == []
    # as wait computes what --gone waits on: a container Docker no longer knows
    expected = _expected(config, RemovedDocker(), client, None, ["web"], "gone", lambda: 5.0)  # type: ignore[arg-type]
    assert sorted((e.service_id, e.container_id, e.owner) for e in expected) == [(i, CID, None) for i in of_cid]
    blue = parse_config(["--hostname", "h", "--instance", "blue"], environ={})
    assert [r.id for r in _records_of_removed(blue, client, "web", lambda: 5.0)] == ["h:web:8080"]


class RemovedDocker:
    def inspect(self, ref: str) -> None:
        return None


class FileReadingDocker:
    """Docker's file read, as `read_env_file` uses it."""

    def __init__(self, text: str | None) -> None:
        self.text = text

    def read_file(self, container_id: str, path: str, limit: int) -> str | None:
        return self.text


def test_a_malformed_env_file_gives_none_of_its_keys_as_the_daemon_takes_it():
    """The daemon keeps a malformed env file's last good values, and has none on a first read:
    explain and wait must not expect the lines that parsed."""
    container = {"Id": CID, "Config": {"Labels": {"SERVICE_ENV_FILE": "/svc.env"}}}
    config = parse_config([], environ={})
    read = read_env_file(config, FileReadingDocker("SERVICE_NAME=from-file\nnot a pair\n"), container)
    assert read.pairs == () and read.sources == (("env file", []),)
    assert any("not a pair" in w or "line 2" in w for w in read.warnings), read.warnings
    assert any("uses none of its keys" in w for w in read.warnings), read.warnings
    good = read_env_file(config, FileReadingDocker("SERVICE_NAME=from-file\n"), container)
    assert good.pairs == (("SERVICE_NAME", "from-file"),) and good.warnings == ()
    assert read_env_file(config, FileReadingDocker(None), container).pairs is None  # not there yet


def wait_against(handler: Any, timeout: float, environ: dict[str, str] | None = None,
                 uri: str = "") -> tuple[int, str, float, list[str]]:
    """`wait` as a deploy script runs it, against a stub agent: (exit, stderr, seconds, paths asked)."""
    paths: list[str] = []

    def recording(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        return handler(request)

    stub = StubAgent(recording)
    try:
        args = parse_wait(["--timeout", f"{timeout:g}", "web", uri or f"consul://127.0.0.1:{stub.port}"],
                          environ=environ or {})
        err = io.StringIO()
        started = time.monotonic()
        code = wait(args.config, args.containers, args.mode, args.timeout, out=io.StringIO(), err=err)
        return code, err.getvalue(), time.monotonic() - started, paths
    finally:
        stub.close()


def test_an_agent_that_never_answers_costs_the_timeout_not_the_clients_10s_per_call():
    with socket.create_server(("127.0.0.1", 0), backlog=50) as black_hole:  # accepts, never answers
        args = parse_wait(["--timeout", "1.5", "web", f"consul://127.0.0.1:{black_hole.getsockname()[1]}"],
                          environ={})
        err = io.StringIO()
        started = time.monotonic()
        code = wait(args.config, args.containers, args.mode, args.timeout, out=io.StringIO(), err=err)
        took = time.monotonic() - started
    assert code == EXIT_TIMED_OUT
    assert took < 4.0, took  # the client's own time-out is 10 s a call
    assert re.match(r"consul-reg wait: the Consul agent cannot be reached or refused \(tried for 1(\.[0-9])?s\): ",
                    err.getvalue()), err.getvalue()


def test_a_token_an_error_page_echoes_is_never_written():
    token = "TOPSECRET-0000-1111"

    def echo(request: httpx.Request) -> httpx.Response:  # a proxy's error page showing the request's headers
        shown = "\n".join(f"{k}: {v}" for k, v in request.headers.items())
        return httpx.Response(502, text=f"proxy error; request was:\n{shown}")

    code, err, _, _ = wait_against(echo, 1.0, environ={"CONSUL_HTTP_TOKEN": token})
    assert code == EXIT_TIMED_OUT
    assert "x-consul-token: [redacted]" in err.lower() and token not in err, err
    # the same on a watch's error, as a time-out reports it
    clock = FakeClock()
    client = stub_client(echo, token=token)
    out, errs = io.StringIO(), io.StringIO()
    code = until_done(client, NODE, [WEB], "passing", ["web"], lambda: [], clock(), clock() + 5, clock, out, errs,
                      pause=lambda stop, seconds: (clock.advance(seconds), stop.is_set())[1])
    client.close()
    assert code == EXIT_TIMED_OUT
    assert "[redacted]" in errs.getvalue() and token not in errs.getvalue(), errs.getvalue()


def test_a_refused_token_fails_at_once_with_a_clear_message():
    def forbidden(request: httpx.Request) -> httpx.Response:
        return httpx.Response(403, text="Permission denied")

    code, err, took, paths = wait_against(forbidden, 30.0)
    assert code == 2
    assert err.startswith("consul-reg wait: the agent refused the token: consul http://127.0.0.1:"), err
    assert "permission denied to read the agent's own information" in err
    assert paths == ["/v1/agent/self"] and took < 10  # asked once, not for the whole time-out


def test_a_refused_health_read_fails_at_once():
    clock = FakeClock()
    client = stub_client(lambda request: httpx.Response(403, text="Permission denied"))
    out, err = io.StringIO(), io.StringIO()
    code = until_done(client, NODE, [WEB], "passing", ["web"], lambda: [], clock(), clock() + 300, clock, out, err,
                      pause=lambda stop, seconds: (clock.advance(seconds), stop.is_set())[1])
    client.close()
    assert code == 2 and clock() < 1000 + 5
    assert "the agent refused the token" in err.getvalue() and "read the health of service web" in err.getvalue()


@pytest.mark.parametrize("ca_text", [None, "not a certificate"])
def test_tls_settings_that_cannot_be_loaded_are_a_clear_error(tmp_path, monkeypatch, ca_text):
    ca_file = tmp_path / "ca.pem"
    if ca_text is not None:
        ca_file.write_text(ca_text)
    monkeypatch.setenv("CONSUL_CACERT", str(ca_file))
    code, err, _, _ = wait_against(lambda request: httpx.Response(200), 5.0, uri="consul-tls://127.0.0.1:1")
    assert code == 2
    assert err.startswith("consul-reg wait: the agent's TLS settings cannot be used: "), err
    assert "Traceback" not in err


def test_a_container_that_stops_while_waited_on_ends_the_wait_with_the_reason():
    clock = FakeClock()
    agent = FakeHealthAgent(clock)
    agent.set("web", [entry("h:web:80", "web", ("service:h:web:80", "critical", "connection refused"))])
    looks: list[int] = []

    def changed() -> list[str]:
        looks.append(1)
        return ["container web: not running (exited, exit code 1)"] if len(looks) >= 2 else []

    thread, result = run(agent, clock, [WEB], timeout=600, changed=changed)
    assert finish(thread, result) == 3
    lines = result["err"].getvalue().splitlines()
    assert lines[0].startswith("consul-reg wait: gave up after ") and "stopped, went or was replaced" in lines[0]
    assert lines[1:] == ["  service h:web:80 (web) of container web: check service:h:web:80 (service:h:web:80) "
                         "is critical: connection refused", "  container web: not running (exited, exit code 1)"]
    assert clock() < 1000 + 600  # before the time-out


def test_a_token_echoed_across_the_error_bodys_cut_leaves_no_part_of_it():
    token = "TOPSECRET-2222-3333-4444"
    client = stub_client(lambda request: httpx.Response(502, text="x" * 290 + request.headers["x-consul-token"]),
                         token=token)
    with pytest.raises(RegistryError) as raised:
        service_health(client, "web", NODE)
    client.close()
    assert "TOPSECRET" not in str(raised.value) and "[redacted]" in str(raised.value), str(raised.value)
