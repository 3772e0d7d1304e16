"""ZooKeeper through kazoo: `<basepath>/<service-name>/<ip>:<public-port>` as
an ephemeral znode holding registrator's JSON (Name, IP, PublicPort,
PrivatePort, ContainerID, Tags, Attrs). Nodes of this daemon's session are
its own and no other node is ever changed or deleted; after a session loss
its nodes are gone and the worker, told at once, creates them again.
Only a lost connection or session makes the mirror unavailable; a node the
server refuses (someone else's ACL on `/services/<name>`, an ephemeral parent)
is that node's error (RegistryRefused), and the other nodes are written."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import (
    AuthFailedError,
    BadVersionError,
    ConnectionDropped,
    ConnectionLoss,
    KazooException,
    NoAuthError,
    NoChildrenForEphemeralsError,
    NodeExistsError,
    NoNodeError,
    NotReadOnlyCallError,
    OperationTimeoutError,
    RequestTimeoutError,
    SessionExpiredError,
    SessionMovedError,
    ThrottledOpError,
    UnknownSessionError,
    ZookeeperStoppedError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.interfaces import IAsyncResult
from kazoo.protocol.states import ZnodeStat
from loguru import logger

from consul_reg.core.errors import RegistryError, RegistryNotOurs, RegistryRefused, RegistryUnavailable
from consul_reg.core.records import MARKER_DIGEST_KEY, RegisteredService, Service, owner_meta
from consul_reg.mirrors.keys import HOLDER_KEY, child_key, segment_problem

SESSION_TIMEOUT_SECONDS = 10.0
# Disconnected this long while kazoo keeps reconnecting: try a fresh session
# beside it. A server that lost its data (or another ensemble) refuses a
# client that saw newer transactions, forever; a fresh client is accepted.
FRESH_SESSION_AFTER_SECONDS = 2.0
# One call's answer, at most. kazoo queues a call made while it reconnects and never
# fails it: a server that refuses the session (wiped, another ensemble) would hold the
# mirror's thread for ever, and no fresh session would be tried. Past this the call
# counts as a lost connection (KazooTimeoutError): the mirror is down, and the worker
# goes on (a fresh session, then everything written again). Above kazoo's own read
# timeout (two thirds of SESSION_TIMEOUT_SECONDS), after which kazoo drops a connection
# whose server stopped answering: only a call kazoo never sent waits this long.
CALL_SECONDS = 7.0
ZK_ERRORS = (KazooTimeoutError, KazooException)
# The connection or the session is lost, or the server takes no writes at all: the
# mirror is down. Any other error names one node (someone else's ACL on it or on
# its parent, an ephemeral parent): that node is refused, the others are written.
SESSION_ERRORS = (KazooTimeoutError, ConnectionLoss, ConnectionDropped, SessionExpiredError, SessionMovedError,
                  UnknownSessionError, AuthFailedError, OperationTimeoutError, RequestTimeoutError,
                  ThrottledOpError, NotReadOnlyCallError, ZookeeperStoppedError)


class ZooKeeperRegistry:
    replaceable = False

    def __init__(self, host: str, port: int, basepath: str, hostname: str) -> None:
        self.basepath = "/" + basepath.strip("/")
        self.hostname = hostname
        self.description = f"zookeeper {host}:{port}{self.basepath}"
        self.on_change: Callable[[], None] = lambda: None
        self._hosts = f"{host}:{port}"
        self._client = self._new_client()
        self.session_lost = threading.Event()
        self._started = False
        self._disconnected_since: float | None = None

    def listen(self, on_change: Callable[[], None]) -> None:
        """`on_change` is called when this registry's state was lost (its worker relists)."""
        self.on_change = on_change

    def identity(self) -> str:
        return ""  # never replaced under us: its state loss comes through `maintain` and `listen`

    def _new_client(self) -> KazooClient:
        client = KazooClient(hosts=self._hosts, timeout=SESSION_TIMEOUT_SECONDS,
                             connection_retry={"max_tries": -1, "max_delay": 1})
        client.add_listener(lambda state: self._on_state(client, state))
        return client

    def _on_state(self, client: KazooClient, state: str) -> None:  # on kazoo's thread
        if client is not self._client:
            return  # a client given up or replaced (its stop says LOST): not this mirror's state
        if state == KazooState.CONNECTED:
            self._disconnected_since = None
        elif self._disconnected_since is None:
            self._disconnected_since = time.monotonic()
        if state == KazooState.LOST:
            self.session_lost.set()  # our ephemeral nodes are gone: relist and recreate
        self.on_change()  # the worker looks again: relist, recreate, or keep an eye on the outage

    def _ensure_started(self) -> None:
        if not self._started:
            try:
                self._client.start(timeout=5)
            except ZK_ERRORS as error:
                self._client.stop()
                raise RegistryUnavailable(f"{self.description}: {type(error).__name__}: {error}") from None
            self._started = True
            self._disconnected_since = None
        elif not self._client.connected:
            since = self._disconnected_since
            if since is not None and time.monotonic() - since > FRESH_SESSION_AFTER_SECONDS:
                self._try_fresh_session()
            if not self._client.connected:
                raise RegistryUnavailable(f"{self.description}: not connected (kazoo is reconnecting)")

    def _try_fresh_session(self) -> None:
        fresh = self._new_client()
        try:
            fresh.start(timeout=2)
        except ZK_ERRORS:
            fresh.stop()
            fresh.close()
            return  # the server is not there at all
        old, self._client = self._client, fresh
        self._disconnected_since = None
        self.session_lost.set()
        logger.warning("{}: the server does not take this daemon's session back (was its data reset?); "
                       "new session, every node is created again", self.description)
        old.stop()
        old.close()

    def _session(self) -> int | None:
        return self._client.client_id[0] if self._client.client_id else None

    def _node(self, service: Service) -> str:
        return f"{service.address}:{service.port or 0}"

    def key_of(self, service: Service) -> str:
        return child_key(self.basepath, service.name, self._node(service))

    def accepts(self, service: Service) -> str:
        return segment_problem(service.name) or segment_problem(self._node(service))

    def data_of(self, service: Service) -> bytes:
        public, _, _ = service.exposed_port.partition("/")
        record = {
            "Name": service.name,
            "IP": service.address,
            "PublicPort": service.port or 0,
            "PrivatePort": int(public) if public.isascii() and public.isdigit() else 0,
            "ContainerID": service.container_id[:12],
            "Tags": list(service.tags),
            "Attrs": {k: v for k, v in service.meta if not k.startswith("consul_reg_") and k != "external-source"},
        }
        return json.dumps(record, sort_keys=True, separators=(",", ":")).encode()

    def digest_of(self, service: Service) -> str:
        return self.data_of(service).decode()

    def maintain(self) -> bool:
        """True when our session (and its nodes) is gone; raises while ZooKeeper
        cannot be reached, so the worker keeps looking, on its backoff."""
        if self._started and not self._client.connected:
            self._ensure_started()
        if self.session_lost.is_set():
            self.session_lost.clear()
            return True
        return False

    def seconds_until_maintenance(self) -> float:
        """0 when there is something to do: a lost session, or an outage long
        enough to try a fresh session."""
        if self.session_lost.is_set():
            return 0.0
        since = self._disconnected_since
        if self._started and since is not None:
            return max(0.0, since + FRESH_SESSION_AFTER_SECONDS - time.monotonic())
        return 3600.0

    def services(self) -> dict[str, RegisteredService]:
        self._ensure_started()
        self.session_lost.clear()
        session = self._session()
        found: dict[str, RegisteredService] = {}
        try:
            names = self._wait(self._client.get_children_async(self.basepath)) \
                if self._wait(self._client.exists_async(self.basepath)) else []
        except ZK_ERRORS as error:
            self._raise_if_lost(error)
            raise RegistryError(f"{self.description}: {self.basepath} cannot be listed: "
                                f"{_cause(error, self.basepath, self.basepath)}") from None
        for name in names:
            for node in self._children(f"{self.basepath}/{name}"):
                path = f"{self.basepath}/{name}/{node}"
                read = self._read(path)
                if read is None:
                    continue
                data, stat = read
                meta = {MARKER_DIGEST_KEY: data.decode("utf-8", "replace")}
                if session is not None and stat.ephemeralOwner == session:
                    meta.update(owner_meta(self.hostname))
                else:
                    meta[HOLDER_KEY] = _holder(stat.ephemeralOwner)
                found[path] = RegisteredService(id=path, name=name, meta=meta)
        return found

    def _children(self, path: str) -> list[str]:
        """A service name's nodes; none when it went meanwhile or this daemon may not list it
        (someone else's ACL): its nodes are then refused one by one when written."""
        try:
            return list(self._wait(self._client.get_children_async(path)))
        except ZK_ERRORS as error:
            self._raise_if_lost(error)
            if not isinstance(error, NoNodeError):
                logger.debug("{}: {} not listed: {}", self.description, path, _cause(error, path, path))
            return []

    def _read(self, path: str) -> tuple[bytes, ZnodeStat] | None:
        """A node's data and stat; a node this daemon may not read is still known by its
        stat (`exists` needs no permission), with no data: never taken for free."""
        try:
            try:
                return self._wait(self._client.get_async(path))
            except NoAuthError:
                stat = self._wait(self._client.exists_async(path))
                return None if stat is None else (b"", stat)
        except ZK_ERRORS as error:
            self._raise_if_lost(error)
            return None

    def register(self, service: Service) -> None:
        self._ensure_started()
        path = self.key_of(service)
        try:
            try:
                # The parent first, then the node, each sent by this thread: kazoo's own makepath
                # would create the node from its thread, after a time-out, behind a later relist.
                self._wait(self._client.ensure_path_async(path.rsplit("/", 1)[0]))
                self._wait(self._client.create_async(path, self.data_of(service), ephemeral=True))
            except NodeExistsError:
                stat = self._wait(self._client.exists_async(path))
                if stat is not None and stat.ephemeralOwner != self._session():
                    raise RegistryNotOurs(f"{path} is held by {_holder(stat.ephemeralOwner)}: left as it is") from None
                if stat is None:
                    raise RegistryNotOurs(f"{path} was removed while being written: looked at again") from None
                # never over a newer node
                self._wait(self._client.set_async(path, self.data_of(service), version=stat.version))
        except (BadVersionError, NoNodeError):
            raise RegistryNotOurs(f"{path} changed under this daemon while being written: left as it is") from None
        except ZK_ERRORS as error:
            raise self._failure(error, path) from None

    def deregister(self, service: RegisteredService) -> None:
        self._ensure_started()
        try:
            stat = self._wait(self._client.exists_async(service.id))
            if stat is not None and stat.ephemeralOwner == self._session():
                self._wait(self._client.delete_async(service.id, version=stat.version))
        except NoNodeError:
            pass
        except ZK_ERRORS as error:
            raise self._failure(error, service.id) from None

    @staticmethod
    def _wait(call: IAsyncResult) -> Any:
        """A kazoo call's answer within CALL_SECONDS (KazooTimeoutError past it)."""
        return call.get(timeout=CALL_SECONDS)

    def _raise_if_lost(self, error: BaseException) -> None:
        """The mirror is down only when the connection or the session is lost."""
        if isinstance(error, SESSION_ERRORS) or not self._client.connected:
            raise RegistryUnavailable(f"{self.description}: {type(error).__name__}: {error}") from None

    def _failure(self, error: BaseException, path: str) -> RegistryError:
        self._raise_if_lost(error)
        return RegistryRefused(path, _cause(error, path))

    def remove_all(self) -> None:
        """Ending the session removes every ephemeral node of ours at once."""
        if self._started:
            self._client.stop()

    def close(self) -> None:
        try:
            self._client.stop()
            self._client.close()
        except Exception:  # closing a client whose server is gone must not fail the shutdown
            pass


def _cause(error: BaseException, path: str, acl_of: str = "") -> str:
    """Why ZooKeeper refused `path`, for a log line (kazoo's own messages are empty).
    `acl_of`: the node(s) whose ACL decided (by default the parent's or the node's)."""
    parent = path.rsplit("/", 1)[0] or "/"
    if isinstance(error, NoAuthError):
        return f"NoAuthError: the ACL of {acl_of or parent + ' or of the node'} (not this daemon's) does not allow it"
    if isinstance(error, NoChildrenForEphemeralsError):
        return (f"NoChildrenForEphemeralsError: {parent} is an ephemeral node (another session's), "
                "which cannot have children")
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _holder(session: int) -> str:
    return f"ZooKeeper session {session:#x}" if session else "a persistent node (not consul-reg's)"
