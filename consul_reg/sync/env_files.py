"""Each container's env file as the loop knows it (its `EnvFileState`), and
`fold`, which takes a reader's answer in and keeps the last good values
when a read fails or the content is malformed. Owned by the loop's thread."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from loguru import logger

from consul_reg.core.errors import DockerUnavailable
from consul_reg.core.messages import EnvFileRead
from consul_reg.core.text import printable
from consul_reg.mapping import env_file as envfile

NO_VALUES = envfile.EnvFile((), ())


@dataclass(frozen=True)
class EnvFileState:
    """What the loop knows of one container's env file."""

    path: str
    container_name: str = ""  # for warnings: the container may have no desire yet
    read: bool = False  # False until the first answer: the container waits for it
    text: str | None = None
    good: envfile.EnvFile = NO_VALUES  # the last content that parsed; kept when a later one does not
    problem: str = ""  # the last reason it was unreadable or malformed (warned once)


def fold(state: EnvFileState, result: EnvFileRead) -> tuple[EnvFileState, bool, list[str]]:
    """(new state, whether the values the container registers with changed, warnings)."""
    if result.docker_down:
        return state, False, []
    if result.error:
        problem = f"unreadable: {result.error}"
        warnings = [f"env file {printable(result.path)}: {result.error}; keeping its last good values"] \
            if problem != state.problem else []
        return replace(state, read=True, problem=problem), not state.read, warnings
    if result.text is None:  # missing: "nothing yet", no warning
        changed = not state.read or state.good != NO_VALUES
        return EnvFileState(state.path, state.container_name, read=True), changed, []
    if state.read and result.text == state.text:
        return state, False, []
    parsed = envfile.parse(result.text)
    warnings = []
    good = parsed
    problem = ""
    if parsed.problems:
        good = state.good  # malformed: the last good values stay
        problem = "; ".join(parsed.problems)
        if problem != state.problem:
            warnings = [f"env file {printable(result.path)}: {p}" for p in parsed.problems]
    changed = not state.read or good != state.good
    return replace(state, read=True, text=result.text, good=good, problem=problem), changed, warnings


def fold_reads(states: dict[str, EnvFileState], reads: Iterable[EnvFileRead]
               ) -> tuple[set[str], list[tuple[str, DockerUnavailable]]]:
    """Readers' answers into `states` (each container's warnings logged once per content):
    (containers whose values changed, containers whose first read met a Docker outage)."""
    changed: set[str] = set()
    unread: list[tuple[str, DockerUnavailable]] = []
    for read in reads:
        state = states.get(read.container_id)
        if state is None or state.path != read.path:
            continue  # the container went, or now names another file
        if read.docker_down and not state.read:
            # Nothing asks for a file never read (the poll follows desires): the container is
            # looked at again on Docker's backoff, and that look asks for the file again.
            del states[read.container_id]
            unread.append((read.container_id, DockerUnavailable(f"env file {printable(read.path)}: {read.error}")))
            continue
        new_state, values_changed, warnings = fold(state, read)
        states[read.container_id] = new_state
        name = new_state.container_name or read.container_id[:12]
        for warning in warnings:
            logger.bind(container=name).warning("container {}: {}", name, warning)
        if values_changed:
            changed.add(read.container_id)
    return changed, unread
