"""Hints -> actions. Pure: a batch of messages in, what the loop must do out.

Every per-event action (drain, death, reap bookkeeping, health re-report,
refresh) is always returned, whether or not a full pass is asked in the same
batch: a full pass relists everything, but only events say "this container
is being stopped" or "this container restarted".
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Container events that change what a container registers. "kill" starts a
# drain and is never followed by an inspect: inspecting a container that is
# being killed waits on dockerd's lock until its network is torn down (~100 ms).
CONTAINER_ACTIONS = frozenset({
    "start", "restart", "die", "stop", "destroy", "rename", "pause", "unpause", "health_status", "update", "kill",
})
# What the event stream asks dockerd for (its `event` filter): the actions above, as each
# engine spells them, and nothing else (a HEALTHCHECK probe's exec_* events carry every
# label of the container, several per probe). dockerd 20.10 matches a filter holding
# "health_status" as a prefix ("health_status: healthy" included); an engine matching
# exactly gets the suffixed spellings too. Podman matches its internal names, case-
# insensitively: "died" for die, "remove" for destroy (hint_from_event reads them back).
EVENT_FILTER_ACTIONS = tuple(sorted(CONTAINER_ACTIONS | {
    "health_status: healthy", "health_status: unhealthy", "died", "remove"}))
# The only event attributes anything reads (a container's labels come with every
# event: they are not kept).
KEPT_ATTRIBUTES = ("exitCode", "signal")
# A kill by these cannot be trapped: the death follows at once, and a maintenance
# write first would only delay the deregistration (it doubled die->deregistered).
UNTRAPPABLE_SIGNALS = frozenset({"9", "KILL", "SIGKILL"})
# Events after which daemon-owned checks of the container are reported at once.
STATUS_ACTIONS = frozenset({"health_status", "pause", "unpause", "start", "restart"})


@dataclass(frozen=True)
class Hint:
    """A reason to look at one container again (from Docker's events), or a
    message for the whole daemon (container_id "")."""

    container_id: str
    action: str
    time_nano: int = 0
    attributes: tuple[tuple[str, str], ...] = ()

    def attribute(self, name: str) -> str:
        return dict(self.attributes).get(name, "")


# Messages for the whole daemon (container_id ""), and what each asks for.
STOP = "stop"
RELOAD = "reload"  # SIGHUP: re-read the token file, full pass
START = "start"  # the daemon started: first full pass
DOCKER_RECONNECTED = "docker reconnected"  # events may have been lost: full pass
EVENT_SKIPPED = "event skipped"  # an event too large to read: whose it was is unknown, full pass
AGENT_BACK = "agent back"  # the agent answers again (or restarted): full pass
CHECK_MISSING = "check missing"  # the agent lost a check we report: re-register that service
SCRIPTS_REFUSED = "scripts refused"  # re-map everything without agent-run scripts
ENV_FILES_DUE = "env files due"  # time to poll env files
FULL_PASS_REASONS = frozenset({RELOAD, START, DOCKER_RECONNECTED, EVENT_SKIPPED, AGENT_BACK, SCRIPTS_REFUSED})


@dataclass(frozen=True)
class Actions:
    stop: bool = False
    reload_token: bool = False
    full_reason: str = ""  # non-empty: relist Docker and the primary
    restarted: frozenset[str] = frozenset()  # containers whose process (re)started: reaps and drains end
    drains: tuple[tuple[str, str], ...] = ()  # (container ID, signal) of a kill not followed by its death
    deaths: tuple[tuple[str, str], ...] = ()  # (container ID, exit code): its last event was "die"
    refresh: frozenset[str] = frozenset()  # containers to inspect again
    report_status: frozenset[str] = frozenset()  # containers whose daemon-owned checks report at once
    health_changed: frozenset[str] = frozenset()  # a health_status event: looked at once more, shortly after
    missing_checks: frozenset[str] = frozenset()  # service IDs the agent lost
    poll_env_files: bool = False
    event_times: tuple[int, ...] = field(default=(), compare=False)  # Docker's timeNano of the events


def route(batch: list[Hint]) -> Actions:
    """What one batch of hints asks for. The last event of a container decides
    between "it died" and "look at it again"; a kill followed by the die (or a
    start: a restart) in the same batch needs no drain (the deregistration
    follows at once), nor does a SIGKILL (nothing drains: the process is gone
    before the agent is told)."""
    reasons = [h.action for h in batch if not h.container_id and h.action in FULL_PASS_REASONS]
    last: dict[str, Hint] = {}
    kills: dict[str, str] = {}
    restarted: set[str] = set()
    status: set[str] = set()
    health: set[str] = set()
    for hint in batch:
        if not hint.container_id or hint.action not in CONTAINER_ACTIONS:
            continue
        if hint.action == "kill":
            signal = hint.attribute("signal")
            if signal.strip().upper() not in UNTRAPPABLE_SIGNALS:
                kills[hint.container_id] = signal
            continue
        last[hint.container_id] = hint
        if hint.action in ("start", "restart"):
            restarted.add(hint.container_id)
            kills.pop(hint.container_id, None)  # the stop it began is over: the container runs again
        if hint.action in STATUS_ACTIONS:
            status.add(hint.container_id)
        if hint.action == "health_status":
            health.add(hint.container_id)
    deaths = tuple((cid, hint.attribute("exitCode")) for cid, hint in last.items() if hint.action == "die")
    dead = {cid for cid, _ in deaths}
    drains = tuple((cid, sig) for cid, sig in kills.items() if cid not in dead)
    return Actions(
        stop=any(h.action == STOP and not h.container_id for h in batch),
        reload_token=RELOAD in reasons,
        full_reason=", ".join(dict.fromkeys(reasons)),
        restarted=frozenset(restarted),
        drains=drains,
        deaths=deaths,
        refresh=frozenset(cid for cid in last if cid not in dead),
        report_status=frozenset(status - dead),
        health_changed=frozenset(health - dead),
        missing_checks=frozenset(h.attribute("service_id") for h in batch
                                 if not h.container_id and h.action == CHECK_MISSING),
        poll_env_files=any(h.action == ENV_FILES_DUE and not h.container_id for h in batch),
        event_times=tuple(h.time_nano for h in batch if h.container_id and h.time_nano),
    )
