"""The async tier's Gunicorn worker: ``uvicorn_worker.UvicornWorker`` whose graceful stop drops no request.

uvicorn's ``Server.shutdown()`` (0.55; the same since 0.2x) closes every
connection that has no request in progress at once, in the loop iteration that
stops listening. On a keep-alive connection the client may be sending its next
request at that moment: the request arrives on a socket that is being closed,
the kernel answers with a reset and the client sees ``Connection reset by peer``
(or ``RemoteDisconnected``) for a request no process ever read (uvicorn
discussion #2315; PR #3124 covers the same race for a connection accepted just
before the stop). Every ``max_requests`` recycle, and every SIGTERM, rolls that
dice once per idle connection; a load generator that never retries counts each
loss as a dropped request.

``DrainingH11Protocol`` stops differently: a connection with no request in
progress stays open; the next request it brings is served with
``Connection: close`` (the client then knows not to reuse it) and the
connection closes after that response; one that brings none closes when
uvicorn's keep-alive timer fires (Gunicorn's ``keepalive``, 2 s by default),
which is the same close an idle connection gets without a recycle. A request in
progress is answered with ``Connection: close`` too when its response has not
started (uvicorn only closes after it, leaving a client that already reuses the
connection to race the close). The stop therefore takes at most the keep-alive
timeout longer; the listening socket is closed at once, so new connections go
to the other workers.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn_worker import UvicornWorker

CLOSE_HEADER = (b"connection", b"close")


class DrainingH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, but shutdown never closes a connection a client may be sending on."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.draining = False

    def shutdown(self) -> None:
        self.draining = True
        if self.transport.is_closing():
            return
        self._last_response()
        idle = self.cycle is None or self.cycle.response_complete
        if idle and self.timeout_keep_alive_task is None:
            # Idle: the keep-alive timer bounds how long it stays open; a connection that never sent
            # a byte has none armed yet, and uvicorn waits for every connection before it exits.
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    def handle_events(self) -> None:
        super().handle_events()
        if self.draining:
            self._last_response()  # a request that arrived while draining: its answer closes the connection

    def _last_response(self) -> None:
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            return
        cycle.keep_alive = False
        if not cycle.response_started and CLOSE_HEADER not in cycle.default_headers:
            # Said in the response, so the client does not reuse a connection about to close.
            cycle.default_headers = [*cycle.default_headers, CLOSE_HEADER]


class DrainingUvicornWorker(UvicornWorker):
    """``uvicorn_worker.UvicornWorker`` with ``DrainingH11Protocol``: recycling and SIGTERM drop no request."""

    CONFIG_KWARGS: dict[str, Any] = {"loop": "auto", "http": DrainingH11Protocol}
