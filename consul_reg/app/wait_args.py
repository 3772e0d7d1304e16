"""`consul-reg wait`'s command line: its own options (--passing, --registered, --gone,
--timeout), then the daemon's flags as the daemon and `explain` take them, then the
containers, then at most one registry URI (else CONSUL_HTTP_ADDR); and its --help."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass

from consul_reg.app.cli import UsageError, build_parser, parse_config
from consul_reg.app.config import Config
from consul_reg.app.uris import CONSUL_SCHEMES
from consul_reg.mapping.check_fields import parse_duration

DEFAULT_TIMEOUT_SECONDS = 60.0

WAIT_USAGE = ("consul-reg wait [--passing | --registered | --gone] [--timeout DURATION] [options] "
              "CONTAINER... [registry-uri]")
_WAIT_MODES = {"passing", "registered", "gone"}
_CONTAINER_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}")


@dataclass(frozen=True)
class WaitArgs:
    mode: str
    timeout: float
    containers: tuple[str, ...]
    config: Config


def parse_wait(argv: Sequence[str], environ: dict[str, str] | None = None) -> WaitArgs:
    """`wait`'s own options, then the daemon's (as the daemon and `explain` take them),
    then the containers, then the registry URI; raises UsageError."""
    takes_value = {option for action in build_parser()._actions if action.nargs != 0 and action.option_strings
                   for option in action.option_strings}
    mode, timeout = "", DEFAULT_TIMEOUT_SECONDS
    options: list[str] = []
    index = 0
    while index < len(argv) and argv[index].startswith("-") and len(argv[index]) > 1:
        arg = argv[index]
        name, has_value, value = arg.lstrip("-").partition("=")
        if name in _WAIT_MODES and not has_value:
            if mode and mode != name:
                raise UsageError(f"--{mode} and --{name} exclude each other")
            mode = name
        elif name == "timeout":
            if not has_value:
                index += 1
                if index == len(argv):
                    raise UsageError("--timeout needs a duration, e.g. 30s or 2m")
                value = argv[index]
            timeout = _wait_timeout(value)
        else:
            options.append(arg)
            if arg in takes_value and not has_value and index + 1 < len(argv):
                index += 1
                options.append(argv[index])
        index += 1
    positional = list(argv[index:])
    later = [a for a in positional if a.startswith("-") and len(a) > 1]
    if later:
        raise UsageError(f"option {later[0]} comes after the containers; options go first: {WAIT_USAGE}")
    uris = [a for a in positional if "://" in a]
    containers = [a for a in positional if "://" not in a]
    if not containers:
        raise UsageError(f"wait needs at least one container name or ID: {WAIT_USAGE}")
    if uris and positional[-len(uris):] != uris:
        raise UsageError(f"the registry URI goes after the containers: {WAIT_USAGE}")
    for ref in containers:
        if not _CONTAINER_REF.fullmatch(ref):
            raise UsageError(f"{ref[:80]!r} is not a container name or ID")
    if len(uris) > 1:
        raise UsageError("wait reads one Consul agent: give at most one registry URI")
    config = parse_config(options + uris, environ)
    if urllib.parse.urlsplit(config.registry_uris[0]).scheme not in CONSUL_SCHEMES:
        raise UsageError(f"wait reads a Consul agent: {config.registry_uris[0]!r} is not a Consul agent URI")
    return WaitArgs(mode or "passing", timeout, tuple(dict.fromkeys(containers)), config)


def _wait_timeout(text: str) -> float:
    """A Go duration ("90s", "1m30s") or a number of seconds, above 0."""
    seconds = float(text) if re.fullmatch(r"[0-9]{1,9}(\.[0-9]{1,9})?", text) else parse_duration(text)
    if seconds is None or seconds <= 0:
        raise UsageError(f"--timeout {text[:80]!r}: not a duration above 0 (e.g. 30s, 2m, 90)")
    return seconds


WAIT_HELP = f"""usage: {WAIT_USAGE}

Waits until every service the daemon would register for the containers named is in
the Consul agent's catalog (its node) and all its checks pass; for deploy scripts:
start v2, `consul-reg wait v2`, then stop v1. Give the daemon's own flags
(--hostname, -ip, -internal, -tags, --instance, --filter...) and its agent (the
registry URI, else CONSUL_HTTP_ADDR) and token (CONSUL_HTTP_TOKEN,
CONSUL_HTTP_TOKEN_FILE): the services are computed as `consul-reg explain` computes
them, and an instance counts only when this daemon marked it as the container's.

options:
  --passing             until every service is registered and all its checks pass (default)
  --registered          until every service is registered, whatever its checks say
  --gone                until none of the containers' services is left, nor any record
                        some consul-reg marked as theirs (a removed container's are
                        found by its ID, or by its name among default IDs)
  --timeout DURATION    give up after DURATION (30s, 2m, 1m30s or seconds); default {DEFAULT_TIMEOUT_SECONDS:g}s
  -h, --help            show this help and exit

exit status: 0 done; 1 timed out (stderr names each service or check not as asked,
a failing check with its output), also when the agent never answered; 2 usage error,
TLS files that cannot be loaded, or a token the agent refuses (403); 3 nothing to
wait for (a container that does not exist or is not running, or stops, goes or is
replaced while waited on; one that would register nothing) or Docker unreachable."""
