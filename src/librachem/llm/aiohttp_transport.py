"""The aiohttp transport of :class:`~librachem.llm.openai_backend.OpenAIClient`:
``openai.DefaultAioHttpClient`` whose session writes request bodies eagerly on Python 3.11
(as aiohttp does from 3.12) and aborts a body not written within the timeout (see the
last points of :mod:`librachem.llm.openai_backend`'s docstring for the measurements)."""

from __future__ import annotations

import asyncio
import collections.abc
import functools
import logging
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)

FATAL_STATUS = frozenset({401, 403, 404})

T = TypeVar("T")


async def _value(value: T) -> T:
    return value


async def _raise(exc: BaseException) -> Any:
    raise exc


class _Started(collections.abc.Coroutine):  # type: ignore[type-arg]
    """A coroutine whose first step already ran and suspended on ``pending`` (what it yielded
    to its task), handed to a task as the coroutine itself.

    The task's first ``send`` gets ``pending`` (the task then waits on it, as if it had run the
    first step); later sends, throws and ``close`` go to the coroutine. A throw that comes
    before the task's first step (the task cancelled at once) cancels ``pending`` and is
    thrown into the coroutine at its suspension point, as for 3.12's eager task, so its
    ``except``/``finally`` run (aiohttp's ``write_bytes`` closes the connection there).
    """

    def __init__(self, coro: Coroutine[Any, Any, Any], pending: Any) -> None:
        self._coro = coro
        self._pending = pending
        self._handed = False

    def send(self, value: Any) -> Any:
        if not self._handed:
            self._handed = True
            if getattr(self._pending, "_asyncio_future_blocking", None) is False:
                self._pending._asyncio_future_blocking = True  # what the task checks for
            return self._pending
        return self._coro.send(value)

    def throw(self, *args: Any) -> Any:
        if not self._handed:
            self._handed = True
            cancel = getattr(self._pending, "cancel", None)
            if cancel is not None:
                cancel()
        return self._coro.throw(*args)

    def close(self) -> None:
        self._handed = True
        self._coro.close()

    # awaited directly (not through a task), it is its own iterator
    def __await__(self) -> _Started:
        return self

    def __iter__(self) -> _Started:
        return self

    def __next__(self) -> Any:
        return self.send(None)


def start_eagerly(coro: Coroutine[Any, Any, T]) -> Coroutine[Any, Any, T]:
    """Run ``coro``'s first step now and return a coroutine for the rest, for a task.

    Python 3.11's form of 3.12's ``asyncio.Task(..., eager_start=True)``: a coroutine that
    finishes without suspending (a small body written to a writable socket) has done all its
    work before the caller's next line; one that suspends continues in the task
    (:class:`_Started`); an exception raised in the first step is raised in the task,
    except ``KeyboardInterrupt`` / ``SystemExit``, raised at once.
    """
    try:
        pending = coro.send(None)
    except StopIteration as stop:
        return _value(stop.value)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - re-raised in the task, as 3.12 would
        return _raise(exc)
    if getattr(pending, "_asyncio_future_blocking", None):
        # as a task does on receiving a future (3.12's eager step): until the task takes it
        # over, another awaiter of the same future must not find it marked as held
        pending._asyncio_future_blocking = False
    return _Started(coro, pending)


async def _write_or_abort(coro: Coroutine[Any, Any, T], conn: Any, seconds: float) -> T:
    """Run aiohttp's body write; if it has not finished after ``seconds`` (a server that
    stopped reading), fail the request with ``ServerTimeoutError`` and abort the connection
    (see module docstring). No ``asyncio.timeout`` here: on 3.11 the first step runs in the
    sending task, which a task-bound timeout would cancel instead."""
    import aiohttp

    def expire() -> None:
        protocol = conn.protocol
        if protocol is not None:
            protocol.set_exception(aiohttp.ServerTimeoutError(
                f"request body not written within {seconds:g} s (write timeout)"))
        transport = conn.transport
        if transport is not None:
            transport.abort()

    handle = asyncio.get_running_loop().call_later(seconds, expire)
    try:
        return await coro
    finally:
        handle.cancel()


@functools.cache
def _body_request_class(write_timeout_s: float) -> type:
    import aiohttp

    eager = sys.version_info < (3, 12)  # from 3.12 aiohttp starts the writer task eagerly

    class _BodyRequest(aiohttp.ClientRequest):
        """``ClientRequest`` whose body write starts in the sending step and has a write
        timeout (see module docstring)."""

        def write_bytes(self, writer: Any, conn: Any, content_length: int | None = None) -> Any:
            coro = _write_or_abort(super().write_bytes(writer, conn, content_length), conn,
                                   write_timeout_s)
            return start_eagerly(coro) if eager else coro

    return _BodyRequest


def aiohttp_http_client(write_timeout_s: float) -> Any:
    """``openai.DefaultAioHttpClient()`` (the ``openai`` README's "With aiohttp") whose aiohttp
    session uses :class:`_BodyRequest`: eager body writes on Python 3.11 and a body-write
    timeout of ``write_timeout_s`` seconds (see module docstring).

    Everything else is the default client's: its ``_init_transport`` (the hook the vendored
    ``Httpx2AiohttpClient`` itself overrides) builds the same ``AiohttpTransport`` (limits,
    SSL context, environment proxies as before; proxied requests use the stock session), and
    the session is built as ``AiohttpTransport.get_client`` builds it (a ``TCPConnector`` with
    the connection limit, keep-alive expiry and SSL context) plus ``request_class``.
    """
    import aiohttp
    import openai

    request_class = _body_request_class(float(write_timeout_s))

    def session(transport: Any) -> aiohttp.ClientSession:
        limit = transport.limits.max_connections
        connector = aiohttp.TCPConnector(keepalive_timeout=transport.limits.keepalive_expiry,
                                         ssl=transport.ssl_context,
                                         **({"limit": limit} if limit is not None else {}))
        return aiohttp.ClientSession(connector=connector, request_class=request_class)

    class _Client(openai.DefaultAioHttpClient):  # type: ignore[misc, valid-type]
        def _init_transport(self, *args: Any, **kwargs: Any) -> Any:
            transport = super()._init_transport(*args, **kwargs)
            if getattr(transport, "client", ...) is None:  # the default AiohttpTransport
                transport.client = lambda: session(transport)
            return transport

    return _Client()
