"""A TCP proxy on 127.0.0.1 that injects network faults between a client and a server.

It runs its own event loop in a thread, so that the faults it injects do not depend
on the test's loop. Modes: ``heal()`` (forward), ``delay(seconds)`` (add latency to
every chunk, each way), ``cut()`` (reset every open connection; new ones work),
``blackhole()`` (accept connections, forward nothing, answer nothing). Given an SSL
context it terminates TLS, so that clients can test ``rediss://`` against a server
built without TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from types import TracebackType

from asynclock._server import free_port


class FaultProxy:
    """Forward 127.0.0.1:``port`` to 127.0.0.1:``target``, with faults on demand."""

    def __init__(self, target: int, tls: ssl.SSLContext | None = None) -> None:
        self.target = target
        self._tls = tls
        self.port = free_port()
        self._latency = 0.0
        self._blackholed = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        """The URL that goes through the proxy (``rediss://`` with TLS)."""
        scheme = "redis" if self._tls is None else "rediss"
        return f"{scheme}://127.0.0.1:{self.port}/0"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", self.port, ssl=self._tls)
        )
        self._ready.set()
        self._loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", self.target
            )
        except OSError:
            writer.close()
            return
        self._writers.update((writer, upstream_writer))
        await asyncio.gather(
            self._pipe(reader, upstream_writer),
            self._pipe(upstream_reader, writer),
            return_exceptions=True,
        )
        for each in (writer, upstream_writer):
            self._writers.discard(each)
            each.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            if self._blackholed:
                continue  # swallowed: the peer waits for an answer that never comes
            if self._latency:
                await asyncio.sleep(self._latency)
            writer.write(data)
            await writer.drain()
        writer.close()

    def _call(self, function: object) -> None:
        done = threading.Event()

        def run() -> None:
            function()  # type: ignore[operator]
            done.set()

        self._loop.call_soon_threadsafe(run)
        done.wait(5)

    def _reset_all(self) -> None:
        for writer in list(self._writers):
            transport = writer.transport
            with contextlib.suppress(Exception):
                transport.abort()  # RST: the connection dies at once
        self._writers.clear()

    def delay(self, seconds: float) -> None:
        """Add ``seconds`` of latency to every chunk, each way."""
        self._latency = seconds

    def blackhole(self) -> None:
        """Forward nothing from now on, on open and new connections alike."""
        self._blackholed = True

    def cut(self) -> None:
        """Reset every open connection; new connections are forwarded."""
        self._call(self._reset_all)

    def heal(self) -> None:
        """Forward normally again; connections that lost data to a blackhole are reset."""
        was_blackholed = self._blackholed
        self._latency = 0.0
        self._blackholed = False
        if was_blackholed:
            self.cut()

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._call(self._reset_all)
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        future.result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _shutdown(self) -> None:
        """Stop accepting, and end every connection's task before the loop stops."""
        if self._server is not None:
            self._server.close()
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
