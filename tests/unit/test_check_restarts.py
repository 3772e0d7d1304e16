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
                    actual=MappingProxyType(actual),
                    restart_candidates=frozenset(d.container_id for d in desires
                                                 if any(s.restart is not None for s in d.services)))


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
    other_check = "service:other:1"
    other_service = desire(OTHER_CID, "other").services[0]
    other = replace(desire(OTHER_CID, "other"), services=(replace(
        other_service, checks=(replace(other_service.checks[0], check_id=other_check),),
        restart=replace(POLICY, samples=((other_check, 2.0),))),))
    watcher.offer(snapshot(desire(CID, SERVICE), other))
    # the other container's check is sampled too, and fails, but as the agent holds it for another
    # service than the one it is counted for (a check ID claimed across services): never a result
    agent.statuses = {CHECK: AgentCheck(SERVICE, "critical", "HTTP GET: 500"),
                      other_check: AgentCheck(SERVICE, "critical", "HTTP GET: 500")}
    for t in (1005.0, 1010.0, 1012.0, 1014.0):
        now[0] = t
        watcher.step()
    wait_for(lambda: metrics.outcomes != [])
    assert docker.restarted == [(CID, 10.0 + 60.0)]  # its stop timeout and a minute to start
    assert docker.stop_timeouts == [10.0]  # sent as the restart's t=
    assert metrics.outcomes == ["failed" if fail else "restarted"]
    assert [CHECK, other_check] in agent.reads  # both sampled, in one read; only its own restarted
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


# -- after the adversarial review -------------------------------------------------------------


def test_a_service_in_maintenance_gives_no_result():
    """A `docker stop` puts the services in maintenance (the daemon's drain) before the app's check
    fails; an operator's maintenance is theirs: neither is counted, whatever the checks say."""
    clock = Clocked()
    clock.tracker.watch(watched_one(), 1000.0)
    for now in range(1010, 1060, 2):
        clock.now = float(now)
        due = clock.tracker.due(clock.now)
        assert clock.tracker.services(due) == ([SERVICE] if due else [])
        assert clock.tracker.results({c: AgentCheck(SERVICE, "critical", "down") for c in due}, due, clock.now,
                                     maintenance={SERVICE}) == []
    assert clock.tracker.row_of(CID) == (0, 0.0)
    clock.now = 1060.0  # out of maintenance: counted again, from 0
    clock.run_until(1066.0, "critical")
    assert clock.restarts == [1064.0]


def test_the_watcher_reads_maintenance_with_the_checks_and_never_restarts_a_drained_container():
    now = [1000.0]
    agent, docker, metrics = FakeAgent(), FakeDocker(), FakeMetrics()
    watcher = RestartWatcher(agent, docker, OWNER, metrics, 10.0, 60.0, clock=lambda: now[0])
    watcher.offer(snapshot(desire(CID, SERVICE)))
    agent.statuses = {CHECK: AgentCheck(SERVICE, "critical", "HTTP GET: 503")}
    agent.maintenance = {SERVICE}
    for t in range(1010, 1040, 2):
        now[0] = float(t)
        watcher.step()
    assert agent.reads and all(services == [SERVICE] for services in agent.maintenance_reads)  # one read: both
    assert docker.restarted == [] and metrics.outcomes == []


@pytest.mark.parametrize("why", ["maintenance", "another container's record", "no record"])
def test_a_last_live_read_before_the_restart_stops_it(why):
    """The decision comes from the snapshot and the last round's read; the agent is read once more,
    just before the restart: a stop's drain since, or a record no longer this daemon's for that
    container, and there is no restart (and no outcome: nothing was asked of Docker)."""
    now = [1000.0]
    agent, docker, metrics = FakeAgent(), FakeDocker(), FakeMetrics()
    watcher = RestartWatcher(agent, docker, OWNER, metrics, 10.0, 60.0, clock=lambda: now[0])
    watcher.offer(snapshot(desire(CID, SERVICE)))
    agent.statuses = {CHECK: AgentCheck(SERVICE, "critical", "HTTP GET: 503")}
    live = FakeAgent.services_matching(agent, [SERVICE])
    if why == "another container's record":
        agent.records = {SERVICE: registered_form(replace(desire(OTHER_CID, SERVICE).services[0]))}
    elif why == "no record":
        agent.records = {}
    real_check_statuses = agent.check_statuses

    def drained_meanwhile(check_ids, service_ids=()):  # the kill event's drain lands after the round's read
        answer = real_check_statuses(check_ids, service_ids)
        if not check_ids and why == "maintenance":
            return CheckRead(answer.checks, frozenset(service_ids))
        return answer

    agent.check_statuses = drained_meanwhile
    for t in (1010.0, 1012.0, 1014.0):
        now[0] = t
        watcher.step()
    wait_for(lambda: not watcher.tracker._states[CID].in_flight or not watcher._done.empty())
    wait_for(lambda: not watcher._done.empty())
    assert agent.live_reads[-1] == [SERVICE] and live  # read, just before
    assert docker.restarted == [] and metrics.outcomes == []
    agent.records, agent.check_statuses = None, real_check_statuses  # the same, later, as the agent says
    for t in range(1016, 1200, 2):
        now[0] = float(t)
        watcher.step()
    wait_for(lambda: docker.restarted != [])


def test_a_worker_heartbeat_mirroring_a_healthcheck_is_sampled_like_docker_health():
    """A port-less worker with a HEALTHCHECK: its heartbeat reports Docker's health (`starting` as a
    warning), so it is sampled at the HEALTHCHECK's interval, the start period is in the grace, and a
    result while Docker says `starting` is never counted (from the adversarial review)."""
    worker = container(["SERVICE_NAME=worker", "SERVICE_CHECK_RESTART_LIMIT=3"],
                       {"Test": ["CMD", "true"], "Interval": 30_000_000_000, "StartPeriod": 300_000_000_000})
    worker["Config"]["ExposedPorts"], worker["NetworkSettings"]["Ports"] = {}, {}
    [service] = map_container(worker, SETTINGS).services
    policy = service.restart
    [heartbeat] = [c for c in service.checks if c.daemon_probe is not None and c.daemon_probe.kind == "heartbeat"]
    assert policy is not None and policy.samples == ((heartbeat.check_id, 30.0),)
    assert policy.grace == 2 * 30.0 + 300.0 and policy.health_mirrors == (heartbeat.check_id,)
    without = container(["SERVICE_NAME=worker", "SERVICE_CHECK_RESTART_LIMIT=3"])
    without["Config"]["ExposedPorts"], without["NetworkSettings"]["Ports"] = {}, {}
    [plain] = map_container(without, SETTINGS).services
    assert plain.restart is not None and plain.restart.health_mirrors == ()
    assert plain.restart.samples == ((heartbeat.check_id, heartbeat.daemon_probe.interval),)
    # Docker still says `starting` after the start period (failures within its retries): never counted
    tracker = Tracker(10.0, 300.0)
    starting = {CID: Watched(CID, "worker.0", 1000.0, False, 10.0, ((service.id, policy),), "starting")}
    now, decisions = 1000.0, []
    while now < 3000.0:
        tracker.watch(starting, now)
        due = tracker.due(now)
        decisions += tracker.results({c: AgentCheck(service.id, "warning", "docker health: starting")
                                      for c in due}, due, now) if due else []
        now += 1.0
    assert decisions == []
    unhealthy = {CID: replace(starting[CID], health="unhealthy")}
    while not decisions:
        tracker.watch(unhealthy, now)
        due = tracker.due(now)
        decisions += tracker.results({c: AgentCheck(service.id, "critical", "docker health: unhealthy")
                                      for c in due}, due, now) if due else []
        now += 1.0
    assert decisions[0].kind == "restart"


def test_a_daemon_restarted_while_its_restart_stops_the_container_keeps_the_backoff():
    """From the adversarial review: the old daemon asked for a restart; the new one first sees the
    old start (long ago: no hold), then the new start as a known container. A start this tracker did
    not ask for is held as at first sight: no restart before backoff_max after that start."""
    new = Tracker(10.0, 300.0)
    old_start, new_start = 1000.0, 5005.0
    now, restarts = 5003.0, []
    while now < new_start + 400.0:
        start = old_start if now < new_start else new_start
        new.watch({CID: Watched(CID, "web", start, start != old_start, 10.0, ((SERVICE, POLICY),))}, now)
        due = new.due(now)
        for decision in new.results({c: AgentCheck(SERVICE, "critical", "x") for c in due}, due, now) if due else []:
            if decision.kind == "restart":
                restarts.append(now)
                new.restarted(CID, now)
        now += 1.0
    assert restarts and restarts[0] >= new_start + 300.0, restarts


def test_the_end_of_its_own_restart_is_not_held_but_a_start_by_someone_else_is():
    clock = Clocked(backoff=10.0, backoff_max=300.0)
    started = [1000.0]
    operator = 1100.0  # an operator's `docker restart`, when the row's hold is 80 s

    def view(now: float) -> dict:
        if now >= operator and started[-1] < operator:
            started.append(operator)
        elif clock.restarts and clock.restarts[-1] + 1.0 <= now and started[-1] < clock.restarts[-1] + 1.0:
            started.append(clock.restarts[-1] + 1.0)  # its own restart's new start, a moment later
        return watched_one(started[-1], ran_before=len(started) > 1)

    clock.run_until(1500.0, "critical", view)
    before = [t for t in clock.restarts if t < operator]
    after = [t for t in clock.restarts if t >= operator]
    assert len(before) >= 3 and before[1] - before[0] < 30.0  # its own restarts: the backoff, not the longest
    assert after and after[0] >= operator + 300.0, clock.restarts  # someone else's start: held as at first sight


def test_agent_reads_are_at_least_a_second_apart_whatever_the_check_intervals():
    """From the adversarial review: 20 checks at 1.00-1.19 s made 1089 reads a minute. One read per
    round takes every due sample; rounds are at least READ_GAP apart (the fake clock counts reads)."""
    from consul_reg.restarts.tracker import READ_GAP

    checks = tuple((f"service:{SERVICE}:c{i}", 1.0 + i * 0.01) for i in range(20))
    tracker = Tracker(10.0, 300.0)
    tracker.watch({CID: Watched(CID, "web", 1000.0, False, 10.0,
                                ((SERVICE, RestartPolicy(limit=1000, grace=0.0, samples=checks)),))}, 1000.0)
    now, reads, sampled = 1000.0, [], set()
    while now < 1060.0:
        due = tracker.due(now)
        if due:
            reads.append(now)
            sampled |= set(due)
            tracker.results({c: AgentCheck(SERVICE, "passing", "ok") for c in due}, due, now)
        now += tracker.wake_in(now, 30.0) or 0.001
    assert sampled == {c for c, _ in checks}  # every check is still sampled
    assert min(b - a for a, b in zip(reads, reads[1:], strict=False)) >= READ_GAP - 1e-9
    assert len(reads) <= 60 / READ_GAP + 1, len(reads)


def test_a_restart_thread_that_cannot_start_is_counted_failed_and_never_left_in_flight(monkeypatch):
    import threading

    now = [1000.0]
    agent, docker, metrics = FakeAgent(), FakeDocker(), FakeMetrics()
    watcher = RestartWatcher(agent, docker, OWNER, metrics, 10.0, 60.0, clock=lambda: now[0])
    watcher.offer(snapshot(desire(CID, SERVICE)))
    agent.statuses = {CHECK: AgentCheck(SERVICE, "critical", "HTTP GET: 500")}
    real_start, refused = threading.Thread.start, []

    def no_thread_once(self):
        if self.name == "check-restart" and not refused:
            refused.append(self)
            raise RuntimeError("can't start new thread")
        return real_start(self)

    monkeypatch.setattr(threading.Thread, "start", no_thread_once)
    for t in (1010.0, 1012.0, 1014.0):
        now[0] = t
        watcher.step()  # never raises: the decision is handled
    assert refused and metrics.outcomes == ["failed"]
    for t in range(1016, 1200, 2):  # threads again; the check still fails
        now[0] = float(t)
        watcher.step()
    wait_for(lambda: docker.restarted != [])


def test_a_failed_read_sets_the_counts_back():
    """Samples before and after an agent outage are not in a row."""
    from consul_reg.core.errors import RegistryUnavailable

    now, down = [1000.0], [False]

    class Flaky(FakeAgent):
        def check_statuses(self, check_ids, service_ids=()):
            if down[0] and check_ids:
                raise RegistryUnavailable("agent down")
            return super().check_statuses(check_ids, service_ids)

    agent, docker = Flaky(), FakeDocker()
    watcher = RestartWatcher(agent, docker, OWNER, FakeMetrics(), 10.0, 60.0, clock=lambda: now[0])
    watcher.offer(snapshot(desire(CID, SERVICE)))
    agent.statuses = {CHECK: AgentCheck(SERVICE, "critical", "x")}
    for t, is_down in ((1010.0, False), (1012.0, False), (1014.0, True), (1016.0, False), (1018.0, False)):
        now[0], down[0] = t, is_down
        watcher.step()
    assert docker.restarted == []  # 2 before, 2 after: never 3 in a row
    now[0] = 1020.0
    watcher.step()
    wait_for(lambda: docker.restarted != [])


def test_the_wake_is_cleared_before_the_round_so_an_offer_during_it_is_not_lost():
    seen = []

    class Offering(FakeAgent):
        def check_statuses(self, check_ids, service_ids=()):
            seen.append(watcher._wake.is_set())
            return super().check_statuses(check_ids, service_ids)

    agent = Offering()
    watcher = RestartWatcher(agent, FakeDocker(), OWNER, FakeMetrics(), 10.0, 60.0, clock=lambda: 2000.0)
    watcher.offer(snapshot(desire(CID, SERVICE)))
    watcher.start()
    try:
        wait_for(lambda: seen != [])
        assert seen[0] is False  # cleared before the round, not after it
    finally:
        watcher.stop()


def test_a_restart_always_names_its_stop_timeout(tmp_path, monkeypatch):
    """`docker restart` of a container created with `--stop-timeout -1` would wait forever: t= is
    always sent (Docker's 10 for a negative, at most an hour), on the wire and through docker-py."""
    from consul_reg.docker.client import DockerSource, restart_stop_seconds
    from consul_reg.docker.ssh import DockerPy

    from tests.unit.test_docker_wire import answer, request_target, serve_once

    assert [restart_stop_seconds(s) for s in (-1, 0, 2.5, 30, 10**9)] == [10, 0, 2, 30, 3600]
    targets: list[str] = []

    def reply(request: bytes) -> bytes:
        targets.append(request_target(request))
        return answer("204 No Content", b"")

    path = str(tmp_path / "d.sock")
    listener = serve_once(path, reply)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{path}")
    source = DockerSource(timeout=5)
    try:
        source.restart(CID, -1, 5.0)
        source.restart(CID, 45.0, 5.0)
        assert targets == [f"/v1.41/containers/{CID}/restart?t=10", f"/v1.41/containers/{CID}/restart?t=45"]
        monkeypatch.setattr(source, "_docker_py", DockerPy(timeout=5, api_version="1.41"))
        source.restart(CID, -1, 5.0)
        assert targets[-1] == f"/v1.41/containers/{CID}/restart?t=10"
        monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nobody.sock")
        monkeypatch.setattr(source, "_docker_py", DockerPy(timeout=2, api_version="1.41"))
        with pytest.raises(DockerUnavailable, match="could not restart"):
            source.restart(CID, 10.0, 5.0)
    finally:
        source.close()
        listener.close()


def test_the_loop_publishes_the_containers_it_drains_and_the_watcher_skips_them():
    """A `docker stop`'s kill event: the loop's next snapshot names the container as being stopped
    (until its death or the drain timeout), and the watcher watches it no more meanwhile."""
    from consul_reg.core.messages import Start
    from tests.unit.fakes import container as inspected
    from tests.unit.test_loop import Harness, event

    h = Harness()
    h.send(Start())
    h.docker.add(inspected("c1", "web", ports={"80/tcp": "8080"}))
    h.send(event("c1", "start"))
    assert h.loop.snapshot.draining == frozenset()
    h.send(event("c1", "kill", signal="15"))
    assert h.loop.snapshot.draining == {"c1"}
    h.docker.containers["c1"]["State"]["Running"] = False
    h.send(event("c1", "die", exitCode="143"))
    assert h.loop.snapshot.draining == frozenset()
    h.docker.containers["c1"]["State"]["Running"] = True
    h.send(event("c1", "start"))
    h.send(event("c1", "kill", signal="SIGTERM"))  # trapped: no death within the drain timeout
    assert h.loop.snapshot.draining == {"c1"}
    h.clock.advance(31)
    h.send()
    assert h.loop.snapshot.draining == frozenset()
    # the watcher: a container being stopped is not watched
    assert set(watched(snapshot(desire(CID, SERVICE)), OWNER)) == {CID}
    assert watched(replace(snapshot(desire(CID, SERVICE)), draining=frozenset({CID})), OWNER) == {}


def test_an_agent_unreadable_just_before_the_restart_means_no_restart_counted_failed():
    from consul_reg.core.errors import RegistryUnavailable

    now = [1000.0]
    agent, docker, metrics = FakeAgent(), FakeDocker(), FakeMetrics()

    def unreadable(service_ids):
        raise RegistryUnavailable("agent down")

    agent.services_matching = unreadable
    watcher = RestartWatcher(agent, docker, OWNER, metrics, 10.0, 60.0, clock=lambda: now[0])
    watcher.offer(snapshot(desire(CID, SERVICE)))
    agent.statuses = {CHECK: AgentCheck(SERVICE, "critical", "HTTP GET: 503")}
    from loguru import logger

    lines: list[tuple[str, str]] = []
    sink = logger.add(lambda m: lines.append((m.record["level"].name, m.record["message"])), level="INFO")
    try:
        for t in (1010.0, 1012.0, 1014.0):
            now[0] = t
            watcher.step()
        wait_for(lambda: metrics.outcomes != [])
    finally:
        logger.remove(sink)
    assert metrics.outcomes == ["failed"] and docker.restarted == []
    # said as what it is (a warning naming the agent), not as a bug (an error with a traceback)
    assert [level for level, message in lines if "not restarting container" in message] == ["WARNING"]
    assert not [message for level, message in lines if level == "ERROR"]
    now[0] = 1016.0
    watcher.step()
    assert not watcher.tracker._states[CID].in_flight


def test_the_loop_publishes_the_containers_with_a_restart_policy():
    """restart_candidates follows each container's desire: set by a start with a policy, left
    out for one without, gone with the container (by event or by a full pass)."""
    from consul_reg.core.messages import Reload, Start
    from tests.unit.fakes import container as inspected
    from tests.unit.test_loop import Harness, event

    h = Harness()
    h.send(Start())
    h.docker.add(inspected("c1", "web", ports={"80/tcp": "8080"},
                           env=["SERVICE_CHECK_TCP=true", "SERVICE_CHECK_RESTART_LIMIT=3"]))
    h.docker.add(inspected("c2", "db", ports={"5432/tcp": "5432"}, env=["SERVICE_CHECK_TCP=true"]))
    h.send(event("c1", "start"), event("c2", "start"))
    assert h.loop.snapshot.restart_candidates == {"c1"}
    assert set(h.loop.snapshot.desires) == {"c1", "c2"}
    del h.docker.containers["c1"]
    h.send(event("c1", "destroy"))
    assert h.loop.snapshot.restart_candidates == frozenset()
    h.docker.add(inspected("c3", "web2", ports={"81/tcp": "8081"},
                           env=["SERVICE_CHECK_TCP=true", "SERVICE_CHECK_RESTART_LIMIT=2"]))
    h.send(Reload())  # found by a full pass, no event of its own
    assert h.loop.snapshot.restart_candidates == {"c3"}
    del h.docker.containers["c3"]
    h.send(Reload())
    assert h.loop.snapshot.restart_candidates == frozenset() and set(h.loop.snapshot.desires) == {"c2"}


def test_the_watcher_is_woken_only_by_snapshots_that_concern_it():
    """No container with a policy: a snapshot does not wake the watcher's thread (each batch
    of a burst used to). The first snapshot after the last one with a candidate still wakes
    it, so that it lets go of what it watched."""
    watcher = RestartWatcher(FakeAgent(), FakeDocker(), OWNER, FakeMetrics(), 10.0, 60.0, clock=lambda: 2000.0)
    none = replace(snapshot(desire(CID, SERVICE, policy=None)), generation=2)
    assert none.restart_candidates == frozenset()
    watcher.offer(none)
    assert not watcher._wake.is_set()
    watcher.offer(snapshot(desire(CID, SERVICE)))
    assert watcher._wake.is_set()
    watcher._wake.clear()
    watcher.step()
    assert watcher._watched == {CID}
    watcher.offer(none)  # the container lost its policy (recreated without it)
    assert watcher._wake.is_set()
    watcher._wake.clear()
    watcher.step()
    assert watcher._watched == frozenset()
    watcher.offer(replace(none, generation=3))
    assert not watcher._wake.is_set()
