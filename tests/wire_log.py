"""A TCP relay in front of PostgreSQL that records every statement the clients send (tests only).

Exact where server counters are not: a simple query ('Q') or a statement parsed for the
extended protocol ('P') is recorded before it is forwarded, so once the client has the
answer to a statement, the log holds it. Both drivers' ``BEGIN``/``ROLLBACK`` go through here as
statements of their own.
"""

from __future__ import annotations

import socket
import struct
import threading
from typing import Self
from urllib.parse import urlsplit, urlunsplit

_SPECIAL_REQUESTS = (80877103, 80877104, 80877102)  # SSLRequest, GSSENCRequest, CancelRequest


class WireLog:
    """Listens on a free loopback port; ``url(server_url)`` points a DSN through it."""

    def __init__(self, upstream_url: str) -> None:
        parts = urlsplit(upstream_url)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._statements: list[str] = []
        self._sockets: list[socket.socket] = []
        self._closed = False

    def start(self) -> Self:
        threading.Thread(target=self._accept, daemon=True, name="wire-log").start()
        return self

    def url(self, server_url: str) -> str:
        parts = urlsplit(server_url)
        netloc = parts.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{self.port}"
        query = "&".join(p for p in (parts.query, "sslmode=disable", "gssencmode=disable") if p)
        return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host, query=query))

    def statements(self) -> list[str]:
        with self._lock:
            return list(self._statements)

    def clear(self) -> None:
        with self._lock:
            self._statements.clear()

    def stop(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                # shutdown() first: a relay thread blocked in recv() on this socket keeps it alive
                # past close() (Linux), with no FIN sent: the server would keep the session for good.
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                try:
                    sock.close()
                except OSError:
                    pass

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._upstream)
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, upstream: bool) -> None:
        buffer = b""
        started = False  # past the startup packet: every message has a type byte
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if upstream:
                    buffer += data
                    buffer, started = self._record(buffer, started)
                sink.sendall(data)  # recorded first: a client that has its answer finds its statement logged
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _record(self, buffer: bytes, started: bool) -> tuple[bytes, bool]:
        while True:
            if not started:
                if len(buffer) < 8:
                    return buffer, started
                length, code = struct.unpack("!ii", buffer[:8])
                if len(buffer) < length:
                    return buffer, started
                buffer = buffer[length:]
                started = code not in _SPECIAL_REQUESTS
                continue
            if len(buffer) < 5:
                return buffer, started
            kind, length = buffer[:1], struct.unpack("!i", buffer[1:5])[0]
            if len(buffer) < 1 + length:
                return buffer, started
            body = buffer[5 : 1 + length]
            buffer = buffer[1 + length :]
            if kind == b"Q":
                self._add(body.split(b"\0", 1)[0])
            elif kind == b"P":
                self._add(body.split(b"\0", 2)[1])  # statement name, then the query

    def _add(self, text: bytes) -> None:
        with self._lock:
            self._statements.append(text.decode(errors="replace").strip())
