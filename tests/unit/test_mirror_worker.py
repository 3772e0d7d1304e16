"""Mirror workers with a fake mirror: an offer during a write is never lost,
a mirror that was down catches up, others' keys are never written."""

from __future__ import annotations

import threading
import time
from types import MappingProxyType

from loguru import logger

from consul_reg.mirrors.worker import BLOCKED_RETRY_SECONDS, MirrorWorker
from consul_reg.core.records import MARKER_DIGEST_KEY, MARKER_HOST_KEY, MARKER_SOURCE_KEY, MARKER_SOURCE_VALUE
from consul_reg.core.records import RegisteredService, Service
from consul_reg.core.errors import RegistryNotOurs, RegistryUnavailable
from consul_reg.mirrors.keys import HOLDER_KEY
from consul_reg.core.snapshot import Snapshot
from tests.unit.fakes import FakeClock


class FakeMirror:
    description = "fake mirror"
    replaceable = False

    def __init__(self) -> None:
        self.keys: dict[str, tuple[str, str]] = {}  # key -> (value, owner)
        self.down = False
        self.gate = threading.Event()
        self.gate.set()
        self.writing = threading.Event()
        self.removed_all = False
        self.on_change = lambda: None

    def listen(self, on_change) -> None:
        self.on_change = on_change

    def identity(self) -> str:
        return ""

    def key_of(self, service: Service) -> str:
        return f"/p/{service.name}/{service.id}"

    def accepts(self, service: Service) -> str:
        return ""

    def digest_of(self, service: Service) -> str:
        return f"{service.address}:{service.port}"

    def maintain(self) -> bool:
        return False

    def seconds_until_maintenance(self) -> float:
        return 3600.0

    def _check(self) -> None:
        if self.down:
            raise RegistryUnavailable("fake mirror: down")

    def services(self) -> dict[str, RegisteredService]:
        self._check()
        found = {}
        for key, (value, owner) in self.keys.items():
            meta = {MARKER_DIGEST_KEY: value}
            if owner == "h":
                meta.update({MARKER_SOURCE_KEY: MARKER_SOURCE_VALUE, MARKER_HOST_KEY: "h"})
            else:
                meta[HOLDER_KEY] = f"host {owner}"
            found[key] = RegisteredService(id=key, name=key.split("/")[2], meta=meta)
        return found

    def register(self, service: Service) -> None:
        self.writing.set()
        self.gate.wait(10)
        self._check()
        self.keys[self.key_of(service)] = (self.digest_of(service), "h")

    def deregister(self, service: RegisteredService) -> None:
        self._check()
        del self.keys[service.id]

    def remove_all(self) -> None:
        self.removed_all = True
        self.keys = {k: v for k, v in self.keys.items() if v[1] != "h"}

    def close(self) -> None:
        pass


def snap(generation: int, *ids: str) -> Snapshot:
    return Snapshot(generation=generation, desired=MappingProxyType(
        {i: Service(id=i, name="web", address="10.0.0.1", port=80) for i in ids}))


def wait(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_an_offer_during_a_write_is_applied_right_after_it() -> None:
    mirror = FakeMirror()
    worker = MirrorWorker(mirror, "h", retry_interval=0.05)
    worker.start()
    try:
        mirror.gate.clear()
        worker.offer(snap(1, "a"))
        wait(mirror.writing.is_set)  # the worker is inside register(a)
        worker.offer(snap(2))  # a is gone meanwhile
        mirror.gate.set()
        wait(lambda: mirror.keys == {} and worker._applied == 2)
    finally:
        worker.stop()


def test_a_mirror_that_was_down_catches_up_with_the_newest_state() -> None:
    mirror = FakeMirror()
    mirror.down = True
    worker = MirrorWorker(mirror, "h", retry_interval=0.05)
    worker.start()
    try:
        worker.offer(snap(1, "a"))
        wait(lambda: worker.state == "down")
        worker.offer(snap(2, "b"))
        mirror.down = False
        wait(lambda: set(mirror.keys) == {"/p/web/b"} and worker.state == "up")
    finally:
        worker.stop()


def test_keys_of_others_are_never_written_or_removed() -> None:
    mirror = FakeMirror()
    mirror.keys["/p/web/a"] = ("192.0.2.9:1", "other-host")
    mirror.keys["/p/web/z"] = ("192.0.2.9:2", "other-host")
    worker = MirrorWorker(mirror, "h", retry_interval=0.05)
    worker.start()
    try:
        worker.offer(snap(1, "a", "b"))
        wait(lambda: "/p/web/b" in mirror.keys and worker._applied == 1)
        assert mirror.keys["/p/web/a"] == ("192.0.2.9:1", "other-host")
        assert mirror.keys["/p/web/z"] == ("192.0.2.9:2", "other-host")
        del mirror.keys["/p/web/a"]  # the other host's key expires: ours is written within the retry time
        wait(lambda: mirror.keys.get("/p/web/a", ("", ""))[1] == "h", timeout=10)
    finally:
        worker.stop(remove_all=True)
    assert mirror.removed_all and set(mirror.keys) == {"/p/web/z"}


class CasMirror(FakeMirror):
    """Writes as the real mirrors do: a check-and-set that refuses a key another host holds."""

    def register(self, service: Service) -> None:
        current = self.keys.get(self.key_of(service))
        if current is not None and current[1] != "h":
            raise RegistryNotOurs(f"{self.key_of(service)} is held by host {current[1]}: left as it is")
        super().register(service)


def step(worker: MirrorWorker) -> None:
    """One step of the worker's thread, on the caller's."""
    snapshot, relist = worker._offer, worker._relist
    worker._relist = False
    assert snapshot is not None
    worker._step(snapshot, relist)


def test_a_key_taken_since_the_listing_is_left_warned_once_and_taken_when_released() -> None:
    """Driven step by step on a fake clock (no thread): the worker's listing is stale
    (-resync 0), another host took the key in between."""
    mirror, clock = CasMirror(), FakeClock()
    worker = MirrorWorker(mirror, "h", retry_interval=0.05, clock=clock)
    warnings: list[str] = []
    sink = logger.add(lambda message: warnings.append(message.record["message"]), level="WARNING")
    try:
        worker.offer(snap(1), relist=True)
        step(worker)
        mirror.keys["/p/web/a"] = ("192.0.2.9:1", "other-host")
        worker.offer(snap(2, "a"))
        step(worker)
        assert mirror.keys["/p/web/a"] == ("192.0.2.9:1", "other-host") and worker.state == "up"
        assert worker._due_in() == BLOCKED_RETRY_SECONDS, "looked at again later"
        clock.advance(BLOCKED_RETRY_SECONDS)
        assert worker._due_in() == 0
        step(worker)  # still held: relisted, blocked, not warned again
        assert mirror.keys["/p/web/a"][1] == "other-host"
        del mirror.keys["/p/web/a"]  # the other host's container left
        clock.advance(BLOCKED_RETRY_SECONDS)
        step(worker)
        assert mirror.keys["/p/web/a"] == ("10.0.0.1:80", "h") and worker._due_in() == 3600.0
    finally:
        logger.remove(sink)
    assert len(warnings) == 1 and "/p/web/a" in warnings[0] and "other-host" in warnings[0], warnings


def test_a_key_held_at_listing_is_warned_once_naming_its_holder() -> None:
    mirror, clock = CasMirror(), FakeClock()
    mirror.keys["/p/web/a"] = ("192.0.2.9:1", "other-host")
    worker = MirrorWorker(mirror, "h", retry_interval=0.05, clock=clock)
    warnings: list[str] = []
    sink = logger.add(lambda message: warnings.append(message.record["message"]), level="WARNING")
    try:
        worker.offer(snap(1, "a"), relist=True)
        for _ in range(3):
            step(worker)
            clock.advance(BLOCKED_RETRY_SECONDS)
    finally:
        logger.remove(sink)
    assert mirror.keys["/p/web/a"][1] == "other-host"
    assert len(warnings) == 1 and "/p/web/a is held by host other-host" in warnings[0], warnings


def test_a_key_held_under_another_spelling_blocks_it_warned_once_naming_both() -> None:
    """Mirror keys compare case-folded, as Consul's catalog compares IDs: another host's
    `/p/web/A` blocks this host's `/p/web/a`; nothing is written or removed."""
    mirror, clock = CasMirror(), FakeClock()
    mirror.keys["/p/web/A"] = ("192.0.2.9:1", "other-host")
    worker = MirrorWorker(mirror, "h", retry_interval=0.05, clock=clock)
    warnings: list[str] = []
    sink = logger.add(lambda message: warnings.append(message.record["message"]), level="WARNING")
    try:
        worker.offer(snap(1, "a"), relist=True)
        for _ in range(3):
            step(worker)
            clock.advance(BLOCKED_RETRY_SECONDS)
    finally:
        logger.remove(sink)
    assert mirror.keys == {"/p/web/A": ("192.0.2.9:1", "other-host")}
    assert len(warnings) == 1 and "/p/web/a is held as /p/web/A (a key that differs only in case) by host " \
        "other-host" in warnings[0], warnings
