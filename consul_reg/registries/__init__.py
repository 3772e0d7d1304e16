"""Registry URIs -> registry objects. Consul is the primary; others follow."""

from __future__ import annotations

import os
import urllib.parse

from consul_reg.registries.consul import ConsulEndpoint, ConsulRegistry

CONSUL_SCHEMES = ("consul", "consul-unix", "consul-tls")
SCHEMES = CONSUL_SCHEMES


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


def validate_uri(uri: str) -> None:
    """Raise RegistryURIError unless `uri` names a registry consul-reg can write."""
    consul_endpoint(uri, {})


def from_uri(uri: str, token: str | None, environ: dict[str, str] | None = None) -> ConsulRegistry:
    return ConsulRegistry(consul_endpoint(uri, environ), token=token)
