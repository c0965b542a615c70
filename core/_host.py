"""The registry's own task: it holds the bus, the publisher and the background tasks.

Everything with a cancel scope that outlives one call (the bus connection, the
publisher's ack reader and heartbeat, inline plugin workers, process supervisors, the
health monitor) is entered and left in this one task, which ``initialize()`` starts and
``shutdown()`` stops. So ``shutdown()`` works from any task and under any cancel scope,
and a background task that fails is reported instead of cancelling the caller's task.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any, Generic, TypeVar

import anyio
from anyio.abc import TaskGroup, TaskStatus

log = logging.getLogger("rapid_objection.registry")

T = TypeVar("T")

Job = Callable[..., Awaitable[None]]
"""A background task: ``async def job(*, task_status)``, ready once it calls started()."""

OnCrash = Callable[[BaseException], None]


def describe(exc: BaseException) -> str:
    """``Type: message`` of the error itself, out of any exception groups around it."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


class _Started:
    """A task status that remembers whether the job said it was ready."""

    def __init__(self, inner: TaskStatus[Any]) -> None:
        self.inner = inner
        self.done = False

    def started(self, value: Any = None) -> None:
        self.done = True
        self.inner.started(value)


class BackgroundTasks:
    """Starts jobs in the host's task group; a job that fails once running is handed to
    its ``on_crash`` (logged, marked failed) and never cancels its siblings or a caller."""

    def __init__(self, group: TaskGroup) -> None:
        self._group = group

    async def start(self, name: str, job: Job, on_crash: OnCrash) -> None:
        """Run ``job`` until the registry stops; returns once it is ready.

        A job that fails before it is ready raises here, in the caller's task.
        """

        async def guarded(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
            status = _Started(task_status)
            try:
                await job(task_status=status)
            except Exception as exc:
                if not status.done:
                    raise
                log.exception("background task %s failed", name)
                on_crash(exc)
            if not status.done:
                status.started()  # a job that ended at once: nothing left to wait for

        await self._group.start(guarded, name=name)


class Host(Generic[T]):
    """One task of the registry's own, holding what ``open`` enters until ``stop()``."""

    def __init__(self, name: str, open_: Callable[[AsyncExitStack], Awaitable[T]]) -> None:
        self.name = name
        self._open = open_
        self._opened: T | None = None
        self._tasks: BackgroundTasks | None = None
        self._ready = anyio.Event()
        self._stopping = anyio.Event()
        self._done = anyio.Event()
        self._task: asyncio.Task[None] | None = None
        self.failure: BaseException | None = None
        """Why the host task ended before it was told to stop (or could not open)."""

    @property
    def stopped(self) -> bool:
        return self._done.is_set()

    async def start(self) -> tuple[T, BackgroundTasks]:
        """Start the task and wait until it has opened everything; raises what failed."""
        # Not a task of the caller's task group: the registry outlives the caller's scope
        # (it is shut down from wherever the application decides), so its task is owned
        # by the registry itself and always awaited by stop().
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)
        try:
            await self._ready.wait()
        except BaseException:
            await self.stop()
            raise
        if self._opened is None or self._tasks is None:
            await self.stop()
            assert self.failure is not None
            raise self.failure
        return self._opened, self._tasks

    async def _run(self) -> None:
        try:
            async with AsyncExitStack() as stack:
                self._opened = await self._open(stack)
                group = await stack.enter_async_context(anyio.create_task_group())
                self._tasks = BackgroundTasks(group)
                self._ready.set()
                await self._stopping.wait()
                group.cancel_scope.cancel()
        except BaseException as exc:
            # Kept (and logged), never left for asyncio to call "never retrieved".
            self.failure = exc
            if self._ready.is_set():
                log.error("registry task %s failed: %r", self.name, exc)
        finally:
            self._ready.set()
            self._done.set()

    async def stop(self, limit: float | None = None) -> bool:
        """Tell the task to close everything and wait (shielded) until it has, or for
        ``limit`` seconds; whether it has ended."""
        self._stopping.set()
        if not self._ready.is_set() and self._task is not None:
            self._task.cancel()  # still opening (a slow connect): no need to finish that
        with anyio.CancelScope(shield=True), anyio.move_on_after(
            float("inf") if limit is None else limit
        ):
            await self._done.wait()
        return self._done.is_set()
