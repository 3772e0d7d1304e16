"""Command line: registrator's flags (single dash, as registrator spells them,
or with two dashes) and a few of consul-reg's own. Misuse exits 2 with a
one-line reason."""

from __future__ import annotations

import argparse
import re
import socket
import sys
import urllib.parse
from collections.abc import Sequence
from typing import NoReturn

from consul_reg import version as package_version
from consul_reg.app.config import Config, TokenError, read_token
from consul_reg.app.uris import RegistryURIError, default_uri, validate_uri
from consul_reg.mapping.check_targets import AllowRule, parse_allow_rule
from consul_reg.mapping.env_file import path_problem
from consul_reg.mapping.labels import split_tags
from consul_reg.mapping.selection import LabelFilter, parse_filter
from consul_reg.mapping.tags_template import Template, TemplateError
from consul_reg.mapping.validate import (
    DEFAULT_CHECK_METHODS,
    Limits,
    address_problem,
    hostname_problem,
    instance_problem,
    parse_ip,
)

USAGE_EXIT = 2


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


class _Version(argparse.Action):
    """--version: the package's version from its metadata, read only when asked."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: object, values: object,
                 option_string: str | None = None) -> None:
        print(f"consul-reg {package_version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="consul-reg",
        description="Registers Docker containers' services in the local Consul agent.",
        allow_abbrev=False,
        usage="consul-reg [options] [registry-uri]",
        epilog="commands: `consul-reg explain [options] [registry-uri] CONTAINER` shows what would be "
               "registered and why; `consul-reg wait [--passing | --registered | --gone] [--timeout DURATION] "
               "[options] CONTAINER... [registry-uri]` waits until those services are passing (see "
               "`consul-reg wait --help`)",
    )
    add = parser.add_argument
    add("-ip", "--ip", dest="host_ip", metavar="IP", help="address to register services with")
    add("-ip6", "--ip6", dest="host_ip6", metavar="IPV6",
        help="this host's IPv6 address: ports published on IPv6 also get it as tagged addresses lan_ipv6/wan_ipv6")
    add("-internal", "--internal", action="store_true", help="register the container IP and exposed ports")
    add("-explicit", "--explicit", action="store_true", help="only register containers that set SERVICE_NAME")
    add("-useIpFromLabel", "--useIpFromLabel", dest="use_ip_from_label", metavar="LABEL",
        help="take the service address from this container label")
    add("-tags", "--tags", default="", metavar="a,b", help="tags added to every service")
    add("-ttl", "--ttl", type=int, default=0, metavar="N", help="TTL for mirrors' keys, in seconds")
    add("-ttl-refresh", "--ttl-refresh", dest="ttl_refresh", type=int, default=0, metavar="N",
        help="how often mirrors' TTLs are refreshed, in seconds")
    add("-resync", "--resync", type=float, default=30.0, metavar="N",
        help="seconds between full reconciles (0: off); default 30")
    add("-deregister", "--deregister", default="always", metavar="always|on-success",
        help="when a container dies: deregister always, or only when it succeeded")
    add("-retry-attempts", "--retry-attempts", dest="retry_attempts", type=int, default=-1, metavar="N",
        help="tries to reach Docker and the registry at start (-1: forever)")
    add("-retry-interval", "--retry-interval", dest="retry_interval", type=int, default=2000, metavar="MS",
        help="first wait between tries, in milliseconds (doubles, capped at 30 s)")
    add("-cleanup", "--cleanup", action="store_true",
        help="adopt or remove registrator's leftover services of this host")
    add("-deregister-on-exit", "--deregister-on-exit", dest="deregister_on_exit", action="store_true",
        help="remove this daemon's services when it exits on SIGTERM/SIGINT")
    add("--no-script-checks", dest="no_script_checks", action="store_true",
        help="refuse containers' SERVICE_CHECK_SCRIPT (it runs on the host as the agent's user)")
    add("--exec-checks", dest="exec_checks", default="agent", choices=["agent", "daemon"],
        help="who runs SERVICE_CHECK_DOCKER commands: the agent (docker check) or this daemon (docker exec)")
    add("--drain-timeout", dest="drain_timeout", type=float, default=30.0, metavar="SECONDS",
        help="how long a container stopped by a signal stays in maintenance waiting for its death")
    add("--no-check-restart", dest="no_check_restart", action="store_true",
        help="never restart a container whose checks stay critical (SERVICE_CHECK_RESTART_LIMIT is ignored)")
    add("--check-restart-backoff", dest="check_restart_backoff", type=float, default=10.0, metavar="SECONDS",
        help="least time between two check restarts of one container; doubles per restart (default 10)")
    add("--check-restart-backoff-max", dest="check_restart_backoff_max", type=float, default=300.0,
        metavar="SECONDS", help="the longest that time grows to (default 300)")
    add("-envFile", "--envFile", "--env-file", dest="env_file", default=None, metavar="PATH",
        help="file inside each container with SERVICE_*=value lines, read after start and on changes")
    add("--env-file-interval", dest="env_file_interval", type=float, default=10.0, metavar="SECONDS",
        help="how often env files are polled for changes (default 10)")
    add("--status-addr", dest="status_addr", default=None, metavar="HOST:PORT",
        help="serve /health, /metrics and /services there (off by default)")
    add("--hostname", default=None, help="host name used in service IDs (default: this machine's)")
    add("--filter", dest="filters", action="append", default=[], metavar="label=KEY[=VALUE]",
        help="register only containers with this label (and value); repeatable, all must match")
    add("--instance", default="", metavar="NAME",
        help="this daemon's name in the ownership marker, for several daemons of one host on one agent")
    add("--no-container-env-file", dest="no_container_env_file", action="store_true",
        help="refuse containers' own SERVICE_ENV_FILE (only -envFile applies)")
    add("--allow-check-target", dest="allow_check_targets", action="append", default=[], metavar="CIDR[:PORTS]",
        help="let health checks probe this network (or IP, or host name), optionally only these ports "
             "(80,443,9000-9100); repeatable. By default a check may only probe its own container")
    add("--allow-check-method", dest="allow_check_methods", action="append", default=[], metavar="METHOD",
        help=f"let HTTP checks use this method too (default: {', '.join(DEFAULT_CHECK_METHODS)}); repeatable")
    add("--allow-check-redirects", dest="allow_check_redirects", action="store_true",
        help="on Consul before 1.12 (whose HTTP checks follow redirects, keeping method and body), still "
             "register HTTP checks that send a body or a method other than GET and HEAD: a container's server "
             "could then redirect them to any address the agent reaches")
    defaults = Limits()
    add("--max-services-per-container", dest="max_services", type=int, default=defaults.services_per_container,
        metavar="N", help=f"services one container may register (default {defaults.services_per_container})")
    add("--max-tags-per-service", dest="max_tags", type=int, default=defaults.tags_per_service, metavar="N",
        help=f"tags a container may give one service (default {defaults.tags_per_service})")
    add("--max-tag-length", dest="max_tag_length", type=int, default=defaults.tag_length, metavar="N",
        help=f"characters in one tag (default {defaults.tag_length})")
    add("--max-value-length", dest="max_value_length", type=int, default=defaults.value_length, metavar="N",
        help=f"characters in one SERVICE_* label, env or env-file value (default {defaults.value_length})")
    add("--log-level", default="INFO", type=str.upper,
        choices=["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"])
    add("--log-format", default="text", choices=["text", "json"])
    add("-version", "--version", action=_Version, nargs=0, help="print the version and exit")
    add("uris", nargs="*", metavar="registry-uri", help="default consul://127.0.0.1:8500 or CONSUL_HTTP_ADDR")
    return parser


def parse_config(argv: Sequence[str], environ: dict[str, str] | None = None) -> Config:
    """argv (without the program name) -> Config; raises UsageError."""
    parser = build_parser()
    _refuse_options_after_uri(parser, argv)
    args = parser.parse_args(list(argv))

    if bool(args.ttl) != bool(args.ttl_refresh):
        raise UsageError("-ttl and -ttl-refresh must be set together")
    if args.ttl and args.ttl <= args.ttl_refresh:
        raise UsageError(f"-ttl ({args.ttl}) must be greater than -ttl-refresh ({args.ttl_refresh})")
    if args.ttl < 0 or args.ttl_refresh < 0:
        raise UsageError("-ttl and -ttl-refresh must not be negative")
    if args.retry_interval <= 0:
        raise UsageError(f"-retry-interval must be greater than 0 (got {args.retry_interval})")
    if args.retry_attempts < -1:
        raise UsageError(f"-retry-attempts must be -1 (forever) or at least 0 (got {args.retry_attempts})")
    if args.deregister not in ("always", "on-success"):
        raise UsageError(f"-deregister must be 'always' or 'on-success' (got {args.deregister!r})")
    if args.status_addr and not re.fullmatch(r"(\[[0-9a-fA-F:]+\]|[^:\s]+):[0-9]{1,5}", args.status_addr):
        raise UsageError(f"--status-addr must be HOST:PORT, e.g. 127.0.0.1:9707 (got {args.status_addr!r})")
    if args.env_file_interval <= 0:
        raise UsageError(f"--env-file-interval must be greater than 0 (got {args.env_file_interval:g})")
    if args.drain_timeout < 0:
        raise UsageError(f"--drain-timeout must not be negative (got {args.drain_timeout:g})")
    if not 0 < args.check_restart_backoff <= args.check_restart_backoff_max <= 86400:
        raise UsageError("--check-restart-backoff must be above 0 and at most --check-restart-backoff-max, "
                         f"itself at most 86400 (got {args.check_restart_backoff:g} and "
                         f"{args.check_restart_backoff_max:g})")
    if "{{" in args.tags:
        try:
            Template(args.tags)
        except TemplateError as error:
            raise UsageError(f"-tags template: {error}") from None
    if args.resync < 0:
        raise UsageError(f"-resync must not be negative (got {args.resync:g})")
    hostname = args.hostname or socket.gethostname()
    problem = hostname_problem(hostname)
    if problem:
        raise UsageError(f"--hostname {hostname!r}: {problem}" + ("" if args.hostname else
                                                                  " (this machine's name; pass --hostname)"))
    if args.host_ip and address_problem(args.host_ip):
        raise UsageError(f"-ip {args.host_ip!r}: {address_problem(args.host_ip)}")
    if args.host_ip6 is not None:
        address = parse_ip(args.host_ip6)
        if address is None or address.version != 6:
            raise UsageError(f"-ip6 {args.host_ip6!r}: not an IPv6 address")
    if args.instance and instance_problem(args.instance):
        raise UsageError(f"--instance {args.instance!r}: {instance_problem(args.instance)}")
    filters: list[LabelFilter] = []
    for text in args.filters:
        try:
            filters.append(parse_filter(text))
        except ValueError as error:
            raise UsageError(f"--filter {error}") from None
    if args.env_file and path_problem(args.env_file):
        raise UsageError(f"-envFile {args.env_file!r}: {path_problem(args.env_file)}")
    limits = _limits(args)
    rules: list[AllowRule] = []
    for text in args.allow_check_targets:
        try:
            rules.append(parse_allow_rule(text))
        except ValueError as error:
            raise UsageError(f"--allow-check-target {error}") from None
    methods = []
    for method in args.allow_check_methods:
        if not re.fullmatch(r"[A-Za-z]{1,16}", method):
            raise UsageError(f"--allow-check-method {method!r}: not an HTTP method")
        methods.append(method.upper())

    uris = tuple(args.uris) or (default_uri(environ),)
    if sum(urllib.parse.urlsplit(u).scheme.startswith("consul") and not urllib.parse.urlsplit(u).scheme
           .startswith("consulkv") for u in uris[1:]):
        raise UsageError("a Consul agent URI can only come first (it is the primary); the others are mirrors")
    for uri in uris:
        try:
            validate_uri(uri)
        except RegistryURIError as error:
            raise UsageError(str(error)) from None
    try:
        token, token_file = read_token(environ)
    except TokenError as error:
        raise UsageError(str(error)) from None

    return Config(
        hostname=hostname,
        registry_uris=uris,
        host_ip=args.host_ip or None,
        internal=args.internal,
        explicit=args.explicit,
        use_ip_from_label=args.use_ip_from_label or None,
        force_tags=() if "{{" in args.tags else tuple(split_tags(args.tags)),
        tags_template=args.tags if "{{" in args.tags else "",
        ttl=args.ttl,
        ttl_refresh=args.ttl_refresh,
        resync_seconds=args.resync,
        deregister=args.deregister,
        retry_attempts=args.retry_attempts,
        retry_interval_ms=args.retry_interval,
        cleanup=args.cleanup,
        deregister_on_exit=args.deregister_on_exit,
        no_script_checks=args.no_script_checks,
        drain_timeout=args.drain_timeout,
        check_restart=not args.no_check_restart,
        check_restart_backoff=args.check_restart_backoff,
        check_restart_backoff_max=args.check_restart_backoff_max,
        status_addr=args.status_addr,
        env_file=args.env_file,
        env_file_interval=args.env_file_interval,
        exec_checks=args.exec_checks,
        log_level=args.log_level,
        log_format=args.log_format,
        token=token,
        token_file=token_file,
        limits=limits,
        allow_check_targets=tuple(rules),
        allow_check_methods=tuple(methods),
        allow_check_redirects=args.allow_check_redirects,
        no_container_env_file=args.no_container_env_file,
        host_ip6=str(parse_ip(args.host_ip6)) if args.host_ip6 else None,
        instance=args.instance,
        filters=tuple(filters),
    )


def _limits(args: argparse.Namespace) -> Limits:
    for flag, value, lowest in (("--max-services-per-container", args.max_services, 1),
                                ("--max-tags-per-service", args.max_tags, 0),
                                ("--max-tag-length", args.max_tag_length, 1),
                                ("--max-value-length", args.max_value_length, 1)):
        if value < lowest:
            raise UsageError(f"{flag} must be at least {lowest} (got {value})")
    return Limits(services_per_container=args.max_services, tags_per_service=args.max_tags,
                  tag_length=args.max_tag_length, value_length=args.max_value_length,
                  tags_value_length=min(Limits().tags_value_length, args.max_value_length))


def _refuse_options_after_uri(parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """registrator (Go's flag package) stops at the first argument: options after the URI are an error."""
    takes_value = {
        option for action in parser._actions if action.nargs != 0 and action.option_strings
        for option in action.option_strings
    }
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg == "--":
            return
        if arg.startswith("-") and len(arg) > 1:
            index += 2 if (arg in takes_value and "=" not in arg) else 1
            continue
        later = [a for a in argv[index + 1:] if a.startswith("-") and len(a) > 1]
        if later:
            raise UsageError(f"option {later[0]} comes after the registry URI {arg}; options go first")
        return


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["explain"]:
        return _explain(argv[1:])
    if argv[:1] == ["wait"]:
        from consul_reg.app.wait import main as wait_main

        return wait_main(argv[1:])
    try:
        config = parse_config(argv)
    except UsageError as error:
        print(f"consul-reg: {error}", file=sys.stderr)
        return USAGE_EXIT
    from consul_reg.app.daemon import run  # imported late: --help stays fast

    return run(config)


def _explain(argv: list[str]) -> int:
    """consul-reg explain [the daemon's flags] [registry-uri...] CONTAINER"""
    positional = [a for a in argv if not a.startswith("-")]
    if not positional or argv[-1].startswith("-"):
        print("consul-reg: explain needs a container name or ID, last: "
              "consul-reg explain [options] [registry-uri] CONTAINER", file=sys.stderr)
        return USAGE_EXIT
    try:
        config = parse_config(argv[:-1])
    except UsageError as error:
        print(f"consul-reg: {error}", file=sys.stderr)
        return USAGE_EXIT
    from consul_reg.app import logs
    from consul_reg.app.explain import explain

    logs.setup("ERROR", "text", secrets=(config.token or "",))
    return explain(config, argv[-1])
