"""Calls of one batch overlapped on a small pool, their outcomes taken in order.

The sync loop hands a batch's Docker inspects, and the primary a plan's
agent writes, to a few worker threads: each worker makes one call and
returns its outcome, nothing else; the caller (the loop's thread) takes the
outcomes in the items' order and applies them itself. At most the pool's
workers are in flight; every call of a batch is finished (or cancelled
before it started) when the caller is done with it. After a call fails with
the `fatal` error (Docker or the agent unreachable), calls not started yet
are not made.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import CancelledError, Executor, wait
from functools import partial
from typing import TypeVar

from consul_reg.core.calls import NOT_TRIED, Calls, Outcome, Runner, one_by_one

Item = TypeVar("Item")


POLL_SECONDS = 0.005  # how often a caller that may be interrupted looks again


class Interrupted(Exception):
    """`interrupt()` said so while the caller waited for an outcome."""


def outcomes(calls: Calls[Item], items: Sequence[Item], pool: Executor | None,
             interrupt: Callable[[], bool] | None = None) -> Generator[tuple[Item, Outcome], None, None]:
    """(item, outcome) for every item, in order. Without a pool (or for one item)
    the calls are made one by one, on the caller's thread. With `interrupt`, asked
    every few milliseconds while an outcome is awaited: when it says so, Interrupted
    is raised, the calls not started are cancelled and the ones running are left to
    end on their own (the pool must then be one of the caller's own, not the loop's)."""
    stopped = threading.Event()  # set by the first fatal error: later calls are not made

    def one(item: Item) -> Outcome:
        if stopped.is_set():
            return NOT_TRIED
        try:
            return Outcome(calls.call(item))
        except calls.fatal as error:
            stopped.set()
            return Outcome(error=error)
        except calls.errors as error:
            return Outcome(error=error)

    if pool is None or len(items) < 2:
        yield from one_by_one(calls, items)
        return
    futures = [pool.submit(one, item) for item in items]
    interrupted = False
    try:
        for item, future in zip(items, futures, strict=True):
            while interrupt is not None and not future.done():
                if interrupt():
                    interrupted = True
                    raise Interrupted()
                wait([future], timeout=POLL_SECONDS)
            try:
                outcome = future.result()
            except CancelledError:
                outcome = NOT_TRIED
            if stopped.is_set():
                for pending in futures:
                    pending.cancel()
            yield item, outcome
    finally:
        for pending in futures:
            pending.cancel()
        if not interrupted:
            wait(futures)  # nothing of this batch is still running when the caller goes on


def overlapped(pool: Executor | None) -> Runner:
    """A runner for `apply` that overlaps each phase's calls on `pool`."""
    return partial(outcomes, pool=pool)
