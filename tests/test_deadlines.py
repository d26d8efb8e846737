"""The shared deadline timer: one check for every in-flight call, with asyncio.timeout's semantics."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from alter_agents.deadlines import Deadlines


async def test_an_overdue_call_ends_with_timeout_error_within_one_tick() -> None:
    deadlines = Deadlines(0.2, tick=0.05)
    started = time.monotonic()
    with pytest.raises(TimeoutError), deadlines():
        await asyncio.sleep(5)
    assert 0.2 <= time.monotonic() - started < 0.2 + 0.05 + 0.2
    deadlines.close()


async def test_calls_that_finish_in_time_are_untouched_and_the_timer_stops_when_idle() -> None:
    deadlines = Deadlines(0.3, tick=0.02)

    async def call(i: int) -> int:
        with deadlines():
            await asyncio.sleep(0.01 * (i % 5))
        return i

    assert await asyncio.gather(*(call(i) for i in range(50))) == list(range(50))
    await asyncio.sleep(0.1)  # a tick with nothing in flight disarms the timer
    assert deadlines._timer is None and not deadlines._due
    current = asyncio.current_task()
    assert current is not None and current.cancelling() == 0


async def test_only_the_overdue_of_many_concurrent_calls_are_cancelled() -> None:
    deadlines = Deadlines(0.15, tick=0.02)

    async def call(seconds: float) -> str:
        try:
            with deadlines():
                await asyncio.sleep(seconds)
        except TimeoutError:
            return "timeout"
        return "ok"

    outcomes = await asyncio.gather(call(0.01), call(1.0), call(0.05), call(2.0))
    assert outcomes == ["ok", "timeout", "ok", "timeout"]
    deadlines.close()


async def test_an_outer_cancellation_wins_over_an_expired_deadline() -> None:
    deadlines = Deadlines(0.05, tick=0.01)
    entered = asyncio.Event()

    async def call() -> None:
        with deadlines():
            entered.set()
            try:
                await asyncio.sleep(5)
            finally:
                await asyncio.sleep(0.1)  # cleanup outlives the deadline, then the outer cancel arrives

    task = asyncio.create_task(call())
    await entered.wait()
    await asyncio.sleep(0.08)  # the deadline has struck: the task is in its cleanup
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    deadlines.close()


async def test_a_caught_cancellation_inside_leaves_no_pending_cancel_behind() -> None:
    deadlines = Deadlines(0.05, tick=0.01)
    # Swallowed inside: the deadline's own cancel is withdrawn on the way out.
    with deadlines(), contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(1)
    current = asyncio.current_task()
    assert current is not None and current.cancelling() == 0
    await asyncio.sleep(0)  # and nothing is delivered later
    deadlines.close()
