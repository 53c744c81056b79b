"""A TCP proxy between the suite and a server whose faults are switched on and off at run time.

The vocabulary is Toxiproxy's, so its documentation describes what each fault does:

- ``latency(ms, jitter_ms)``: every chunk of data waits ``ms`` +/- ``jitter_ms`` before it is
  forwarded (downstream, server to client, by default: one round trip gains it once);
- ``timeout()``: a blackhole: connections are accepted and read, nothing is ever answered or
  forwarded, nothing is closed; what was held flows once the fault is cleared (as TCP would
  retransmit it);
- ``reset_peer()``: a connection that carries data while the fault is on is reset (RST) on both
  sides, as a middlebox killing connections does; idle ones are left alone;
- ``limit_data(n)``: a connection is closed once ``n`` bytes went through it;
- ``down()`` / ``up()``: the listener closes (new connections are refused) and every open one is
  reset; ``up()`` listens again on the same port.

Why not a package: pproxy (on PyPI, what psycopg's test suite drives) forwards and can be
stopped and started, which is ``down``; it has none of the other faults, and Toxiproxy is a Go
server with no wheel. One small asyncio proxy does all of them, in the harness's process.

What a proxy in user space cannot do: make the client's kernel see silence. The proxy's kernel
acknowledges every byte and every keepalive probe even while ``timeout()`` holds them, so TCP
keepalives and ``tcp_user_timeout`` never fire through it. A blackhole that tests those (the
``blackhole`` scenarios) drops packets in the kernel instead: harness/netfault.py.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Self
from urllib.parse import urlsplit, urlunsplit

from ._procs import free_port

CHUNK = 65536


@dataclass
class Toxics:
    latency_s: float = 0.0
    jitter_s: float = 0.0
    latency_stream: str = "downstream"  # server -> client (Toxiproxy's default stream), or "upstream"
    reset_peer: bool = False
    limit_bytes: int = 0  # 0: no limit


@dataclass
class ProxyCounters:
    """What went through the proxy, for the scenarios' figures."""

    accepted_at: list[float] = field(default_factory=list)  # monotonic time of every accepted connection
    resets: int = 0
    limited: int = 0
    open: int = 0


class FaultProxy:
    """Listens on 127.0.0.1:`port` (a free one by default) and forwards to `upstream`."""

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        host: str = "127.0.0.1",
        port: int | None = None,
        name: str = "proxy",
        server_keepalives: bool = False,
    ) -> None:
        """`server_keepalives`: clients' sockets get the server's keepalives and tcp_user_timeout
        (faults.SERVER_NETWORK_SETTINGS), so a client that went silent is cut off, and its
        server session ended, as the server itself would do without a proxy in between."""
        self.server_keepalives = server_keepalives
        self.upstream = (upstream_host, upstream_port)
        self.host, self.port, self.name = host, port or free_port(host), name
        self.toxics = Toxics()
        self.counters = ProxyCounters()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"forkpool-{name}", daemon=True)
        self._server: asyncio.Server | None = None
        self._flowing: asyncio.Event | None = None  # cleared while timeout() holds the data
        self._links: set[_Link] = set()

    # -- lifecycle (from any thread) -----------------------------------------------------------
    def start(self) -> Self:
        self._thread.start()
        self._call(self._init())
        self.up()
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self.down()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def url(self, server_url: str) -> str:
        """`server_url` (postgresql://, redis://) pointed at the proxy instead of the server."""
        parts = urlsplit(server_url)
        netloc = parts.netloc.rsplit("@", 1)
        hostport = f"{self.host}:{self.port}"
        return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{hostport}" if len(netloc) == 2 else hostport))

    # -- faults ------------------------------------------------------------------------------------
    def latency(self, ms: float, jitter_ms: float = 0.0, stream: str = "downstream") -> None:
        if stream not in ("downstream", "upstream"):
            raise ValueError(f"stream must be downstream or upstream, not {stream!r}")
        self.toxics.latency_s, self.toxics.jitter_s = ms / 1000.0, jitter_ms / 1000.0
        self.toxics.latency_stream = stream

    def timeout(self, on: bool = True) -> None:
        self._call(self._set_flowing(not on))

    def reset_peer(self, on: bool = True) -> None:
        self.toxics.reset_peer = on

    def limit_data(self, nbytes: int) -> None:
        self.toxics.limit_bytes = nbytes

    def down(self) -> None:
        self._call(self._down())

    def up(self) -> None:
        self._call(self._up())

    def clear(self) -> None:
        """Every fault off; held data flows."""
        self.toxics = Toxics()
        self.timeout(False)

    @property
    def is_up(self) -> bool:
        return self._server is not None

    def open_connections(self) -> int:
        return len(self._links)

    # -- the loop's side ------------------------------------------------------------------------------
    def _call(self, coro) -> None:  # type: ignore[no-untyped-def]
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _init(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()

    async def _set_flowing(self, flowing: bool) -> None:
        assert self._flowing is not None
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _up(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._accept, self.host, self.port, reuse_address=True)

    async def _down(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for link in list(self._links):
            link.reset()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.counters.accepted_at.append(time.monotonic())
        if self.server_keepalives:
            _server_keepalives(client_w)
        try:
            server_r, server_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            _abort(client_w)  # the server refuses: so does the proxy
            return
        link = _Link(self, client_w, server_w)
        self._links.add(link)
        self.counters.open = len(self._links)
        try:
            await asyncio.gather(
                link.pump(client_r, server_w, upstream=True), link.pump(server_r, client_w, upstream=False)
            )
        finally:
            self._links.discard(link)
            self.counters.open = len(self._links)
            link.close()


class _Link:
    """One client connection and its connection to the server."""

    def __init__(self, proxy: FaultProxy, client_w: asyncio.StreamWriter, server_w: asyncio.StreamWriter) -> None:
        self.proxy, self.client_w, self.server_w = proxy, client_w, server_w
        self.sent = 0
        self.done = False

    async def pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: bool) -> None:
        toxics_of = lambda: self.proxy.toxics  # noqa: E731 - read afresh: faults change under a live link
        flowing = self.proxy._flowing
        assert flowing is not None
        try:
            while not self.done:
                data = await reader.read(CHUNK)
                await flowing.wait()  # timeout(): held, never answered, never closed (a FIN is held too)
                if not data:
                    break
                toxics = toxics_of()
                if toxics.reset_peer:
                    self.proxy.counters.resets += 1
                    self.reset()
                    return
                if toxics.latency_s and upstream == (toxics.latency_stream == "upstream"):
                    delay = toxics.latency_s + random.uniform(-toxics.jitter_s, toxics.jitter_s)
                    await asyncio.sleep(max(delay, 0.0))
                if toxics.limit_bytes and self.sent + len(data) >= toxics.limit_bytes:
                    writer.write(data[: max(toxics.limit_bytes - self.sent, 0)])
                    self.proxy.counters.limited += 1
                    await _drain(writer)
                    self.close()
                    return
                self.sent += len(data)
                writer.write(data)
                await _drain(writer)
        except (ConnectionError, OSError):
            self.reset()
            return
        # One side closed cleanly: pass the close on, as the network would.
        if not self.done:
            try:
                writer.write_eof()
            except (OSError, RuntimeError):
                self.close()

    def reset(self) -> None:
        """RST both ways (SO_LINGER 0 then close): the peers see 'connection reset', not a clean end."""
        self.done = True
        _abort(self.client_w)
        _abort(self.server_w)

    def close(self) -> None:
        self.done = True
        for writer in (self.client_w, self.server_w):
            if not writer.is_closing():
                writer.close()


def _server_keepalives(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", 5), ("TCP_KEEPINTVL", 2), ("TCP_KEEPCNT", 3), ("TCP_USER_TIMEOUT", 10000)):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


def _abort(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


async def _drain(writer: asyncio.StreamWriter) -> None:
    try:
        await writer.drain()
    except (ConnectionError, OSError):
        raise ConnectionResetError from None
