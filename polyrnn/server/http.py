"""How both servers (``polyrnn serve``, ``polyrnn label-studio``) run under uvicorn: with deadlines a slow
client cannot hold open.

uvicorn closes an idle keep-alive connection, but a client that sends a request's headers a byte at a time
(or never finishes them) holds its connection, and a worker's attention, for as long as it likes
(slowloris). :class:`DeadlineProtocol` closes any connection whose request headers are not complete
``HEADER_TIMEOUT`` seconds after it opened, or after its previous response; the body's deadline is the
:class:`~polyrnn.server.guard.Guard`'s (408).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT = 10.0  # seconds from connection (or the last response) to complete request headers
KEEP_ALIVE = 5  # seconds an idle keep-alive connection stays open


class DeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on request headers (see the module docstring)."""

    header_timeout = HEADER_TIMEOUT

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._arm()

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.header_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _waiting_for_headers(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _too_slow(self) -> None:
        self._deadline = None
        if self._waiting_for_headers() and not self.transport.is_closing():
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        super().data_received(data)
        if self.cycle is not cycle and not self._waiting_for_headers():
            self._disarm()  # a request's headers arrived: its handler (and the Guard) take it from here
        elif self._waiting_for_headers():
            self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._disarm()
        self._arm()  # the next request's headers get the same deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def config(app: Any, *, host: str, port: int) -> Any:
    """The uvicorn configuration both servers run with."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        http=DeadlineProtocol,
        timeout_keep_alive=KEEP_ALIVE,
        server_header=False,
    )


def serve(app: Any, *, host: str, port: int) -> None:
    """Serve ``app`` until interrupted."""
    import uvicorn

    uvicorn.Server(config(app, host=host, port=port)).run()


@contextmanager
def running(app: Any, *, timeout: float = 30.0) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 (a free port) in a background thread while the block runs; yields its base
    URL. For browser tests, benchmarks and the screenshot script."""
    import socket
    import threading
    import time

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(config(app, host="127.0.0.1", port=port))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"the server did not start on port {port}")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=5)
