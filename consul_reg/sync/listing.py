"""A resync's listing of Docker made beside the loop: the loop keeps handling
container events while dockerd answers (under a burst, a listing of a few
hundred containers took seconds, all of them held).

The listing is asked on the loop's I/O pool; the loop waits for it a few
milliseconds at a time, and gives way when a container event arrives. A
listing that answers after that is still used by the resumed pass (made at
the next quiet moment): it is what Docker held when it was asked, and the
containers the loop looked at since (`touch`) keep what their events said.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor, Future, wait
from typing import Any

from consul_reg.sync.inbox import Inbox

POLL_SECONDS = 0.005  # how often the loop looks at its inbox while dockerd lists


class BackgroundListing:
    def __init__(self, list_containers: Callable[[], list[dict[str, Any]]], io: Executor | None,
                 inbox: Inbox) -> None:
        self._list = list_containers
        self._io = io
        self._inbox = inbox
        self._pending: Future[list[dict[str, Any]]] | None = None
        self.touched: set[str] = set()  # containers whose desire changed since the pending listing was asked

    def touch(self, container_id: str) -> None:
        if self._pending is not None:
            self.touched.add(container_id)

    def take(self) -> list[dict[str, Any]] | None:
        """Docker's listing, or None when a container event arrived first (the listing
        stays pending for the next attempt). Raises what the listing raised."""
        if self._io is None:
            self.touched = set()
            return self._list()
        if self._pending is None:
            self.touched = set()
            self._pending = self._io.submit(self._list)
        while not self._pending.done():
            if self._inbox.events_waiting():
                return None
            wait([self._pending], timeout=POLL_SECONDS)
        pending, self._pending = self._pending, None
        return pending.result()

    def drop(self) -> None:
        """A listing not wanted any more (a pass that lists Docker itself now)."""
        if self._pending is not None:
            self._pending.cancel()
        self._pending = None
        self.touched = set()
