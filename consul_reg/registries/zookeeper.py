"""ZooKeeper through kazoo: `<basepath>/<service-name>/<ip>:<public-port>` as
an ephemeral znode holding registrator's JSON (Name, IP, PublicPort,
PrivatePort, ContainerID, Tags, Attrs). Nodes of this daemon's session are
its own; after a session loss they are gone and the worker recreates them."""

from __future__ import annotations

import json
import threading

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import KazooException, NodeExistsError, NoNodeError
from kazoo.handlers.threading import KazooTimeoutError

from consul_reg.model import MARKER_DIGEST_KEY, MARKER_HOST_KEY, MARKER_SOURCE_KEY, MARKER_SOURCE_VALUE
from consul_reg.model import RegisteredService, Service
from consul_reg.registries.base import RegistryError, RegistryUnavailable


class ZooKeeperRegistry:
    def __init__(self, host: str, port: int, basepath: str, hostname: str) -> None:
        self.basepath = "/" + basepath.strip("/")
        self.hostname = hostname
        self.description = f"zookeeper {host}:{port}{self.basepath}"
        self._client = KazooClient(hosts=f"{host}:{port}", timeout=10.0, connection_retry={"max_tries": -1,
                                                                                          "max_delay": 5})
        self._client.add_listener(self._on_state)
        self.session_lost = threading.Event()
        self._started = False

    def _on_state(self, state: str) -> None:
        if state == KazooState.LOST:
            self.session_lost.set()  # our ephemeral nodes are gone: relist and recreate

    def _ensure_started(self) -> None:
        if not self._started or not self._client.connected:
            try:
                self._client.start(timeout=5)
            except (KazooTimeoutError, KazooException) as error:
                raise RegistryUnavailable(f"{self.description}: {type(error).__name__}: {error}") from None
            self._started = True

    def key_of(self, service: Service) -> str:
        return f"{self.basepath}/{service.name}/{service.address}:{service.port or 0}"

    def accepts(self, service: Service) -> str:
        return ""

    def data_of(self, service: Service) -> bytes:
        public, _, protocol = service.exposed_port.partition("/")
        record = {
            "Name": service.name,
            "IP": service.address,
            "PublicPort": service.port or 0,
            "PrivatePort": int(public) if public.isdigit() else 0,
            "ContainerID": service.container_id[:12],
            "Tags": list(service.tags),
            "Attrs": {k: v for k, v in service.meta if not k.startswith("consul_reg_") and k != "external-source"},
        }
        return json.dumps(record, sort_keys=True, separators=(",", ":")).encode()

    def digest_of(self, service: Service) -> str:
        return self.data_of(service).decode()

    def maintain(self) -> bool:
        if self.session_lost.is_set():
            self.session_lost.clear()
            return True
        return False

    def seconds_until_maintenance(self) -> float:
        return 1.0

    def services(self) -> dict[str, RegisteredService]:
        self._ensure_started()
        self.session_lost.clear()
        session = self._client.client_id[0] if self._client.client_id else None
        found = {}
        try:
            names = self._client.get_children(self.basepath) if self._client.exists(self.basepath) else []
            for name in names:
                for node in self._client.get_children(f"{self.basepath}/{name}"):
                    path = f"{self.basepath}/{name}/{node}"
                    try:
                        data, stat = self._client.get(path)
                    except NoNodeError:
                        continue
                    meta = {MARKER_DIGEST_KEY: data.decode("utf-8", "replace")}
                    if stat.ephemeralOwner == session:
                        meta.update({MARKER_SOURCE_KEY: MARKER_SOURCE_VALUE, MARKER_HOST_KEY: self.hostname})
                    found[path] = RegisteredService(id=path, name=name, meta=meta)
        except (KazooTimeoutError, KazooException) as error:
            raise RegistryUnavailable(f"{self.description}: {type(error).__name__}: {error}") from None
        return found

    def register(self, service: Service) -> None:
        self._ensure_started()
        path = self.key_of(service)
        try:
            try:
                self._client.create(path, self.data_of(service), ephemeral=True, makepath=True)
            except NodeExistsError:
                # Ours with other data (an update), or a node another session left: take it over.
                self._client.delete(path)
                self._client.create(path, self.data_of(service), ephemeral=True, makepath=True)
        except (KazooTimeoutError, KazooException) as error:
            raise RegistryUnavailable(f"{self.description}: {type(error).__name__}: {error}") from None

    def deregister(self, service: RegisteredService) -> None:
        self._ensure_started()
        try:
            self._client.delete(service.id)
        except NoNodeError:
            pass
        except (KazooTimeoutError, KazooException) as error:
            raise RegistryError(f"{self.description}: {type(error).__name__}: {error}") from None

    def close(self) -> None:
        try:
            self._client.stop()
            self._client.close()
        except Exception:  # closing a client whose server is gone must not fail the shutdown
            pass
