"""Registry URIs -> registry objects. The first URI is the primary (a Consul
agent); the others are mirrors. Without a Consul URI, every URI is a mirror
and the primary is an in-memory ledger."""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from consul_reg.consul.agent import ConsulClient, ConsulEndpoint, ConsulRegistry

if TYPE_CHECKING:  # the CLI reads URIs before anything is built: the clients' modules load when used
    from consul_reg.app.config import Config
    from consul_reg.consul.memory import MemoryRegistry
    from consul_reg.core.protocols import AgentAPI, MirrorRegistry
    from consul_reg.mirrors.consulkv import ConsulKVRegistry

CONSUL_SCHEMES = ("consul", "consul-unix", "consul-tls")
KV_SCHEMES = ("consulkv", "consulkv-unix")
MIRROR_SCHEMES = ("consulkv", "consulkv-unix", "etcd", "skydns2", "zookeeper")
SCHEMES = CONSUL_SCHEMES + MIRROR_SCHEMES
DEFAULT_PORTS = {"consulkv": 8500, "etcd": 2379, "skydns2": 2379, "zookeeper": 2181}


class TokenUser(Protocol):
    def set_token(self, token: str | None) -> None: ...


class RegistryURIError(ValueError):
    """A registry URI that cannot be used; the message names what is wrong."""


def default_uri(environ: dict[str, str] | None = None) -> str:
    """consul://127.0.0.1:8500, or CONSUL_HTTP_ADDR as the consul CLI reads it."""
    environ = dict(os.environ) if environ is None else environ
    address = environ.get("CONSUL_HTTP_ADDR", "").strip()
    if not address:
        return "consul://127.0.0.1:8500"
    if address.startswith("unix://"):
        return "consul-unix://" + address[len("unix://"):]
    if address.startswith("https://"):
        return "consul-tls://" + address[len("https://"):]
    if address.startswith("http://"):
        address = address[len("http://"):]
    if environ.get("CONSUL_HTTP_SSL", "").lower() == "true":
        return "consul-tls://" + address
    return "consul://" + address


def consul_endpoint(uri: str, environ: dict[str, str] | None = None) -> ConsulEndpoint:
    environ = dict(os.environ) if environ is None else environ
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme in MIRROR_SCHEMES:
        raise RegistryURIError(f"{uri!r} is not a Consul agent URI")
    if parsed.scheme not in CONSUL_SCHEMES:
        raise RegistryURIError(f"unknown registry URI scheme {parsed.scheme!r} in {uri!r} "
                               f"(known: {', '.join(SCHEMES)})")
    if parsed.scheme == "consul-unix":
        path = (parsed.netloc + parsed.path) if parsed.netloc else parsed.path
        if not path:
            raise RegistryURIError(f"{uri!r}: consul-unix:// needs a socket path, e.g. consul-unix:///run/consul.sock")
        return ConsulEndpoint(scheme="http", socket_path=path)
    try:
        host = parsed.hostname or "127.0.0.1"
        port = parsed.port or 8500
    except ValueError as error:
        raise RegistryURIError(f"{uri!r}: {error}") from None
    if parsed.scheme == "consul-tls":
        return ConsulEndpoint(
            scheme="https", host=host, port=port,
            ca_file=environ.get("CONSUL_CACERT") or None,
            client_cert=environ.get("CONSUL_CLIENT_CERT") or None,
            client_key=environ.get("CONSUL_CLIENT_KEY") or None,
        )
    return ConsulEndpoint(scheme="http", host=host, port=port)


def mirror_parts(uri: str) -> tuple[str, str, int, str, str]:
    """(scheme, host, port, socket path, path) of a mirror URI; the path is required."""
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme not in MIRROR_SCHEMES:
        raise RegistryURIError(f"unknown registry URI scheme {parsed.scheme!r} in {uri!r} "
                               f"(known: {', '.join(SCHEMES)})")
    what = "domain" if parsed.scheme == "skydns2" else "prefix"
    if parsed.scheme == "consulkv-unix":
        socket_path, _, path = (parsed.netloc + parsed.path).partition(":")
        if not socket_path or not path.strip("/"):
            raise RegistryURIError(f"{uri!r}: consulkv-unix needs a socket and a prefix, "
                                   "e.g. consulkv-unix:///run/consul.sock:/services")
        return parsed.scheme, "", 0, socket_path, path.strip("/")
    try:
        host = parsed.hostname or "127.0.0.1"
        port = parsed.port or DEFAULT_PORTS[parsed.scheme]
    except ValueError as error:
        raise RegistryURIError(f"{uri!r}: {error}") from None
    if not parsed.path.strip("/"):
        raise RegistryURIError(f"{uri!r}: {parsed.scheme}:// needs a {what}, "
                               f"e.g. {parsed.scheme}://{host}:{port}/"
                               f"{'example.com' if what == 'domain' else 'services'}")
    return parsed.scheme, host, port, "", parsed.path.strip("/")


def validate_uri(uri: str) -> None:
    """Raise RegistryURIError unless `uri` names a registry consul-reg can write."""
    if urllib.parse.urlsplit(uri).scheme in MIRROR_SCHEMES:
        mirror_parts(uri)
    else:
        consul_endpoint(uri, {})


def from_uri(uri: str, token: str | None, environ: dict[str, str] | None = None,
             on_unreachable: Callable[[str], None] = lambda reason: None) -> ConsulRegistry:
    return ConsulRegistry(ConsulClient(consul_endpoint(uri, environ), token=token, on_unreachable=on_unreachable))


def kv_endpoint(uri: str, primary_uri: str, environ: dict[str, str] | None = None) -> ConsulEndpoint:
    """A consulkv mirror speaks the primary's scheme: TLS (with the same CA and
    client certificate) when the primary is consul-tls://."""
    environ = dict(os.environ) if environ is None else environ
    scheme, host, port, socket_path, _ = mirror_parts(uri)
    if socket_path:
        return ConsulEndpoint(scheme="http", socket_path=socket_path)
    if urllib.parse.urlsplit(primary_uri).scheme == "consul-tls":
        return ConsulEndpoint(scheme="https", host=host, port=port, ca_file=environ.get("CONSUL_CACERT") or None,
                              client_cert=environ.get("CONSUL_CLIENT_CERT") or None,
                              client_key=environ.get("CONSUL_CLIENT_KEY") or None)
    return ConsulEndpoint(scheme="http", host=host, port=port)


def token_transport_problem(uris: tuple[str, ...], token: str | None) -> str:
    """Why the ACL token would travel in clear text to another machine, or ""."""
    if not token:
        return ""
    for uri in uris:
        if urllib.parse.urlsplit(uri).scheme != "consulkv":
            continue
        endpoint = kv_endpoint(uri, uris[0], {})
        if endpoint.scheme == "http" and not endpoint.is_local:
            return (f"{uri}: the ACL token would be sent in clear text to {endpoint.host}; use consul-tls:// for "
                    "the primary (the KV mirror then speaks TLS too) or a Consul KV address on this host")
    return ""


def mirror_from_uri(uri: str, config: Config) -> MirrorRegistry:
    """A mirror registry, found by its URI's scheme (each backend one module of mirrors/,
    imported only when used: kazoo only for zookeeper://)."""
    scheme, host, port, socket_path, path = mirror_parts(uri)
    if scheme in KV_SCHEMES:
        return consul_kv_mirror(uri, config)
    from consul_reg.mirrors.etcd import DEFAULT_LEASE_TTL

    lease_ttl = config.ttl or DEFAULT_LEASE_TTL
    if scheme == "etcd":
        from consul_reg.mirrors.etcd import EtcdRegistry

        return EtcdRegistry(host, port, path, config.owner, lease_ttl, config.ttl_refresh)
    if scheme == "skydns2":
        from consul_reg.mirrors.skydns2 import SkyDNS2Registry

        return SkyDNS2Registry(host, port, path, config.owner, lease_ttl, config.ttl, config.ttl_refresh)
    from consul_reg.mirrors.zookeeper import ZooKeeperRegistry  # kazoo is imported only when used

    return ZooKeeperRegistry(host, port, path, config.owner)


def consul_kv_mirror(uri: str, config: Config) -> ConsulKVRegistry:
    from consul_reg.mirrors.consulkv import ConsulKVRegistry

    client = ConsulClient(kv_endpoint(uri, config.registry_uris[0]), token=config.token)
    return ConsulKVRegistry(client, mirror_parts(uri)[4], config.owner)


@dataclass(frozen=True)
class Registries:
    """What the daemon's URIs name, built once at start."""

    primary: ConsulRegistry | MemoryRegistry  # the first URI's agent, or the in-memory stand-in
    agent: AgentAPI  # the primary as the loop writes to it: the agent behind its ownership guard
    is_agent: bool  # a real agent: watched for outages and restarts
    mirrors: tuple[MirrorRegistry, ...]
    token_users: tuple[TokenUser, ...]  # every client that sends the ACL token (re-read on SIGHUP)


def registries_from_uris(config: Config, on_unreachable: Callable[[str], None] = lambda reason: None
                         ) -> Registries:
    """The primary and the mirrors for the daemon's URIs. `on_unreachable` is told of
    every call that could not reach the primary agent."""
    from consul_reg.consul.guard import OwnershipGuard
    from consul_reg.consul.memory import MemoryRegistry

    first, *rest = config.registry_uris
    is_agent = urllib.parse.urlsplit(first).scheme in CONSUL_SCHEMES
    primary: ConsulRegistry | MemoryRegistry
    agent: AgentAPI
    if is_agent:
        primary = from_uri(first, token=config.token, on_unreachable=on_unreachable)
        agent = OwnershipGuard(primary, config.owner, config.cleanup)
    else:
        primary = agent = MemoryRegistry()
        rest = list(config.registry_uris)
    token_users: list[TokenUser] = [primary] if is_agent else []
    mirrors: list[MirrorRegistry] = []
    for uri in rest:
        if mirror_parts(uri)[0] in KV_SCHEMES:  # a Consul client: it sends the token too
            kv = consul_kv_mirror(uri, config)
            mirrors.append(kv)
            token_users.append(kv)
        else:
            mirrors.append(mirror_from_uri(uri, config))
    return Registries(primary, agent, is_agent, tuple(mirrors), tuple(token_users))
