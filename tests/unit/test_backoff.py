"""The one retry clock: capped exponential backoff with equal jitter, on a fake clock
and an injected random source."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Iterator

import pytest
from consul_reg.core.backoff import Backoff

from tests.unit.fakes import FakeClock, no_jitter


def draws(*values: float) -> Iterator[float]:
    yield from values


def test_without_jitter_it_doubles_to_its_cap_and_resets() -> None:
    clock = FakeClock()
    backoff = Backoff(1.0, cap=4.0, clock=clock, random=no_jitter)
    assert backoff.ready() and not backoff.failing
    assert [backoff.failed() for _ in range(4)] == [1.0, 2.0, 4.0, 4.0]
    assert not backoff.ready()
    clock.advance(4.0)
    assert backoff.ready() and backoff.failing
    backoff.succeeded()
    assert not backoff.failing and backoff.failed() == 1.0


@pytest.mark.parametrize("draw, delay", [(0.0, 4.0), (0.5, 3.0), (0.999999, 2.000002)])
def test_each_wait_is_drawn_between_half_its_nominal_delay_and_the_nominal_delay(draw: float, delay: float) -> None:
    clock = FakeClock()
    backoff = Backoff(4.0, cap=30.0, clock=clock, random=lambda: draw)
    assert backoff.failed() == pytest.approx(delay)
    assert backoff.retry_at == pytest.approx(clock.now + delay)
    clock.advance(delay - 0.001)
    assert not backoff.ready()
    clock.advance(0.001)
    assert backoff.ready()


def test_the_nominal_delay_grows_whatever_was_drawn_and_the_cap_bounds_every_wait() -> None:
    """The exponent grows on the nominal delay, not on the drawn one (a low draw does not
    slow the growth), and no wait ever exceeds the cap."""
    values = draws(0.9, 0.0, 0.9, 0.0, 0.5, 0.0)
    backoff = Backoff(1.0, cap=8.0, clock=FakeClock(), random=lambda: next(values))
    assert [backoff.failed() for _ in range(6)] == pytest.approx([0.55, 2.0, 2.2, 8.0, 6.0, 8.0])


def test_at_the_cap_waits_stay_within_half_the_cap_and_the_cap() -> None:
    backoff = Backoff(0.1, cap=2.0, clock=FakeClock(), random=random.Random(7).random)
    waits = [backoff.failed() for _ in range(200)]
    assert all(1.0 < wait <= 2.0 for wait in waits[5:]), waits[:8]
    assert max(waits) <= 2.0 and len(set(waits[5:])) > 100, "drawn afresh at each failure"


def test_a_success_resets_the_nominal_delay_to_the_initial_one() -> None:
    backoff = Backoff(1.0, cap=30.0, clock=FakeClock(), random=lambda: 0.5)
    for _ in range(5):
        backoff.failed()
    backoff.succeeded()
    assert not backoff.failing and backoff.ready()
    assert backoff.failed() == 0.75


def test_retry_now_ends_the_wait_but_not_the_growth() -> None:
    clock = FakeClock()
    backoff = Backoff(1.0, cap=30.0, clock=clock, random=no_jitter)
    backoff.failed()
    backoff.retry_now()
    assert backoff.ready() and backoff.failing
    assert backoff.failed() == 2.0


def test_hosts_failing_at_the_same_moment_come_back_spread_out() -> None:
    """1,000 hosts lose a shared mirror at once: their retries spread over the second half
    of the nominal delay (no tenth of it holds more than twice its share), where without
    jitter they would all come back at one instant."""
    clock = FakeClock()
    hosts = [Backoff(2.0, cap=2.0, clock=clock, random=random.Random(seed).random) for seed in range(1000)]
    retries = [host.failed() for host in hosts]
    assert all(1.0 < r <= 2.0 for r in retries)
    tenths = Counter(min(int((r - 1.0) * 10), 9) for r in retries)
    assert len(tenths) == 10 and max(tenths.values()) <= 200, tenths
    in_step = [Backoff(2.0, cap=2.0, clock=clock, random=no_jitter).failed() for _ in range(1000)]
    assert len(set(in_step)) == 1  # what the jitter is for


def test_one_hosts_successive_waits_still_grow_below_the_cap() -> None:
    backoff = Backoff(0.1, cap=100.0, clock=FakeClock(), random=random.Random(3).random)
    waits = [backoff.failed() for _ in range(10)]
    assert all(earlier < later for earlier, later in itertools.pairwise(waits)), waits
