"""One dedicated thread per kind of llama work, driven from the event loop.

llama-cpp-python's own server pulls every token through starlette's thread pool, so consecutive
tokens of one stream run on different threads; one ``Llama`` fed from a single thread decodes
faster (llama.cpp's CPU threadpool and caches stay warm). :class:`Worker` runs callables and
iterators on one long-lived daemon thread and hands results back to asyncio; the event loop never
runs llama.cpp code itself, so ``/health`` stays responsive whatever a request does.

Two workers exist per server (see :mod:`steam_persona.serve.app`): ``generate`` (every call that decodes) and
``checks`` (template rendering, tokenize and detokenize, which only read the vocabulary and may run
beside decoding).

Each job runs in a copy of the caller's :mod:`contextvars` context, so per-request values (usage
in streams, the stop predicate) reach llama code on the worker thread.
"""

from __future__ import annotations

import asyncio
import contextvars
import queue
import threading
from typing import Any, AsyncIterator, Callable, Iterator

#: Per request: a predicate the generation loop asks before each token and each prompt batch of
#: ``--n_batch`` tokens (:meth:`steam_persona.serve.chat_handler.ChatHandler._stoppable_eval`); True
#: stops generation. Not llama.cpp's abort callback, which enters Python after every graph node and
#: then waits for the GIL whenever another thread runs Python (docs/serving.md, "What happens when a
#: client leaves").
STOP: contextvars.ContextVar[Callable[[], bool] | None] = contextvars.ContextVar("stop", default=None)

#: Seconds a stream waits for its first chunk before its response starts (both engines): an error raised
#: while the prompt is evaluated is still a 4xx, yet a request queued behind others (or waiting for a
#: llama-server slot) gets headers and SSE pings (keeping proxies and client read timeouts at bay)
#: instead of silence.
FIRST_CHUNK_WAIT_S = 5.0

_END = object()


class Worker:
    """A daemon thread that runs submitted jobs one at a time, in order.

    Args:
        name: thread name (shows in ``py-spy`` and tracebacks).
    """

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            self._jobs.get()()

    async def call(self, fn: Callable[..., Any], *args: Any, cancel: threading.Event | None = None,
                   **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` on the worker thread; return its result or raise its exception.

        A job whose awaiting task was cancelled before it starts is skipped; one whose ``cancel``
        is set by then raises :class:`Skipped` here. Cancelling the awaiting task does not interrupt
        a running job: callers stop llama work through :data:`STOP`.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        ctx = contextvars.copy_context()

        def job() -> None:
            if future.cancelled():
                return
            if cancel is not None and cancel.is_set():
                _call_soon(loop, _settle, future, None, Skipped())
                return
            try:
                result = ctx.run(fn, *args, **kwargs)
            except BaseException as e:  # noqa: BLE001 -- handed to the awaiting coroutine
                _call_soon(loop, _settle, future, None, e)
            else:
                _call_soon(loop, _settle, future, result, None)
        self._jobs.put(job)
        return await future

    async def iterate(self, make: Callable[[], Iterator[Any]], cancel: threading.Event) -> AsyncIterator[Any]:
        """Yield the items of ``make()`` produced on the worker thread, as they come.

        The iterator is created and advanced on the worker thread; it is closed there when it ends,
        raises, or ``cancel`` is set (checked after every item). An exception from the iterator is
        re-raised here. Leaving the ``async for`` early sets ``cancel``.
        """
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[Any] = asyncio.Queue()
        ctx = contextvars.copy_context()
        put = items.put_nowait

        def job() -> None:
            if cancel.is_set():
                _call_soon(loop, put, _END)
                return
            it = None
            try:
                it = ctx.run(make)
                while not cancel.is_set():
                    item = ctx.run(next, it, _END)
                    if item is _END:
                        break
                    _call_soon(loop, put, item)
            except BaseException as e:  # noqa: BLE001 -- re-raised in the consumer
                _call_soon(loop, put, _Raised(e))
            finally:
                close = getattr(it, "close", None)
                if close is not None:
                    ctx.run(close)
                _call_soon(loop, put, _END)
        self._jobs.put(job)
        try:
            while True:
                item = await items.get()
                if item is _END:
                    return
                if isinstance(item, _Raised):
                    raise item.error
                yield item
        finally:
            cancel.set()


class Skipped(Exception):
    """A job did not run: its ``cancel`` event was set before its turn came."""


class _Raised:
    def __init__(self, error: BaseException) -> None:
        self.error = error


async def watch_disconnect(receive: Callable[[], Any], cancel: threading.Event) -> None:
    """Set ``cancel`` when the client disconnects (``receive`` is the request's ASGI receive; the body
    was read already, so only a disconnect can arrive)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            cancel.set()
            return


async def client_stayed(job: asyncio.Future, gone: asyncio.Task, timeout: float | None) -> bool:
    """Wait up to ``timeout`` s (``None``: no limit) for ``job``; False when the client left first
    (``gone``, the request's :func:`watch_disconnect` task, ended), and then ``job`` is cancelled and
    awaited (a :class:`Worker` job not started is skipped; a running generation stops at its next
    token or prompt chunk, as the watcher set its ``cancel``). Cancelling the caller cancels ``job``."""
    try:
        await asyncio.wait({job, gone}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        job.cancel()
        raise
    if job.done() or not gone.done():
        return True
    job.cancel()
    await asyncio.gather(job, return_exceptions=True)
    return False


async def drop_stream(first: asyncio.Future, chunks: AsyncIterator[Any]) -> None:
    """End a stream's chunks: cancel the wait for the first (``first``, ``anext(chunks)``) if it still
    runs, then close the iterator (a llama-server stream closes its upstream connection)."""
    if not first.done():
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
    await chunks.aclose()


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> None:
    """``loop.call_soon_threadsafe(fn, *args)`` from the worker thread; nothing to do when the loop has closed
    (the server is shutting down and nobody awaits the result), so the worker thread lives on."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # "Event loop is closed"
        pass


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
