"""A batch of calls and their outcomes, as records: what `apply` and the loop's
reads hand to a runner. Here the runner that makes them one by one on the
caller's thread; sync/overlap.py has the one that overlaps them on a pool."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

Item = TypeVar("Item")


@dataclass(frozen=True)
class Outcome:
    value: Any = None
    error: BaseException | None = None
    tried: bool = True  # False: not made, an earlier call failed with the fatal error


NOT_TRIED = Outcome(tried=False)


@dataclass(frozen=True)
class Calls(Generic[Item]):
    call: Callable[[Item], Any]
    errors: tuple[type[BaseException], ...]  # caught and returned as outcomes; anything else propagates
    fatal: type[BaseException]  # once one call raised it, the calls not started are not made (one of `errors`)


class Runner(Protocol):
    def __call__(self, calls: Calls[Item], items: Sequence[Item]) -> Iterator[tuple[Item, Outcome]]: ...


def one_by_one(calls: Calls[Item], items: Sequence[Item]) -> Iterator[tuple[Item, Outcome]]:
    """(item, outcome) for every item, in order, each call made on the caller's thread;
    after the fatal error the rest are not made."""
    stopped = False
    for item in items:
        if stopped:
            yield item, NOT_TRIED
            continue
        try:
            yield item, Outcome(calls.call(item))
        except calls.fatal as error:
            stopped = True
            yield item, Outcome(error=error)
        except calls.errors as error:
            yield item, Outcome(error=error)


T = TypeVar("T", covariant=True)


class Later(Protocol[T]):
    """A read already asked for, whose answer is taken when needed (or never)."""

    def result(self) -> T: ...

    def cancel(self) -> object: ...  # what it returns is not read (a Future's says whether it was)


@dataclass(frozen=True)
class Ready(Generic[Item]):
    """A Later whose answer was there at once (a fake, the in-memory registry, an old agent)."""

    value: Item

    def result(self) -> Item:
        return self.value

    def cancel(self) -> None:
        pass



class WhenAsked(Generic[Item]):
    """A Later made when its answer is asked for (where nothing can be sent ahead)."""

    def __init__(self, call: Callable[[], Item]) -> None:
        self._call = call

    def result(self) -> Item:
        return self._call()

    def cancel(self) -> None:
        pass
