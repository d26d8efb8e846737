"""Overall deadlines for many concurrent calls on one timer.

`asyncio.timeout` arms an event-loop timer per call, and the loop keeps its timers in a heap ordered by
Python-level comparisons: at a thousand calls a second that cost more than all of a call's own checks.
Here a call only registers its deadline in a dict, and one check, re-armed every `tick` seconds while
calls are in flight, cancels the overdue ones. A call therefore ends between its deadline and one tick
after it, with `TimeoutError`, exactly as under `asyncio.timeout` (the same cancel-and-uncancel rules,
so an outer cancellation still wins).
"""

from __future__ import annotations

import asyncio
from types import TracebackType

__all__ = ["Deadlines"]


class Deadlines:
    """`with deadlines():` bounds the block to `seconds` (plus at most one `tick`)."""

    def __init__(self, seconds: float, *, tick: float | None = None) -> None:
        self.seconds = seconds
        self.tick = tick if tick is not None else min(1.0, max(seconds / 10, 0.01))
        self._due: dict[asyncio.Task[object], _Deadline] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __call__(self) -> _Deadline:
        return _Deadline(self)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is None or self._loop is not loop or loop.is_closed():
            self._loop = loop
            self._timer = loop.call_later(self.tick, self._check)

    def _check(self) -> None:
        self._timer = None
        loop = self._loop
        if loop is None:
            return
        now = loop.time()
        for task, deadline in list(self._due.items()):
            if deadline.due <= now and not deadline.expired and task.get_loop() is loop:
                deadline.expired = True
                task.cancel()
        if self._due:
            self._timer = loop.call_later(self.tick, self._check)


class _Deadline:
    __slots__ = ("_cancelling", "_owner", "_task", "due", "expired")

    def __init__(self, owner: Deadlines) -> None:
        self._owner = owner

    def __enter__(self) -> _Deadline:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a deadline needs a running task")
        loop = task.get_loop()
        self._task: asyncio.Task[object] = task
        self._cancelling = task.cancelling()
        self.due = loop.time() + self._owner.seconds
        self.expired = False
        self._owner._due[task] = self
        self._owner._arm(loop)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._owner._due.pop(self._task, None)
        if self.expired and self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc
