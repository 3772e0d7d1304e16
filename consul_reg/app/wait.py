"""`consul-reg wait [--passing | --registered | --gone] [--timeout DURATION] [the daemon's
flags] CONTAINER... [registry-uri]`: for deploy scripts, until every service the daemon
would register for those containers is in the catalog with all its checks passing
(`--passing`, the default), is there at all (`--registered`), or is gone (`--gone`).

Exit codes: 0 done; 1 timed out (each service or check not yet as asked is named on
stderr, a failing check with its output); 2 a usage error (cli.py), or settings that
cannot work: TLS files that cannot be loaded, a token the agent refuses (403); 3
nothing to wait for: a container that is not there or not running (`--passing`,
`--registered`; also one that stops, goes or is replaced while waited on), one that
would register nothing, or Docker that cannot be reached.

An instance counts for `--passing` and `--registered` only when its ownership marker
names the container waited on (its full ID) and this daemon (host, --instance): after
`docker rm -f app && docker run --name app`, or with a fixed SERVICE_ID, the catalog
may still hold the old container's instance under the same ID. For `--gone`, every
record some consul-reg marked as the container's is waited on; a removed container's
are found by its ID (or ID prefix), or by its name among this daemon's records with
default IDs (`<hostname>:<name>[:<port>]`). Every line written goes through the
logs' redaction (the token, should an error page echo it).

The expected services are mapped once, at start, as `explain` maps them: the agent's
settings, the container's labels, env and env file, the daemon's flags. Then one
thread per service name holds a blocking query on /v1/health/service/<name>
(consul/health.py), keeping this agent's node's instances only; the main thread
judges every answer. Nothing polls: a request goes out at start, when the service's
instances or checks changed, when a blocking query's wait ran out (never before the
deadline), or after a back-off when the agent failed or answered without news; each
blocking query waits at most a minute (and never past the deadline), and one after an
error starts afresh (index 0: a restarted agent's index went down). Every call outside
the watches gets the time left as its time-out (the time-out's report, reading the
checks' latest outputs, a second more at most).
"""

from __future__ import annotations

import queue
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

from consul_reg.app import logs
from consul_reg.app.cli import USAGE_EXIT, UsageError
from consul_reg.app.config import Config
from consul_reg.app.explain import agent_settings, map_running, read_env_file
from consul_reg.app.uris import consul_endpoint
from consul_reg.app.wait_args import DEFAULT_TIMEOUT_SECONDS, WAIT_HELP, parse_wait
from consul_reg.app.wait_judge import MAX_OUTPUT_SHOWN, Expected, View, label, unmet
from consul_reg.consul.agent import ConsulClient, ConsulRegistry
from consul_reg.consul.health import CheckHealth, agent_checks, marked_services, service_health
from consul_reg.core.errors import DockerUnavailable, RegistryError, RegistryPermissionDenied
from consul_reg.core.records import RegisteredService, fold_id
from consul_reg.core.text import printable
from consul_reg.docker.client import DockerSource
from consul_reg.mapping.settings import MappingSettings

EXIT_DONE, EXIT_TIMED_OUT, EXIT_CANNOT_WORK, EXIT_NOTHING_TO_WAIT_FOR = 0, 1, USAGE_EXIT, 3
MAX_BLOCK_SECONDS = 60.0  # the longest wait of one blocking query (a lost index costs no more)
REPORT_GRACE = 1.0  # seconds the time-out's report may take to read the checks' fresh outputs
_MAX_PAUSE = 5.0  # the longest back-off between two requests of one watch, or two looks at the containers
_SHORT_ID = re.compile(r"[0-9a-f]{12,64}")  # a container ID or a prefix Docker would show


class NothingToWaitFor(Exception):
    """A container named cannot have the services asked for (not there, not running, none)."""


def say(stream: TextIO, line: str) -> None:
    """Every line `wait` writes: scrubbed of the token as the daemon's log lines are."""
    print(logs.redact(line), file=stream)


def main(argv: Sequence[str]) -> int:
    if any(arg in ("-h", "--help") for arg in argv):
        say(sys.stdout, WAIT_HELP)
        return EXIT_DONE
    try:
        args = parse_wait(argv)
    except UsageError as error:
        say(sys.stderr, f"consul-reg: {error}")
        return USAGE_EXIT
    logs.setup("ERROR", "text", secrets=(args.config.token or "",))
    return wait(args.config, args.containers, args.mode, args.timeout)


def wait(config: Config, containers: Sequence[str], mode: str = "passing",
         timeout: float = DEFAULT_TIMEOUT_SECONDS, out: TextIO = sys.stdout, err: TextIO = sys.stderr,
         clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> int:
    started = clock()
    deadline = started + timeout
    logs.add_secret(config.token or "")
    try:  # One kept connection per watched name at most: names are bounded by the containers named.
        client = ConsulClient(consul_endpoint(config.registry_uris[0]), token=config.token,
                              max_connections=len(containers) * config.limits.services_per_container + 2)
    except OSError as error:  # a CA file or client certificate missing or unreadable (ssl.SSLError too)
        say(err, f"consul-reg wait: the agent's TLS settings cannot be used: {printable(error, 300, one_line=True)}")
        return EXIT_CANNOT_WORK
    try:
        try:
            docker = DockerSource(filters=config.docker_filters())
        except DockerUnavailable as error:
            say(err, f"consul-reg wait: {error}")
            return EXIT_NOTHING_TO_WAIT_FOR
        try:
            node, settings = _agent(config, ConsulRegistry(client), deadline, clock, sleep)
            expected = _expected(config, docker, client, settings, containers, mode, lambda: _left(deadline, clock))
        except RegistryPermissionDenied as error:
            return _refused(err, str(error))
        except RegistryError as error:  # asked again until the deadline (_agent)
            say(err, f"consul-reg wait: the Consul agent cannot be reached or refused (tried for "
                     f"{_seconds(clock() - started)}): {printable(error, MAX_OUTPUT_SHOWN, one_line=True)}")
            return EXIT_TIMED_OUT
        except (NothingToWaitFor, DockerUnavailable) as error:
            say(err, f"consul-reg wait: {error}")
            return EXIT_NOTHING_TO_WAIT_FOR
        try:
            ids = {want.container: want.container_id for want in expected}
            changed = (lambda: _changed(docker, containers, ids)) if mode != "gone" else (lambda: [])
            return until_done(client, node, expected, mode, containers, changed, started, deadline, clock, out, err)
        finally:
            docker.close()
    finally:
        client.close()


def _refused(err: TextIO, reason: str) -> int:
    """A 403: the token lacks a permission; waiting longer cannot help."""
    say(err, f"consul-reg wait: the agent refused the token: {printable(reason, MAX_OUTPUT_SHOWN, one_line=True)}")
    return EXIT_CANNOT_WORK


def _left(deadline: float, clock: Callable[[], float]) -> float:
    """The time left, as one call's time-out (never 0: the transport takes it as a deadline)."""
    return max(deadline - clock(), 0.05)


def _seconds(spent: float) -> str:
    return f"{spent:.1f}".removesuffix(".0") + "s"


def _agent(config: Config, registry: ConsulRegistry, deadline: float, clock: Callable[[], float],
           sleep: Callable[[float], None]) -> tuple[str, MappingSettings]:
    """This agent's node name and the mapping's settings; the agent is asked again on a
    back-off until the deadline (the last RegistryError raised), never after a 403."""
    pause = 0.5
    while True:
        try:
            settings, info = agent_settings(config, registry, registry.agent_info(timeout=_left(deadline, clock)))
            return info.node_name, settings
        except RegistryPermissionDenied:
            raise
        except RegistryError:
            if clock() >= deadline:
                raise
            sleep(min(pause, deadline - clock()))  # the last try at the deadline
            pause = min(pause * 2, _MAX_PAUSE)


def _expected(config: Config, docker: DockerSource, client: ConsulClient, settings: MappingSettings,
              containers: Sequence[str], mode: str, left: Callable[[], float]) -> list[Expected]:
    expected: list[Expected] = []
    for ref in containers:
        shown = printable(ref, 200)
        container = docker.inspect(ref)
        if container is None:
            if mode == "gone":  # removed: whatever records of it some consul-reg still holds
                expected.extend(Expected(r.id, r.name, ref, (), r.container_id)
                                for r in _records_of_removed(config, client, ref, left))
                continue
            raise NothingToWaitFor(f"no container named or with ID {shown}")
        container_id = str(container.get("Id") or "")
        running = bool((container.get("State") or {}).get("Running"))
        mapped = map_running(docker, container, settings, read_env_file(config, docker, container)) \
            if running else None
        if mode == "gone":
            held = {r.id: r.name for r in marked_services(client, container_id, left())}
            held.update({s.id: s.name for s in mapped.services} if mapped else {})
            expected.extend(Expected(service_id, name, ref, (), container_id) for service_id, name in held.items())
            continue
        if mapped is None:
            raise NothingToWaitFor(f"container {shown} is not running ({_state(container)})")
        if not mapped.services:
            raise NothingToWaitFor(f"container {shown} would register nothing: "
                                   f"{printable(mapped.skipped_reason or 'no service', 300)}")
        expected.extend(Expected(s.id, s.name, ref, tuple(c.check_id for c in s.checks), container_id, config.owner)
                        for s in mapped.services)
    return expected


def _records_of_removed(config: Config, client: ConsulClient, ref: str, left: Callable[[], float]
                        ) -> list[RegisteredService]:
    """The records some consul-reg still holds of a removed container: marked with an ID
    `ref` begins (12 hex digits or more), or this daemon's with the default IDs of a
    container named `ref`; then every record marked as one of those containers'."""
    records = marked_services(client, timeout=left())
    by_name = fold_id(f"{config.owner.host}:{ref}")
    ids = {r.container_id for r in records if r.container_id and (
        (_SHORT_ID.fullmatch(ref) and r.container_id.startswith(ref))
        or (r.owned_by(config.owner) and (fold_id(r.id) == by_name or fold_id(r.id).startswith(by_name + ":"))))}
    return [r for r in records if r.container_id in ids]


def _state(container: dict[str, Any]) -> str:
    state = container.get("State") or {}
    status = printable(state.get("Status") or "not running", 40)
    return f"{status}, exit code {state.get('ExitCode')}" if status == "exited" else status


def until_done(client: ConsulClient, node: str, expected: Sequence[Expected], mode: str, containers: Sequence[str],
               changed: Callable[[], list[str]], started: float, deadline: float, clock: Callable[[], float],
               out: TextIO, err: TextIO,
               pause: Callable[[threading.Event, float], bool] = lambda stop, seconds: stop.wait(seconds)) -> int:
    """The waiting itself: one watch per service name, every answer judged (unmet) until
    nothing is left (EXIT_DONE), the agent refused the token (EXIT_CANNOT_WORK), a container
    is no longer the one waited on (`changed`, asked on a back-off: EXIT_NOTHING_TO_WAIT_FOR)
    or the deadline passed (EXIT_TIMED_OUT, each line of what is left on `err`)."""
    answers: queue.Queue[tuple[str, View]] = queue.Queue()
    stop = threading.Event()
    views: dict[str, View] = {}
    for name in dict.fromkeys(want.name for want in expected):
        _Watch(client, name, node, deadline, clock, answers.put, stop, pause).start()
    look, look_pause = started, 1.0
    try:
        while True:
            left = unmet(mode, expected, views)
            if not left:
                for want in expected:
                    say(out, f"{mode}: {label(want)}")
                for ref in containers:
                    if not any(want.container == ref for want in expected):
                        say(out, f"{mode}: container {printable(ref, 200)}: no service left")
                return EXIT_DONE
            denied = next((view.error for view in views.values() if view.denied), "")
            if denied:
                return _refused(err, denied)
            now = clock()
            if now >= look:
                gone = changed()
                if gone:
                    say(err, f"consul-reg wait: gave up after {_seconds(now - started)}: a container waited on "
                             f"stopped, went or was replaced; not yet {mode}:")
                    for line in left + gone:
                        say(err, f"  {line}")
                    return EXIT_NOTHING_TO_WAIT_FOR
                look, look_pause = now + look_pause, min(look_pause * 2, _MAX_PAUSE)
            remaining = deadline - now
            if remaining <= 0:
                fresh = _fresh_checks(client, views) if mode == "passing" else None
                left = unmet(mode, expected, views, fresh)
                say(err, f"consul-reg wait: timed out after {_seconds(clock() - started)} waiting for {len(expected)} "
                         f"service(s) to be {mode} in the agent's node {printable(node, 200)}; not yet:")
                for line in left:
                    say(err, f"  {line}")
                return EXIT_TIMED_OUT
            try:
                name, view = answers.get(timeout=max(min(remaining, look - now), 0.01))
            except queue.Empty:
                continue
            views[name] = view
            while not answers.empty():  # judge once for everything that came together
                name, view = answers.get_nowait()
                views[name] = view
    finally:
        stop.set()


def _fresh_checks(client: ConsulClient, views: Mapping[str, View]) -> dict[str, CheckHealth]:
    """At a time-out: the agent's own view of the checks that are not passing (their output
    reaches the catalog only every few minutes), or nothing when it cannot be read."""
    failing = {check.check_id for view in views.values() for instance in view.instances
               for check in instance.checks if check.status != "passing"}
    try:
        return agent_checks(client, failing, timeout=REPORT_GRACE)
    except RegistryError:
        return {}


def _changed(docker: DockerSource, containers: Sequence[str], ids: Mapping[str, str]) -> list[str]:
    """The containers that stopped, went or were replaced (another ID under the name) since
    their services were computed (one inspect each; Docker unreachable: none known)."""
    lines = []
    for ref in containers:
        try:
            container = docker.inspect(ref)
        except DockerUnavailable:
            continue
        if container is None:
            lines.append(f"container {printable(ref, 200)}: removed")
        elif ids.get(ref) and container.get("Id") != ids[ref]:
            lines.append(f"container {printable(ref, 200)}: replaced by container "
                         f"{printable(str(container.get('Id'))[:12])}")
        elif not (container.get("State") or {}).get("Running"):
            lines.append(f"container {printable(ref, 200)}: not running ({_state(container)})")
    return lines


class _Watch(threading.Thread):
    """One blocking query after another on one service name, each answer posted."""

    def __init__(self, client: ConsulClient, name: str, node: str, deadline: float, clock: Callable[[], float],
                 post: Callable[[tuple[str, View]], None], stop: threading.Event,
                 pause: Callable[[threading.Event, float], bool]) -> None:
        super().__init__(name=f"wait-{name[:40]}", daemon=True)
        self._client, self._service, self._node = client, name, node
        self._deadline, self._clock, self._post, self._stop, self._pause = deadline, clock, post, stop, pause

    def run(self) -> None:
        index, pause = 0, 0.0
        while not self._pause(self._stop, pause):
            remaining = self._deadline - self._clock()
            if remaining <= 0:
                return
            asked = self._clock()
            try:
                answered, instances = service_health(self._client, self._service, self._node, index,
                                                     min(remaining, MAX_BLOCK_SECONDS), timeout=min(
                                                         self._client.timeout, max(remaining, 1.0)))
            except RegistryPermissionDenied as error:  # asking again cannot help
                self._post((self._service, View(error=logs.redact(str(error)), denied=True)))
                return
            except RegistryError as error:
                self._post((self._service, View(error=logs.redact(str(error)))))
                # Asked afresh: an agent that restarted meanwhile counts its index from 1 again, and
                # a blocking query on the old one would wait its whole time for nothing.
                index, pause = 0, min(max(pause * 2, 0.5), _MAX_PAUSE)
                continue
            self._post((self._service, View(instances)))
            index, pause = next_request(index, answered, self._clock() - asked, pause)


def next_request(index: int, answered: int, took: float, pause: float) -> tuple[int, float]:
    """(the next request's index, the pause before it), as Consul's blocking queries ask:
    a newer index is asked at once; one that went backwards is asked afresh (index 0);
    an answer without an index, or the same index back within a second (a wake-up without
    news: a blocking query waits at least a second), is asked again after a growing pause."""
    if answered <= 0:
        return 0, min(max(pause * 2, 0.5), _MAX_PAUSE)
    if answered < index:
        return 0, 0.0
    if answered == index and took < 1.0:
        return index, min(max(pause * 2, 0.5), _MAX_PAUSE)
    return answered, 0.0
