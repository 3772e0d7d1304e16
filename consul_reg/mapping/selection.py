"""`--filter label=KEY` and `--filter label=KEY=VALUE`: which containers this
daemon registers. Docker's own spelling and meaning (every filter must match;
`KEY=VALUE` splits at the first `=`), handed to Docker's listing and event
stream, and checked again on each inspected container. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from consul_reg.core.records import section
from consul_reg.mapping.validate import has_control

MAX_FILTER_LENGTH = 1024


@dataclass(frozen=True)
class LabelFilter:
    key: str
    value: str | None = None  # None: the label only has to be set

    @property
    def docker_form(self) -> str:
        return self.key if self.value is None else f"{self.key}={self.value}"

    def matches(self, labels: Mapping[Any, Any]) -> bool:
        if self.key not in labels:
            return False
        return self.value is None or labels[self.key] == self.value


def parse_filter(text: str) -> LabelFilter:
    """`label=KEY` or `label=KEY=VALUE`; raises ValueError saying what is wrong."""
    kind, equals, rest = text.partition("=")
    if not equals or kind.strip() != "label":
        raise ValueError(f"{text!r}: only label filters are supported: label=KEY or label=KEY=VALUE")
    key, equals, value = rest.partition("=")
    if not key or key != key.strip() or len(text) > MAX_FILTER_LENGTH or has_control(text):
        raise ValueError(f"{text!r}: a label filter needs a label name without spaces or control characters")
    return LabelFilter(key=key, value=value if equals else None)


def docker_filters(filters: tuple[LabelFilter, ...]) -> dict[str, list[str]]:
    """The `filters` argument of Docker's container listing and event stream."""
    return {"label": [f.docker_form for f in filters]} if filters else {}


def selected(container: dict[str, Any], filters: tuple[LabelFilter, ...]) -> LabelFilter | None:
    """None when the container is selected, else the first filter it fails."""
    config = section(container, "Config")
    labels = section(config, "Labels")
    return next((f for f in filters if not f.matches(labels)), None)
