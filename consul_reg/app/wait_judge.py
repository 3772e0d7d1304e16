"""What `consul-reg wait` waits for and how an answer is judged: each service expected
(`Expected`, an instance counting only when its ownership marker names the container
and the daemon), the last answer about a service name (`View`), and `unmet`: every
service or check not yet as asked, one escaped line each."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from consul_reg.consul.health import CheckHealth, InstanceHealth
from consul_reg.core.records import MARKER_HOST_KEY, MARKER_INSTANCE_KEY, Owner, RegisteredService, fold_id
from consul_reg.core.text import printable

MAX_OUTPUT_SHOWN = 500  # characters of a check's output in a time-out report


@dataclass(frozen=True)
class Expected:
    """One service the daemon would register (or holds) for a container named on the command
    line; an instance counts only when marked as `container_id`'s by `owner` (None: by any
    consul-reg, as `--gone` waits on every record of the container)."""

    service_id: str
    name: str
    container: str
    check_ids: tuple[str, ...] = ()
    container_id: str = ""
    owner: Owner | None = None

    def counts(self, instance: InstanceHealth) -> bool:
        record = instance.record
        if fold_id(record.id) != fold_id(self.service_id) or not self.container_id \
                or record.container_id != self.container_id:
            return False
        return record.from_consul_reg if self.owner is None else record.owned_by(self.owner)


@dataclass(frozen=True)
class View:
    """The last answer about one service name: its instances on this agent's node, or why
    it could not be read (`denied`: the agent refused the token, 403)."""

    instances: tuple[InstanceHealth, ...] = ()
    error: str = ""
    denied: bool = False


def unmet(mode: str, expected: Sequence[Expected], views: Mapping[str, View],
          fresh: Mapping[str, CheckHealth] | None = None) -> list[str]:
    """Every service or check not yet as `mode` asks, one line each (escaped); [] when done.
    `fresh`: the agent's own view of checks, whose outputs are newer than the catalog's."""
    lines: list[str] = []
    for want in expected:
        shown = label(want)
        view = views.get(want.name)
        if view is None:
            lines.append(f"{shown}: no answer from the agent yet")
            continue
        if view.error:
            lines.append(f"{shown}: {printable(view.error, MAX_OUTPUT_SHOWN, one_line=True)}")
            continue
        instance = next((i for i in view.instances if want.counts(i)), None)
        if mode == "gone":
            if instance is not None:
                lines.append(f"{shown}: still registered")
            continue
        if instance is None:
            other = next((i for i in view.instances if fold_id(i.service_id) == fold_id(want.service_id)), None)
            lines.append(f"{shown}: " + (f"not registered (the ID is held by {_holder(other.record)})"
                                         if other is not None else "not registered"))
        elif mode == "passing":
            lines.extend(f"{shown}: {problem}" for problem in _check_problems(want, instance, fresh or {}))
    return lines


def label(want: Expected) -> str:
    return f"service {printable(want.service_id)} ({printable(want.name)}) of container {printable(want.container)}"


def _holder(record: RegisteredService) -> str:
    if not record.from_consul_reg:
        return "a record consul-reg did not mark"
    instance = record.meta.get(MARKER_INSTANCE_KEY, "")
    daemon = f"the daemon of host {printable(record.meta.get(MARKER_HOST_KEY, ''), 100)}" + \
        (f" --instance {printable(instance, 100)}" if instance else "")
    return f"container {printable(record.container_id[:12]) or '(none)'}, by {daemon}"


def _check_problems(want: Expected, instance: InstanceHealth, fresh: Mapping[str, CheckHealth]) -> list[str]:
    present = {fold_id(check.check_id) for check in instance.checks}
    problems = [f"check {printable(check_id)} not registered" for check_id in want.check_ids
                if fold_id(check_id) not in present]
    for check in instance.checks:
        if check.status == "passing":
            continue
        kind = "check" if check.service_id else "node check"
        name = f" ({printable(check.name, 100)})" if check.name else ""
        newer = fresh.get(check.check_id)
        text = newer.output if newer is not None and newer.status == check.status and newer.output else check.output
        output = printable(text, MAX_OUTPUT_SHOWN, one_line=True) or "(no output)"
        problems.append(f"{kind} {printable(check.check_id)}{name} is {printable(check.status, 20)}: {output}")
    return problems
