"""docker-py, for a DOCKER_HOST that is not plain HTTP (ssh://, npipe://).

docker-py is an optional extra (`pip install 'consul-reg[ssh]'`): without it
such a DOCKER_HOST is refused at the start with that advice (docker/client.py).
Every other endpoint is read over the daemon's own transport (h11), and this
module, with docker-py and requests behind it (~9 MB of memory), is then never
imported; it is the only module of the package that imports either. Its calls
answer as the transport's do: (HTTP status, decoded body), an error's body
being dockerd's {"message": ...}; docker_http.Unreachable when dockerd could
not be reached.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import docker.errors
import requests.exceptions

import docker
from consul_reg.docker import connection as docker_http


class DockerPy:
    def __init__(self, timeout: float, api_version: str) -> None:
        try:
            self.client = docker.from_env(timeout=timeout, version=api_version).api
        except (OSError, docker.errors.DockerException) as error:
            raise docker_http.Unreachable(docker_http.describe(error)) from None

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[int, Any]:
        """docker-py's APIClient.<name>(*args, **kwargs), as (status, body)."""
        try:
            return 200, getattr(self.client, name)(*args, **kwargs)
        except docker.errors.APIError as error:
            return error.status_code or 500, {"message": str(error.explanation or error)}
        except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as error:
            raise docker_http.Unreachable(docker_http.describe(error)) from None

    def events(self, since: str | None, filters: dict[str, list[str]]) -> Iterator[Any]:
        """The decoded event stream, subscribed when this returns (unbounded here: docker-py
        reads it whole per event)."""
        try:
            return iter(self.client.events(decode=True, since=since, filters=filters))
        except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as error:
            raise docker_http.Unreachable(docker_http.describe(error)) from None

    def close(self) -> None:
        self.client.close()
