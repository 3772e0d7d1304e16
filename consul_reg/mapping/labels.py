"""SERVICE_* keys from a container's env and labels.

Precedence (lowest first): env, labels, then any higher source passed in
(the env file). Keys are case-insensitive after the `SERVICE_` prefix and
stored lower-cased; `SERVICE_<port>_<KEY>` is scoped to one exposed port.
Pure functions: no I/O, never raise on any input.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from consul_reg.core.text import printable, quoted  # noqa: F401  (printable: re-exported)
from consul_reg.mapping.validate import Limits

PREFIX = "SERVICE_"
_PORT_KEY = re.compile(r"^([0-9]{1,5})_(.+)$", re.DOTALL)
# A key that starts like a port key but whose "port" is not a number,
# e.g. SERVICE_HTTP_NAME: registrator made it Meta "http_name", and so do
# we, but it is more likely a mistyped port key, so it is worth a warning.
_LOOKS_LIKE_PORT_KEY = re.compile(r"^([^_]+)_(name|id|tags|ignore|ip|network|check_.+|heartbeat_.+|checks|weight|"
                                  r"weight_warning|connect|connect_upstreams|enable_tag_override|"
                                  r"tagged_address_.+)$", re.DOTALL)

# Keys that configure the daemon and never become Consul Meta.
DAEMON_KEYS = frozenset({"name", "id", "tags", "ignore", "network", "ip", "env_file", "port", "checks", "weight",
                         "weight_warning", "enable_tag_override", "connect", "connect_upstreams"})
DAEMON_KEY_PREFIXES = ("check_", "heartbeat_", "tagged_address_")
_TAG_SEPARATOR = re.compile(r"(?<!\\),")


def is_daemon_key(key: str) -> bool:
    return key in DAEMON_KEYS or key.startswith(DAEMON_KEY_PREFIXES)


@dataclass(frozen=True)
class KeyValue:
    value: str
    source: str  # "env", "label", "env file"
    original_key: str  # as written, e.g. "SERVICE_80_NAME"


@dataclass
class ServiceKeys:
    """The SERVICE_* keys of one container, general and per exposed port."""

    general: dict[str, KeyValue] = field(default_factory=dict)
    by_port: dict[str, dict[str, KeyValue]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def for_port(self, port: str) -> dict[str, KeyValue]:
        """General keys overlaid with the ones scoped to `port`."""
        merged = dict(self.general)
        merged.update(self.by_port.get(port, {}))
        return merged


def env_pairs(env: Iterable[object] | None) -> list[tuple[str, str]]:
    """Docker's Config.Env ("K=V" strings) as pairs; entries without '=' are skipped."""
    pairs: list[tuple[str, str]] = []
    for entry in env or ():
        if isinstance(entry, str) and "=" in entry:
            key, _, value = entry.partition("=")
            pairs.append((key, value))
    return pairs


def collect(
    env: Iterable[object] | None,
    labels: Mapping[Any, Any] | None,
    *higher_sources: tuple[str, Iterable[tuple[str, str]]],
    limits: Limits = Limits(),
) -> ServiceKeys:
    """Gather SERVICE_* keys; later sources win key by key. Keys and values
    over the size bounds, and keys past the count bound, are ignored (warned)."""
    keys = ServiceKeys()
    label_pairs = [(k, v) for k, v in (labels or {}).items() if isinstance(k, str) and isinstance(v, str)]
    sources: list[tuple[str, Iterable[tuple[str, str]]]] = [("env", env_pairs(env)), ("label", label_pairs)]
    sources.extend(higher_sources)
    for source, pairs in sources:
        taken = 0
        for original_key, value in pairs:
            if not isinstance(original_key, str) or not isinstance(value, str) or not original_key.startswith(PREFIX):
                continue
            if taken == limits.keys_per_container:
                keys.warnings.append(f"more than {limits.keys_per_container} SERVICE_* keys in the {source}: "
                                     f"the rest, from key {quoted(original_key)} on, are ignored")
                break
            taken += 1
            if len(original_key) > limits.key_length:
                keys.warnings.append(f"key {quoted(original_key)}: longer than {limits.key_length} characters, "
                                     "ignored")
            elif len(value) > limits.value_length:
                keys.warnings.append(f"key {quoted(original_key)}: its value of {len(value)} characters is over "
                                     f"the limit of {limits.value_length} (--max-value-length), ignored")
            else:
                _add(keys, original_key, value, source)
    return keys


def _add(keys: ServiceKeys, original_key: str, value: str, source: str) -> None:
    key = original_key[len(PREFIX):].lower()
    if not key:
        keys.warnings.append(f"key {quoted(original_key)}: no name after SERVICE_, ignored")
        return
    entry = KeyValue(value=value, source=source, original_key=original_key)
    port_match = _PORT_KEY.match(key)
    if port_match:
        port, rest = port_match.groups()
        if not 0 < int(port) < 65536:
            keys.warnings.append(f"key {quoted(original_key)}: {port} is not a valid port number, ignored")
            return
        keys.by_port.setdefault(str(int(port)), {})[rest] = entry
        return
    typo = _LOOKS_LIKE_PORT_KEY.match(key)
    if typo and not is_daemon_key(key) and typo.group(1) not in ("check", "heartbeat", "env"):
        keys.warnings.append(
            f"key {quoted(original_key)}: {quoted(typo.group(1))} is not a port number,"
            f" so this is not a port-scoped key; kept as Meta {quoted(key)}"
        )
    keys.general[key] = entry


def split_tags(raw: str) -> list[str]:
    """Comma-separated tags; `\\,` keeps a comma inside a tag. Trimmed, empties dropped. Linear time."""
    tags = (part.replace("\\,", ",").strip() for part in _TAG_SEPARATOR.split(raw))
    return [tag for tag in tags if tag]


def unique(items: Iterable[str]) -> list[str]:
    """Drop duplicates, keeping the first occurrence's position."""
    return list(dict.fromkeys(items))


def is_true_flag(value: str) -> bool:
    """SERVICE_IGNORE semantics: any non-empty value but false/0/no."""
    return value.strip() != "" and value.strip().lower() not in ("false", "0", "no")


show = quoted  # a key or value named in a warning
