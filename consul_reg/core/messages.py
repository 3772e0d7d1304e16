"""What other threads tell the sync loop: one frozen dataclass per message.

The Docker event reader, the agent watch, heartbeat senders, env-file
readers and the daemon's signal thread only ever put these in the loop's
inbox; the loop takes everything queued at once and dispatches on the type
(`match`), as Nomad's service client takes committed operations.
"""

from __future__ import annotations

from dataclasses import dataclass

from consul_reg.core.records import AgentInfo

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
# insensitively: "died" for die, "remove" for destroy (the event reader reads them back).
EVENT_FILTER_ACTIONS = tuple(sorted(CONTAINER_ACTIONS | {
    "health_status: healthy", "health_status: unhealthy", "died", "remove"}))


@dataclass(frozen=True)
class DockerEvent:
    """One of Docker's container events: a reason to look at that container again.
    Only the attributes anything reads are kept (an event carries every label)."""

    container_id: str
    action: str  # one of CONTAINER_ACTIONS, in Docker's words whatever the engine said
    time_nano: int = 0  # Docker's own time of the event
    exit_code: str = ""  # "die"
    signal: str = ""  # "kill"
    name: str = ""  # the container's name as the event gave it (shaped as Docker's names, else "")


@dataclass(frozen=True)
class Start:
    """The daemon started: the first full pass. `identity` is the agent it reached."""

    identity: AgentInfo | None = None


@dataclass(frozen=True)
class Stop:
    """SIGTERM or SIGINT: stop after this batch."""


@dataclass(frozen=True)
class Reload:
    """SIGHUP (its token file already re-read by the daemon): a full pass."""


@dataclass(frozen=True)
class DockerReconnected:
    """The event stream was reopened: events may have been lost, a full pass."""


@dataclass(frozen=True)
class EventsSkipped:
    """Events too large to read: whose they were is unknown, a full pass."""

    count: int = 1


@dataclass(frozen=True)
class AgentBack:
    """The agent answers again after an outage, or was replaced (another node ID)."""

    identity: AgentInfo


@dataclass(frozen=True)
class CheckMissing:
    """The agent does not know a check the daemon reports: its service is registered again."""

    service_id: str
    check_id: str = ""


@dataclass(frozen=True)
class ScriptsRefused:
    """The agent refused a check that runs a command: everything is mapped again without them."""


@dataclass(frozen=True)
class EnvFileRead:
    """An env-file reader's answer."""

    container_id: str
    path: str
    text: str | None  # None: no such file (yet)
    error: str = ""  # non-empty: unreadable, and why
    docker_down: bool = False


Message = (DockerEvent | Start | Stop | Reload | DockerReconnected | EventsSkipped | AgentBack | CheckMissing
           | ScriptsRefused | EnvFileRead)
# The messages that ask for a full pass, and the reason each gives in the log.
FULL_PASS_REASONS: dict[type, str] = {
    Start: "start", Reload: "reload", DockerReconnected: "docker reconnected", EventsSkipped: "event skipped",
    AgentBack: "agent back", ScriptsRefused: "scripts refused",
}
