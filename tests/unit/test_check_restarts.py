"""Restarts of containers whose checks keep failing (issue 22): the keys as the
mapping reads them, the tracker's counting, grace, warnings, backoff and what
survives a daemon restart (fake clock), and the watcher with fakes of the agent
and Docker (only this daemon's containers, one restart in flight)."""

from __future__ import annotations

import time
from dataclasses import replace
from types import MappingProxyType
from typing import Any

import pytest

from consul_reg.core.errors import DockerUnavailable
from consul_reg.core.records import (
    AgentCheck,
    CheckRead,
    ContainerDesire,
    ContainerStatus,
    Owner,
    RestartPolicy,
    docker_time,
    marker_meta,
    registered_form,
)
from consul_reg.core.snapshot import Snapshot
from consul_reg.mapping.services import MappingSettings, map_container
from consul_reg.restarts.tracker import Tracker, Watched
from consul_reg.restarts.watcher import RestartWatcher, watched

SETTINGS = MappingSettings(hostname="host1", default_address="10.0.0.5")
CID = "c0ffee" * 10 + "abcd"


def container(env: list[str], healthcheck: dict[str, Any] | None = None) -> dict[str, Any]:
    config: dict[str, Any] = {"Image": "web:1", "Env": env, "Labels": {}, "ExposedPorts": {"80/tcp": {}}}
    if healthcheck:
        config["Healthcheck"] = healthcheck
    return {"Id": CID, "Name": "/web.0", "Created": "2026-01-01T00:00:00Z", "Config": config,
            "HostConfig": {"NetworkMode": "default"},
            "NetworkSettings": {"Ports": {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8000"}]},
                                "IPAddress": "172.17.0.9", "Networks": {"bridge": {"IPAddress": "172.17.0.9"}}}}


def mapped(env: list[str], healthcheck: dict[str, Any] | None = None):
    records = map_container(container(env, healthcheck), SETTINGS)
    assert len(records.services) == 1, records
    return records.services[0], records.warnings


# -- the keys -----------------------------------------------------------------------


def test_limit_grace_and_warnings_keys_make_a_policy():
    service, warnings = mapped(["SERVICE_CHECK_HTTP=/health", "SERVICE_CHECK_INTERVAL=5s",
                                "SERVICE_CHECK_RESTART_LIMIT=3", "SERVICE_CHECK_RESTART_GRACE=1m",
                                "SERVICE_CHECK_RESTART_IGNORE_WARNINGS=true"])
    assert warnings == []
    policy = service.restart
    assert policy is not None
    assert (policy.limit, policy.grace, policy.ignore_warnings) == (3, 60.0, True)
    assert policy.samples == ((service.checks[0].check_id, 5.0),)
    assert policy.fails("critical") and not policy.fails("warning") and not policy.fails("passing")


def test_default_grace_is_twice_the_longest_interval_plus_the_healthchecks_start_period():
    healthcheck = {"Test": ["CMD", "true"], "Interval": 7_000_000_000, "StartPeriod": 20_000_000_000}
    service, warnings = mapped(["SERVICE_CHECK_HTTP=/health", "SERVICE_CHECK_INTERVAL=5s",
                                "SERVICE_CHECK_RESTART_LIMIT=2"], healthcheck)
    assert warnings == []
    policy = service.restart
    assert policy is not None and not policy.ignore_warnings
    assert dict(policy.samples)[f"service:{service.id}:docker-health"] == 7.0  # the Docker-health check counts
    assert policy.grace == 2 * 7.0 + 20.0
    assert "default" in policy.grace_source


def test_port_scoped_keys_apply_to_their_port_only():
    env = ["SERVICE_CHECK_HTTP=/health", "SERVICE_81_CHECK_RESTART_LIMIT=3"]
    service, warnings = mapped(env)
    assert service.restart is None and len(warnings) == 1 and "port 81 is not published" in warnings[0]
    service, _ = mapped(["SERVICE_CHECK_HTTP=/health", "SERVICE_80_CHECK_RESTART_LIMIT=4"])
    assert service.restart is not None and service.restart.limit == 4


@pytest.mark.parametrize("env, named", [
    (["SERVICE_CHECK_RESTART_LIMIT=three"], "SERVICE_CHECK_RESTART_LIMIT"),
    (["SERVICE_CHECK_RESTART_LIMIT=-1"], "SERVICE_CHECK_RESTART_LIMIT"),
    (["SERVICE_CHECK_RESTART_LIMIT=99999"], "SERVICE_CHECK_RESTART_LIMIT"),
])
def test_a_bad_limit_is_refused_by_name_and_nothing_else_is_lost(env, named):
    service, warnings = mapped(["SERVICE_CHECK_HTTP=/health", "SERVICE_TAGS=a", *env])
    assert service.restart is None
    assert service.tags == ("a",) and len(service.checks) == 1  # the service and its check stay
    assert len(warnings) == 1 and named in warnings[0] and "never restarted" in warnings[0]


def test_a_bad_grace_or_flag_falls_back_with_a_warning_naming_the_key():
    service, warnings = mapped(["SERVICE_CHECK_HTTP=/health", "SERVICE_CHECK_INTERVAL=5s",
                                "SERVICE_CHECK_RESTART_LIMIT=3", "SERVICE_CHECK_RESTART_GRACE=soon",
                                "SERVICE_CHECK_RESTART_IGNORE_WARNINGS=maybe"])
    assert service.restart is not None and service.restart.grace == 10.0 and not service.restart.ignore_warnings
    assert any("SERVICE_CHECK_RESTART_GRACE" in w and "10s" in w for w in warnings)
    assert any("SERVICE_CHECK_RESTART_IGNORE_WARNINGS" in w for w in warnings)


def test_no_check_to_count_or_no_limit_warns():
    service, warnings = mapped(["SERVICE_CHECK_RESTART_LIMIT=3"])
    assert service.restart is None and "no check to count" in warnings[0]
    service, warnings = mapped(["SERVICE_CHECK_HTTP=/health", "SERVICE_CHECK_RESTART_GRACE=10s"])
    assert service.restart is None and "has no effect without" in warnings[0]


def test_the_policy_is_not_part_of_the_registration_digest():
    with_policy, _ = mapped(["SERVICE_CHECK_HTTP=/health", "SERVICE_CHECK_RESTART_LIMIT=3"])
    without, _ = mapped(["SERVICE_CHECK_HTTP=/health"])
    assert with_policy.digest == without.digest


def test_docker_time_reads_docker_and_podman_spellings():
    assert docker_time("1970-01-01T00:00:10.5Z") == 10.5
    assert docker_time("1970-01-01T01:00:10+01:00") == 10.0
    assert docker_time("0001-01-01T00:00:00Z") == 0.0
    assert docker_time("yesterday") == 0.0 and docker_time(None) == 0.0


# -- the tracker (fake clock) ---------------------------------------------------------

SERVICE = "host1:web.0:80"
CHECK = f"service:{SERVICE}:1"
POLICY = RestartPolicy(limit=3, grace=10.0, samples=((CHECK, 2.0),))


def watched_one(started_at: float = 1000.0, policy: RestartPolicy = POLICY, ran_before: bool = False) -> dict:
    return {CID: Watched(CID, "web.0", started_at, ran_before, 10.0, ((SERVICE, policy),))}


class Clocked:
    """A tracker driven like the watcher drives it, the agent's answer given per round."""

    def __init__(self, backoff: float = 10.0, backoff_max: float = 80.0, now: float = 1000.0) -> None:
        self.tracker = Tracker(backoff, backoff_max)
        self.now = now
        self.restarts: list[float] = []

    def round(self, status: str, view: dict | None = None, service_id: str = SERVICE) -> list:
        if view is not None:
            self.tracker.watch(view, self.now)
        due = self.tracker.due(self.now)
        decisions = self.tracker.results({c: AgentCheck(service_id, status, "boom") for c in due}, due, self.now) \
            if due else []
        for decision in decisions:
            if decision.kind == "restart":
                self.restarts.append(self.now)
                self.tracker.restarted(CID, self.now)
        return decisions

    def run_until(self, until: float, status: str, view_of=None) -> None:
        while self.now < until:
            self.round(status, view_of(self.now) if view_of else None)
            self.now += 1.0


def test_restart_after_limit_consecutive_failures_and_not_before():
    clock = Clocked()
    clock.tracker.watch(watched_one(), clock.now)
    clock.now = 1010.0  # the grace is over: samples at 1010, 1012, 1014
    assert clock.round("critical") == [] and clock.round("critical") == []  # same instant: one sample
    clock.now = 1012.0
    assert clock.round("critical") == []
    clock.now = 1013.0
    assert clock.round("critical") == []  # not due: one sample per interval
    clock.now = 1014.0
    [decision] = clock.round("critical")
    assert (decision.kind, decision.failures, decision.check_id, decision.in_a_row) == ("restart", 3, CHECK, 1)


def test_nothing_is_counted_within_the_grace():
    clock = Clocked()
    clock.tracker.watch(watched_one(), clock.now)
    clock.run_until(1009.5, "critical")
    assert clock.tracker.due(1009.9) == [] and clock.restarts == []
    clock.run_until(1015.0, "critical")
    assert clock.restarts == [1014.0]


def test_a_passing_sample_sets_the_count_back():
    clock = Clocked()
    clock.tracker.watch(watched_one(), 1000.0)
    for now, status in ((1010, "critical"), (1012, "critical"), (1014, "passing"), (1016, "critical"),
                        (1018, "critical")):
        clock.now = float(now)
        assert clock.round(status) == []
    clock.now = 1020.0
    assert clock.round("critical")[0].kind == "restart"


def test_warnings_count_unless_ignored():
    clock = Clocked()
    clock.tracker.watch(watched_one(), 1000.0)
    clock.run_until(1015.0, "warning")
    assert clock.restarts == [1014.0]
    ignoring = Clocked()
    ignoring.tracker.watch(watched_one(policy=replace(POLICY, ignore_warnings=True)), 1000.0)
    ignoring.run_until(1100.0, "warning")
    assert ignoring.restarts == []


def test_a_check_that_has_not_run_yet_is_no_result():
    """Consul registers a check critical, without output, until its first run: a container
    registered after its grace must not be restarted for that."""
    tracker = Tracker(1.0, 1.0)
    tracker.watch(watched_one(policy=replace(POLICY, limit=1, grace=0.0)), 1000.0)
    for now in (1000.0, 1002.0, 1004.0):
        due = tracker.due(now)
        assert tracker.results({CHECK: AgentCheck(SERVICE, "critical", "")}, due, now) == []
    due = tracker.due(1006.0)
    assert [d.kind for d in tracker.results({CHECK: AgentCheck(SERVICE, "critical", "refused")}, due, 1006.0)] \
        == ["restart"]


def test_a_check_held_for_another_service_is_no_result():
    """A container counts only the checks the agent holds for its own service."""
    clock = Clocked()
    clock.tracker.watch(watched_one(), 1000.0)
    clock.now = 1010.0
    for _ in range(20):
        assert clock.round("critical", service_id="someone-else") == []
        clock.now += 2.0
    assert clock.restarts == []


def test_a_container_that_stays_broken_is_restarted_with_doubling_delays_up_to_the_cap():
    clock = Clocked(backoff=10.0, backoff_max=40.0)
    started = [1000.0]

    def view(now: float) -> dict:
        if clock.restarts and clock.restarts[-1] + 1.0 <= now and started[-1] < clock.restarts[-1]:
            started.append(clock.restarts[-1] + 1.0)  # Docker shows the new start a moment later
        return watched_one(started[-1], ran_before=len(started) > 1)

    clock.run_until(1300.0, "critical", view)
    gaps = [b - a for a, b in zip(clock.restarts, clock.restarts[1:], strict=False)]
    assert clock.restarts[0] == 1014.0
    # grace 10 + 3 samples (0, 2, 4) = 14 s naturally; the backoff's 10, 20, 40, 40 s where longer
    assert gaps[:4] == [15.0, 21.0, 41.0, 41.0], gaps
    assert all(gap >= 40.0 for gap in gaps[2:])


def test_passing_for_the_current_delay_ends_the_row():
    clock = Clocked(backoff=10.0, backoff_max=40.0)
    clock.tracker.watch(watched_one(), 1000.0)
    clock.run_until(1015.0, "critical")
    assert clock.tracker.row_of(CID)[0] == 1
    clock.tracker.watch(watched_one(1015.0, ran_before=True), 1015.0)
    clock.run_until(1040.0, "passing")  # counting from 1025; passing for 10 s by 1035
    assert clock.tracker.row_of(CID) == (0, 0.0)


def test_one_restart_in_flight_at_most():
    tracker = Tracker(1.0, 1.0)
    tracker.watch(watched_one(policy=replace(POLICY, limit=1, grace=0.0)), 1000.0)
    due = tracker.due(1000.0)
    assert [d.kind for d in tracker.results({CHECK: AgentCheck(SERVICE, "critical", "x")}, due, 1000.0)] == ["restart"]
    for now in (1005.0, 1010.0, 1100.0):  # never told it is over: nothing is sampled, nothing restarted
        assert tracker.due(now) == []
        assert tracker.results({CHECK: AgentCheck(SERVICE, "critical")}, [CHECK], now) == []


def test_a_daemon_restart_never_shortens_the_backoff():
    """The row is memory; Docker's state is not: a new tracker (a new daemon) that first sees a
    container which ran before and started less than backoff_max ago holds it until then."""
    old = Clocked(backoff=10.0, backoff_max=60.0)
    old.tracker.watch(watched_one(), 1000.0)
    old.run_until(1015.0, "critical")
    assert old.restarts == [1014.0]
    restarted_at = 1015.0  # Docker's new StartedAt
    new = Clocked(backoff=10.0, backoff_max=60.0, now=1020.0)  # the daemon restarted at 1020
    new.run_until(1200.0, "critical", lambda now: watched_one(restarted_at, ran_before=True))
    assert new.restarts[0] >= restarted_at + 60.0  # not at 1029 (grace + 3 samples): held to the longest delay


def test_a_first_start_or_an_old_one_is_not_held_after_a_daemon_restart():
    fresh = Clocked(backoff=10.0, backoff_max=60.0, now=1020.0)
    fresh.run_until(1040.0, "critical", lambda now: watched_one(1000.0, ran_before=False))
    assert fresh.restarts[0] == 1024.0  # the grace long over when first seen: samples at 1020, 1022, 1024
    old_start = Clocked(backoff=10.0, backoff_max=60.0, now=5000.0)
    old_start.run_until(5010.0, "critical", lambda now: watched_one(1000.0, ran_before=True))
    assert old_start.restarts == [5004.0]


def test_held_is_said_once_per_hold():
    clock = Clocked(backoff=100.0, backoff_max=100.0)
    clock.tracker.watch(watched_one(policy=replace(POLICY, grace=0.0, limit=1)), 1000.0)
    decisions = []
    for now in range(1000, 1060, 2):
        clock.now = float(now)
        decisions += clock.round("critical")
    assert [d.kind for d in decisions] == ["restart", "held"]


# -- the watcher (fakes of the agent and Docker) ----------------------------------------------

OWNER = Owner("host1")
OTHER_CID = "beef" * 16


def desire(container_id: str, service_id: str, *, running: bool = True, started_at: float = 1000.0,
           policy: RestartPolicy | None = POLICY) -> ContainerDesire:
    service, _ = mapped(["SERVICE_CHECK_HTTP=/health"])
    service = replace(service, id=service_id, restart=policy,
                      meta=tuple(sorted(marker_meta("host1", container_id).items())))
    return ContainerDesire(container_id, f"name-{container_id[:4]}", "2026-01-01T00:00:00Z", (service,),
                           status=ContainerStatus(running=running, started_at=started_at))


def snapshot(*desires: ContainerDesire, actual_owner: str = "host1", actual_container: str | None = None
             ) -> Snapshot:
    actual = {}
    for d in desires:
        for s in d.services:
            record = registered_form(s)
            meta = dict(record.meta)
            meta["consul_reg_host"] = actual_owner
            meta["consul_reg_container"] = actual_container or d.container_id
            actual[s.id] = replace(record, meta=meta)
    return Snapshot(generation=1, desires=MappingProxyType({d.container_id: d for d in desires}),
                    actual=MappingProxyType(actual))


def test_only_running_containers_whose_records_are_this_daemons_for_that_container_are_watched():
    assert set(watched(snapshot(desire(CID, SERVICE)), OWNER)) == {CID}
    assert watched(snapshot(desire(CID, SERVICE, running=False)), OWNER) == {}
    assert watched(snapshot(desire(CID, SERVICE, policy=None)), OWNER) == {}
    assert watched(snapshot(desire(CID, SERVICE), actual_owner="other-host"), OWNER) == {}
    assert watched(snapshot(desire(CID, SERVICE), actual_container=OTHER_CID), OWNER) == {}  # another's record
    assert watched(snapshot(desire(CID, SERVICE, started_at=0.0)), OWNER) == {}  # start time unknown
    assert watched(replace(snapshot(desire(CID, SERVICE)), actual=None), OWNER) == {}  # the agent unknown


class FakeAgent:
    """The agent's checks (`statuses`), the services in maintenance, and its records (`records`;
    None: this daemon's of whatever container asks)."""

    def __init__(self) -> None:
        self.statuses: dict[str, AgentCheck] = {}
        self.maintenance: set[str] = set()
        self.records: dict | None = None
        self.reads: list[list[str]] = []
        self.maintenance_reads: list[list[str]] = []
        self.live_reads: list[list[str]] = []

    def check_statuses(self, check_ids, service_ids=()):
        if check_ids:
            self.reads.append(sorted(check_ids))
        self.maintenance_reads.append(sorted(service_ids))
        return CheckRead({c: self.statuses[c] for c in check_ids if c in self.statuses},
                         frozenset(s for s in service_ids if s in self.maintenance))

    def services_matching(self, service_ids):
        self.live_reads.append(sorted(service_ids))
        if self.records is None:
            return {s: registered_form(replace(desire(CID, s).services[0], id=s)) for s in service_ids}
        return {s: self.records[s] for s in service_ids if s in self.records}


class FakeDocker:
    def __init__(self, fail: bool = False) -> None:
        self.restarted: list[tuple[str, float]] = []
        self.stop_timeouts: list[float] = []
        self.fail = fail

    def restart(self, container_id: str, stop_timeout: float, timeout_seconds: float) -> None:
        self.restarted.append((container_id, timeout_seconds))
        self.stop_timeouts.append(stop_timeout)
        if self.fail:
            raise DockerUnavailable("docker: no")


class FakeMetrics:
    def __init__(self) -> None:
        self.outcomes: list[str] = []

    def check_restart(self, outcome: str) -> None:
        self.outcomes.append(outcome)


def wait_for(predicate, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "not within the deadline"
        time.sleep(0.01)


@pytest.mark.parametrize("fail", [False, True])
def test_the_watcher_restarts_its_container_once_and_counts_the_outcome(fail):
    now = [1000.0]
    agent, docker, metrics = FakeAgent(), FakeDocker(fail=fail), FakeMetrics()
    watcher = RestartWatcher(agent, docker, OWNER, metrics, 10.0, 60.0, clock=lambda: now[0])
    other = replace(desire(OTHER_CID, "other"), services=(replace(desire(OTHER_CID, "other").services[0],
                                                                  restart=None),))
    watcher.offer(snapshot(desire(CID, SERVICE), other))
    agent.statuses = {CHECK: AgentCheck(SERVICE, "critical", "HTTP GET: 500"),
                      "service:other:1": AgentCheck("other", "critical")}
    for t in (1005.0, 1010.0, 1012.0, 1014.0):
        now[0] = t
        watcher.step()
    wait_for(lambda: metrics.outcomes != [])
    assert docker.restarted == [(CID, 10.0 + 60.0)]  # its stop timeout and a minute to start
    assert metrics.outcomes == ["failed" if fail else "restarted"]
    assert all(read == [CHECK] for read in agent.reads)  # never the other container's checks
    for t in (1016.0, 1018.0, 1020.0):  # the restart is over: counting waits for the grace again
        now[0] = t
        watcher.step()
    assert len(docker.restarted) == 1


def test_the_watcher_thread_starts_and_stops():
    watcher = RestartWatcher(FakeAgent(), FakeDocker(), OWNER, FakeMetrics(), 10.0, 60.0)
    watcher.start()
    watcher.offer(snapshot(desire(CID, SERVICE)))
    watcher.stop()
    assert watcher._thread is not None and not watcher._thread.is_alive()


def test_flags_turn_it_off_and_refuse_a_bad_backoff():
    from consul_reg.app.cli import UsageError, parse_config

    env = {"CONSUL_HTTP_ADDR": "127.0.0.1:8500"}
    assert parse_config(["--hostname", "h"], env).check_restart is True
    config = parse_config(["--hostname", "h", "--no-check-restart", "--check-restart-backoff", "2",
                           "--check-restart-backoff-max", "8"], env)
    assert (config.check_restart, config.check_restart_backoff, config.check_restart_backoff_max) == (False, 2, 8)
    with pytest.raises(UsageError, match="--check-restart-backoff"):
        parse_config(["--hostname", "h", "--check-restart-backoff", "20", "--check-restart-backoff-max", "8"], env)


def test_the_metric_has_bounded_labels_from_the_start():
    from consul_reg.app.metrics import PrometheusMetrics

    metrics = PrometheusMetrics()
    metrics.check_restart("restarted")
    metrics.check_restart("anything a container wrote")  # never a new series
    text = metrics.render()[0].decode()
    assert 'consul_reg_check_restarts_total{outcome="restarted"} 1.0' in text
    assert 'consul_reg_check_restarts_total{outcome="failed"} 1.0' in text
    assert text.count("consul_reg_check_restarts_total{") == 2


@pytest.mark.parametrize("on", [True, False])
def test_the_daemon_wires_the_watcher_as_a_snapshot_subscriber_unless_turned_off(on):
    from consul_reg.app.config import Config
    from consul_reg.app.daemon import Daemon
    from consul_reg.core.records import AgentInfo

    daemon = Daemon(Config(hostname="h1", registry_uris=("consul://127.0.0.1:1",), check_restart=on))
    try:
        loop = daemon.build(AgentInfo("1.8.7", "n1", "id", "127.0.0.1", False))
        assert (daemon.restarts is not None) is on
        assert (daemon.restarts in loop.publisher.subscribers) is on
    finally:
        daemon.registry.close()
        daemon.docker.close()


def test_a_failing_round_never_ends_the_watcher():
    class BrokenAgent(FakeAgent):
        def check_statuses(self, check_ids, service_ids=()):
            self.reads.append(sorted(check_ids))
            raise KeyError("a bug")

    agent = BrokenAgent()
    watcher = RestartWatcher(agent, FakeDocker(), OWNER, FakeMetrics(), 10.0, 60.0, clock=lambda: 2000.0)
    watcher.offer(snapshot(desire(CID, SERVICE)))
    watcher.start()
    try:
        wait_for(lambda: agent.reads != [])
        watcher.offer(snapshot(desire(CID, SERVICE)))  # wakes it: a living watcher reads again
        wait_for(lambda: len(agent.reads) >= 2)
    finally:
        watcher.stop()


def test_the_delay_runs_from_the_end_of_a_slow_restart():
    """A restart that takes 5 s (a long stop timeout): the next may come no sooner than the
    delay after the new start, which is what Docker's StartedAt shows."""
    tracker = Tracker(10.0, 10.0)
    tracker.watch(watched_one(policy=replace(POLICY, limit=1, grace=0.0)), 1000.0)
    due = tracker.due(1000.0)
    assert [d.kind for d in tracker.results({CHECK: AgentCheck(SERVICE, "critical", "x")}, due, 1000.0)] == \
        ["restart"]
    tracker.restarted(CID, 1005.0)  # over 5 s later
    assert tracker.row_of(CID) == (1, 1015.0)
