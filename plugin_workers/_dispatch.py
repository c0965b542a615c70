"""Hook dispatch: turn one delivered envelope into a call of the plugin's hook and an Ack."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import anyio
import msgspec
from msgspec.structs import replace

from rapid_objection.bus import (
    HOOK_METHODS,
    Ack,
    AppRegistered,
    AppRegistrationStarted,
    AppRollbackCompleted,
    AppRollbackStarted,
    AppUnregistered,
    AppUnregistrationStarted,
    AutoOperationsCompleted,
    AutoOperationsStarted,
    ConnectionCreated,
    ConnectionShutdown,
    Custom,
    Deferred,
    Delivery,
    Envelope,
    HealthCheck,
    OperationFailed,
    PermanentError,
    RetryLater,
    mask_url,
    redact,
)
from rapid_objection.bus._tracebacks import traceback_text

from ._connection import Connection, Engines
from ._errors import RemoteError
from ._interface import implemented_hooks

CustomHandlers = Callable[[str], list[Callable[..., Any]]]

log = logging.getLogger("rapid_objection.hooks")

HOOK_THREADS = 8
"""Threads a worker's plain ``def`` hooks may occupy at once (a worker passes its
concurrency: each app lane holds at most one, until that thread really returns)."""

LATE_MARGIN = 0.05
"""Seconds past its timeout after which an overrun hook is reported as finishing late."""

_current: ContextVar[Delivery | None] = ContextVar("rapid_objection_delivery", default=None)
_timeout: ContextVar[float] = ContextVar("rapid_objection_hook_timeout", default=0.0)


def current_delivery() -> Delivery:
    """The delivery whose hook is running: ``.envelope.original_id`` is the idempotency
    key (the same for a replayed or re-driven copy), ``.attempt`` the delivery attempt.
    Raises ``LookupError`` outside a hook."""
    delivery = _current.get()
    if delivery is None:
        raise LookupError("current_delivery() is only known inside a hook call")
    return delivery


def current_hook_timeout() -> float:
    """The timeout of the hook that is running (seconds); 0.0 outside a hook."""
    return _timeout.get()


def hook_arguments(  # noqa: PLR0911 - one return per event type reads best
    envelope: Envelope, engines: Engines | None = None
) -> tuple[Any, ...]:
    """The positional arguments of the hook for ``envelope``, after ``self``.

    A payload's ConnectionInfo reaches the hook as a ``Connection`` (its fields, plus
    ``await connection.engine()``)."""
    app, payload = envelope.app, envelope.payload
    if hasattr(payload, "connection"):
        payload = msgspec.structs.replace(
            payload, connection=Connection.of(app, payload.connection, engines)
        )
    match payload:
        case AppRegistrationStarted(config=config):
            return (app, config)
        case ConnectionCreated(connection=connection):
            return (app, connection)
        case AutoOperationsStarted(connection=connection, config=config):
            return (app, connection, config)
        case AutoOperationsCompleted() | AppRollbackCompleted():
            return (app, payload)
        case AppRegistered(connection=connection, config=config):
            return (app, connection, config)
        case AppUnregistrationStarted(options=options) | AppUnregistered(options=options):
            return (app, options)
        case AppRollbackStarted(connection=connection, options=options):
            return (app, connection, options)
        case ConnectionShutdown(connection=connection):
            options = {
                "shared": payload.shared,
                "last_reference": payload.last_reference,
                "registry_shutdown": payload.registry_shutdown,
            }
            return (app, connection, options)
        case OperationFailed(operation=operation, context=context):
            error = RemoteError(payload.error_type, payload.error_message)
            return (app, operation, error, context)
        case HealthCheck(health=health):
            return (app, health)
        case Custom(data=data):
            return (data,)
    raise TypeError(f"no hook for payload {type(payload).__name__}")


def wire_safe(value: Any) -> Any:
    """A hook's return value as something MessagePack can carry, secrets masked."""
    if value is None or isinstance(value, bool | int | float):
        return value  # most hooks return nothing: no walk on the hot path
    # Only an unencodable leaf becomes its repr, so redaction by key still applies.
    return redact(msgspec.to_builtins(value, str_keys=True, enc_hook=repr))


async def _call(
    function: Callable[..., Any], arguments: tuple[Any, ...], threads: anyio.CapacityLimiter
) -> Any:
    """Await an async hook; run a plain one in a thread, so that a blocking hook is held
    to its timeout and never freezes heartbeats, leases or the other apps' hooks."""
    if inspect.iscoroutinefunction(function):
        return await function(*arguments)
    result = await _in_thread(functools.partial(function, *arguments), threads)
    if inspect.isawaitable(result):
        result = await result
    return result


async def _in_thread(call: Callable[[], Any], threads: anyio.CapacityLimiter) -> Any:
    """Run ``call`` in a worker thread of at most ``threads``; when the hook is cancelled
    (its timeout), wait until the thread really returns before giving up the hook: a
    thread cannot be stopped, and the app's next event must not overlap it."""
    loop = asyncio.get_running_loop()
    returned = asyncio.Event()

    def run() -> Any:
        try:
            return call()
        finally:
            loop.call_soon_threadsafe(returned.set)

    async with threads:
        try:
            return await anyio.to_thread.run_sync(run, abandon_on_cancel=True)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await returned.wait()
            raise


class _Watchdog:
    """Hook deadlines with one timer for all of a worker's hooks, re-armed lazily.

    ``begin`` costs a dict write, not a timer: the timer fires at the earliest deadline
    and, for hooks that are still within theirs, is set again for the next one. An
    overrun hook's task is cancelled; ``end`` tells whether that happened.
    """

    def __init__(self) -> None:
        self._deadlines: dict[asyncio.Task[Any], float] = {}
        self._overran: set[asyncio.Task[Any]] = set()
        self._handle: asyncio.TimerHandle | None = None

    def begin(self, task: asyncio.Task[Any], timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._deadlines[task] = deadline
        if self._handle is None or self._handle.when() > deadline:
            if self._handle is not None:
                self._handle.cancel()
            self._handle = loop.call_at(deadline, self._check)

    def end(self, task: asyncio.Task[Any]) -> bool:
        """Forget ``task``'s hook; True when the watchdog cancelled it for overrunning."""
        self._deadlines.pop(task, None)
        if task in self._overran:
            self._overran.discard(task)
            return True
        return False

    def _check(self) -> None:
        self._handle = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        for task, deadline in list(self._deadlines.items()):
            if deadline <= now:
                del self._deadlines[task]
                self._overran.add(task)
                task.cancel()
        if self._deadlines:
            self._handle = loop.call_at(min(self._deadlines.values()), self._check)


def _fields(ack: Ack, envelope: Envelope) -> dict[str, Any]:
    """A hook's log record fields (the JSON log format shows each one)."""
    return {
        "plugin": ack.plugin,
        "consumer": ack.consumer,
        "event_id": envelope.id,
        "event_type": envelope.type,
        "app": envelope.app,
        "attempt": ack.attempt,
        "outcome": ack.status,
        "duration": round(ack.duration, 6),
    }


class Dispatcher:
    """Calls one plugin's hooks under its hook timeout; never raises."""

    def __init__(
        self,
        plugin: object,
        plugin_name: str,
        consumer: str,
        *,
        timeout: float,
        custom_handlers: CustomHandlers | None = None,
        engines: Engines | None = None,
        threads: int = HOOK_THREADS,
    ) -> None:
        self.plugin = plugin
        self._threads = anyio.CapacityLimiter(threads)
        self.engines = engines
        self.plugin_name = plugin_name
        self.consumer = consumer
        self.timeout = timeout
        self.hooks = frozenset(implemented_hooks(plugin))
        self._watchdog = _Watchdog()
        self._custom_handlers = custom_handlers or (lambda name: [])
        batch = getattr(plugin, "prepare_batch", None)
        self.prepare_batch: Callable[[list[Delivery]], Any] | None = (
            batch if inspect.iscoroutinefunction(batch) else None
        )
        """The plugin's ``async def prepare_batch(deliveries)``, when it has one."""

    async def prepare(self, deliveries: list[Delivery]) -> None:
        """Hand the plugin's ``prepare_batch`` the deliveries of a read batch whose hooks
        are about to run, under the hook timeout. It is an optimisation only: every hook
        still runs and acks its own event, so a batch that fails or overruns is logged
        and each hook does its work alone."""
        if self.prepare_batch is None:
            return
        chosen = [delivery for delivery in deliveries if self._targets(delivery.envelope)]
        if not chosen:
            return
        try:
            with anyio.fail_after(self.timeout):
                await self.prepare_batch(chosen)
        except Exception as exc:
            log.warning(
                "plugin %s: prepare_batch of %d events failed (%s: %s); each hook runs alone",
                self.plugin_name,
                len(chosen),
                type(exc).__name__,
                mask_url(str(exc)),
            )

    def _targets(self, envelope: Envelope) -> list[Callable[..., Any]]:
        if isinstance(envelope.payload, Custom):
            return self._custom_handlers(envelope.payload.name)
        if envelope.type not in self.hooks:
            return []
        return [getattr(self.plugin, HOOK_METHODS[envelope.type])]

    def handles(self, envelope: Envelope) -> bool:
        """Whether a hook or handler of the plugin runs for ``envelope`` (else: skipped)."""
        return bool(self._targets(envelope))

    async def __call__(self, delivery: Delivery) -> Ack | Deferred:
        envelope = delivery.envelope
        targets = self._targets(envelope)
        skipped = Ack(
            event_id=envelope.id,
            plugin=self.plugin_name,
            consumer=self.consumer,
            status="skipped",
            attempt=delivery.attempt,
            replay=envelope.replay,
        )
        if not targets:
            return skipped
        arguments = hook_arguments(envelope, self.engines)
        started = time.perf_counter()
        token = _current.set(delivery)
        timeout_token = _timeout.set(self.timeout)
        task = asyncio.current_task()
        assert task is not None, "a hook runs in a task"
        try:
            # The watchdog, not a timer per hook: this is the hot path of every event.
            # A TimeoutError the hook raises itself (a socket, a lock) is the hook's
            # error, not an overrun: only the watchdog's cancellation is a HookTimeout.
            self._watchdog.begin(task, self.timeout)
            try:
                results = [await _call(target, arguments, self._threads) for target in targets]
            except asyncio.CancelledError as cancelled:
                if not self._watchdog.end(task):
                    raise  # cancelled from outside: the worker is stopping
                task.uncancel()
                overran = True
                # Where the hook was waiting when its time ran out: what to look at.
                stuck: str | None = traceback_text(cancelled)
            else:
                stuck = None
                overran = self._watchdog.end(task)
                if overran:
                    task.uncancel()  # the hook swallowed the cancellation and went on
            if overran:
                duration = time.perf_counter() - started
                error = f"hook {self._hook_name(envelope)} timed out after {self.timeout:g}s"
                if duration > self.timeout + LATE_MARGIN:
                    error += (
                        f"; it returned only after {duration:.2f}s (a plain def hook's "
                        "thread cannot be stopped: the app's next event waited for it)"
                    )
                timed_out = replace(
                    skipped,
                    status="error",
                    error=error,
                    error_type="HookTimeout",
                    duration=duration,
                    traceback=stuck,
                    # Not retried: the registry's deadline is the hook timeout (plus a
                    # grace), so it hears of the overrun now instead of a late retry.
                    permanent=True,
                )
                log.warning(
                    "%s of %s for app %r (event %s, attempt %d)",
                    error,
                    self.plugin_name,
                    envelope.app,
                    envelope.id,
                    delivery.attempt,
                    extra=_fields(timed_out, envelope),
                )
                return timed_out
        except RetryLater as signal:
            log.debug(
                "hook %s of %s for app %r (event %s) asked to retry in %gs: %s",
                self._hook_name(envelope),
                self.plugin_name,
                envelope.app,
                envelope.id,
                signal.delay,
                signal.reason,
            )
            return Deferred(signal.delay, signal.reason or "the plugin asked to retry later")
        except Exception as exc:
            failed = replace(
                skipped,
                status="error",
                error=mask_url(str(exc)),
                error_type=type(exc).__name__,
                duration=time.perf_counter() - started,
                permanent=isinstance(exc, PermanentError),
                traceback=traceback_text(exc),
            )
            log.warning(
                "hook %s of %s failed for app %r (event %s, attempt %d): %s: %s",
                self._hook_name(envelope),
                self.plugin_name,
                envelope.app,
                envelope.id,
                delivery.attempt,
                failed.error_type,
                failed.error,
                exc_info=exc,
                extra=_fields(failed, envelope),
            )
            return failed
        finally:
            # A hook that raised is over too: its deadline must not cancel the task (the
            # worker's reader, with concurrency 1) later, in whatever it does next.
            if self._watchdog.end(task):
                task.uncancel()
            _current.reset(token)
            _timeout.reset(timeout_token)
        result = results[0] if len(results) == 1 else results
        ack = replace(
            skipped,
            status="ok",
            result=wire_safe(result),
            duration=time.perf_counter() - started,
        )
        if log.isEnabledFor(logging.DEBUG):  # the fields are built only when shown
            log.debug(
                "hook %s of %s for app %r (event %s, attempt %d): ok in %.1f ms",
                self._hook_name(envelope),
                self.plugin_name,
                envelope.app,
                envelope.id,
                delivery.attempt,
                ack.duration * 1000,
                extra=_fields(ack, envelope),
            )
        return ack

    @staticmethod
    def _hook_name(envelope: Envelope) -> str:
        if isinstance(envelope.payload, Custom):
            return f"on({envelope.payload.name!r})"
        return HOOK_METHODS[envelope.type]
