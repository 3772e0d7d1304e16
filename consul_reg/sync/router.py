"""Messages -> actions. Pure: a batch of messages in, what the loop must do out.

Every per-event action (drain, death, reap bookkeeping, health re-report,
refresh) is always returned, whether or not a full pass is asked in the same
batch: a full pass relists everything, but only events say "this container
is being stopped" or "this container restarted".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from consul_reg.core.messages import (
    CONTAINER_ACTIONS,
    FULL_PASS_REASONS,
    AgentBack,
    CheckMissing,
    DockerEvent,
    EnvFileRead,
    Message,
    Start,
    Stop,
)
from consul_reg.core.records import AgentInfo

# A kill by these cannot be trapped: the death follows at once, and a maintenance
# write first would only delay the deregistration (it doubled die->deregistered).
UNTRAPPABLE_SIGNALS = frozenset({"9", "KILL", "SIGKILL"})
# Events after which daemon-owned checks of the container are reported at once.
STATUS_ACTIONS = frozenset({"health_status", "pause", "unpause", "start", "restart"})


@dataclass(frozen=True)
class Actions:
    stop: bool = False
    full_reason: str = ""  # non-empty: relist Docker and the primary
    identity: AgentInfo | None = None  # the agent's identity as a Start or the last AgentBack gave it
    agent_back: bool = False  # the agent answers again, or was replaced
    restarted: frozenset[str] = frozenset()  # containers whose process (re)started: reaps and drains end
    drains: tuple[tuple[str, str], ...] = ()  # (container ID, signal) of a kill not followed by its death
    deaths: tuple[tuple[str, str], ...] = ()  # (container ID, exit code): its last event was "die"
    refresh: frozenset[str] = frozenset()  # containers to inspect again
    names: tuple[tuple[str, str], ...] = ()  # (container ID, name) as the events named them: a hint only
    report_status: frozenset[str] = frozenset()  # containers whose daemon-owned checks report at once
    health_changed: frozenset[str] = frozenset()  # a health_status event: looked at once more, shortly after
    missing_checks: frozenset[str] = frozenset()  # service IDs the agent lost
    env_reads: tuple[EnvFileRead, ...] = ()  # env-file readers' answers, in order
    event_times: tuple[int, ...] = field(default=(), compare=False)  # Docker's timeNano of the events


def route(batch: Sequence[Message]) -> Actions:
    """What one batch of messages asks for. The last event of a container decides
    between "it died" and "look at it again"; a kill followed by the die (or a
    start: a restart) in the same batch needs no drain (the deregistration
    follows at once), nor does a SIGKILL (nothing drains: the process is gone
    before the agent is told)."""
    reasons: list[str] = []
    identity: AgentInfo | None = None
    agent_back = stop = False
    missing: set[str] = set()
    env_reads: list[EnvFileRead] = []
    events: list[DockerEvent] = []
    for message in batch:
        reason = FULL_PASS_REASONS.get(type(message))
        if reason:
            reasons.append(reason)
        match message:
            case DockerEvent(action=action) if action in CONTAINER_ACTIONS:
                events.append(message)
            case Stop():
                stop = True
            case Start(identity=given) if given is not None:
                identity = given
            case AgentBack(identity=given):
                identity, agent_back = given, True
            case CheckMissing(service_id=service_id):
                missing.add(service_id)
            case EnvFileRead():
                env_reads.append(message)
    last: dict[str, DockerEvent] = {}
    kills: dict[str, str] = {}
    restarted: set[str] = set()
    status: set[str] = set()
    health: set[str] = set()
    for event in events:
        if event.action == "kill":
            if event.signal.strip().upper() not in UNTRAPPABLE_SIGNALS:
                kills[event.container_id] = event.signal
            continue
        last[event.container_id] = event
        if event.action in ("start", "restart"):
            restarted.add(event.container_id)
            kills.pop(event.container_id, None)  # the stop it began is over: the container runs again
        if event.action in STATUS_ACTIONS:
            status.add(event.container_id)
        if event.action == "health_status":
            health.add(event.container_id)
    deaths = tuple((cid, event.exit_code) for cid, event in last.items() if event.action == "die")
    dead = {cid for cid, _ in deaths}
    drains = tuple((cid, sig) for cid, sig in kills.items() if cid not in dead)
    return Actions(
        stop=stop,
        full_reason=", ".join(dict.fromkeys(reasons)),
        identity=identity,
        agent_back=agent_back,
        restarted=frozenset(restarted),
        drains=drains,
        deaths=deaths,
        refresh=frozenset(cid for cid in last if cid not in dead),
        names=tuple({event.container_id: event.name for event in events if event.name}.items()),
        report_status=frozenset(status - dead),
        health_changed=frozenset(health - dead),
        missing_checks=frozenset(missing),
        env_reads=tuple(env_reads),
        event_times=tuple(event.time_nano for event in events if event.time_nano),
    )
