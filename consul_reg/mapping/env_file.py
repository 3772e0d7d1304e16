"""The env file: `SERVICE_*=value` lines an application writes inside its
container, whenever it likes, to change its own registration after start
(tags, meta, checks, even name or ID). The highest-priority source, key by
key. Pure parsing here; the daemon reads the file through Docker's archive
API (no exec: it works in distroless images)."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Any

from consul_reg.core.records import section
from consul_reg.mapping.labels import show
from consul_reg.mapping.validate import has_control

MAX_BYTES = 64 * 1024
MAX_PATH_LENGTH = 1024
# Bad lines reported per content of a file; the rest are counted. A line is named by its
# number and what is wrong, never by its text: the file may hold secrets besides SERVICE_*
# (dockerd reads it as root, from any path the container names).
MAX_PROBLEMS_SHOWN = 3


@dataclass(frozen=True)
class EnvFilePath:
    """Which env file applies to one container ("" for none), and why a
    container's own SERVICE_ENV_FILE was not used (to be logged once)."""

    path: str
    problem: str = ""


def _is_env_file_key(key: str) -> bool:
    """As labels.collect reads keys: `SERVICE_` as written, the rest in any case."""
    return key.startswith("SERVICE_") and key[len("SERVICE_"):].lower() == "env_file"


def path_problem(path: str) -> str | None:
    """None when `path` may name an env file inside a container, else why not."""
    if not path.startswith("/"):
        return "an env file path must be absolute"
    if len(path) > MAX_PATH_LENGTH:
        return f"an env file path may hold at most {MAX_PATH_LENGTH} characters"
    if has_control(path):
        return "an env file path may not hold NUL or control characters"
    if any(unicodedata.category(char) == "Cf" for char in path):
        return "an env file path may not hold invisible format characters (bidi controls, zero-width ones)"
    return None


def env_file_path(container: dict[str, Any], flag_path: str | None, allow_container_path: bool = True
                  ) -> EnvFilePath:
    """The container's SERVICE_ENV_FILE (label, else env; keys case-insensitive
    after SERVICE_) wins over -envFile unless the operator refuses per-container
    paths (--no-container-env-file) or the path is not a valid one."""
    config = section(container, "Config")
    labels = section(config, "Labels")
    declared: tuple[str, str] | None = None
    for key, value in labels.items():
        if isinstance(key, str) and isinstance(value, str) and _is_env_file_key(key) and value.strip():
            declared = (f"key {show(key)}={show(value.strip())} (label)", value.strip())
    if declared is None:
        for entry in config.get("Env") or ():
            if isinstance(entry, str) and "=" in entry:
                key, _, value = entry.partition("=")
                if _is_env_file_key(key) and value.strip():
                    declared = (f"key {show(key)}={show(value.strip())} (env)", value.strip())
    fallback = flag_path or ""
    if declared is None:
        return EnvFilePath(fallback)
    where, path = declared
    instead = f"using -envFile {fallback}" if fallback else "no env file for this container"
    if not allow_container_path:
        return EnvFilePath(fallback, f"{where}: per-container env files are refused here "
                                     f"(--no-container-env-file); {instead}")
    problem = path_problem(path)
    if problem:
        return EnvFilePath(fallback, f"{where}: {problem}; {instead}")
    return EnvFilePath(path)


@dataclass(frozen=True)
class EnvFile:
    pairs: tuple[tuple[str, str], ...]
    problems: tuple[str, ...]  # lines that could not be used (at most MAX_PROBLEMS_SHOWN, then a count)


def parse(text: str) -> EnvFile:
    """`KEY=value` per line; blank lines and `#` comments skipped; an optional
    `export ` prefix and one pair of surrounding quotes are accepted."""
    pairs: list[tuple[str, str]] = []
    problems: list[str] = []
    unshown = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        key, separator, value = line.partition("=")
        key = key.strip()
        if not separator or not key or " " in key:
            why = "no '='" if not separator else "no key before '='" if not key else "a space in the key"
            if len(problems) < MAX_PROBLEMS_SHOWN:
                problems.append(f"line {number}: not KEY=value ({why})")
            else:
                unshown += 1
            continue
        if not key.startswith("SERVICE_"):
            continue  # the file may hold the application's other settings too
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        pairs.append((key, value))
    if unshown:
        problems.append(f"and {unshown} more line(s) not KEY=value")
    return EnvFile(tuple(pairs), tuple(problems))
