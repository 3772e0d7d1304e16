"""The env file: `SERVICE_*=value` lines an application writes inside its
container, whenever it likes, to change its own registration after start
(tags, meta, checks, even name or ID). The highest-priority source, key by
key. Pure parsing here; the daemon reads the file through Docker's archive
API (no exec: it works in distroless images)."""

from __future__ import annotations

from dataclasses import dataclass

MAX_BYTES = 64 * 1024


@dataclass(frozen=True)
class EnvFile:
    pairs: tuple[tuple[str, str], ...]
    problems: tuple[str, ...]  # lines that could not be used


def parse(text: str) -> EnvFile:
    """`KEY=value` per line; blank lines and `#` comments skipped; an optional
    `export ` prefix and one pair of surrounding quotes are accepted."""
    pairs: list[tuple[str, str]] = []
    problems: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        key, separator, value = line.partition("=")
        key = key.strip()
        if not separator or not key or " " in key:
            problems.append(f"line {number}: not KEY=value: {line[:80]!r}")
            continue
        if not key.startswith("SERVICE_"):
            continue  # the file may hold the application's other settings too
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        pairs.append((key, value))
    return EnvFile(tuple(pairs), tuple(problems))
