"""The fault proxy on its own: each fault does what it says, against a real echo server and PostgreSQL.

Times are checked as lower bounds (a delay happened), as the jitter's spread and median (robust to a
busy machine, which only adds time), or as generous hang guards.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import psycopg2
import pytest

from harness.fault_proxy import FaultProxy
from harness.netfault import unavailable


class EchoServer:
    """Echoes every byte back, one thread per connection."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.ended: list[str] = []  # how each connection ended on the server's side: eof / reset
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
                self.ended.append("eof")
            except ConnectionResetError:
                self.ended.append("reset")
            except OSError:
                self.ended.append("error")


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.sock.close()


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", echo.port) as running:
        yield running


def client(proxy: FaultProxy, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection((proxy.host, proxy.port), timeout=timeout)


def round_trip(sock: socket.socket, payload: bytes = b"ping") -> float:
    started = time.monotonic()
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(65536)
        assert chunk, "closed mid-echo"
        got += chunk
    assert got == payload
    return time.monotonic() - started


def test_passes_data_both_ways_and_counts_connections(proxy):
    with client(proxy) as sock:
        round_trip(sock, b"x" * 200_000)
    assert len(proxy.counters.accepted_at) == 1


def test_latency_with_jitter_delays_every_round_trip(proxy):
    proxy.latency(200, jitter_ms=50)
    with client(proxy) as sock:
        trips = sorted(round_trip(sock) for _ in range(20))
    print("round trips with 200 +/- 50 ms:", [round(t, 3) for t in trips])
    assert trips[0] >= 0.149, trips  # 200 - 50 ms at least, each time
    # The jitter goes both ways: a trip under 195 ms cannot come from a fixed 200 ms delay (a busy
    # machine only adds time). 20 uniform draws all above it: ~1 run in 10^5.
    assert trips[0] < 0.195, trips
    # And it spreads: 20 draws over 100 ms within 40 ms of each other: ~1 run in 10^6.
    assert trips[-1] - trips[0] > 0.040, trips
    # Centred on 200 ms, not above it (e.g. the delay applied twice): the median, which a few
    # trips slowed by a busy machine cannot move past 250 ms.
    assert trips[len(trips) // 2] < 0.250, trips
    assert trips[-1] < 5  # hang guard
    proxy.latency(0)
    with client(proxy) as sock:
        assert round_trip(sock) < 0.149


def test_timeout_is_a_blackhole_that_holds_then_delivers(proxy):
    with client(proxy) as sock:
        round_trip(sock)
        proxy.timeout()
        sock.sendall(b"held")
        sock.settimeout(1.0)
        with pytest.raises(socket.timeout):  # never answered, never closed
            sock.recv(10)
        fresh = client(proxy, timeout=1.0)  # new connections are accepted, and hang too
        fresh.sendall(b"x")
        with pytest.raises(socket.timeout):
            fresh.recv(10)
        proxy.clear()
        sock.settimeout(10)
        assert sock.recv(10) == b"held"  # what was held flows, as TCP would retransmit it
        fresh.close()


def test_reset_peer_resets_connections_that_carry_data_and_spares_idle_ones(proxy, echo):
    with client(proxy) as busy, client(proxy) as idle:
        round_trip(busy)
        round_trip(idle)
        proxy.reset_peer()
        busy.sendall(b"query")
        with pytest.raises(ConnectionResetError):
            busy.recv(10)
        proxy.reset_peer(False)
        round_trip(idle)  # it sent nothing while the fault was on
    deadline = time.monotonic() + 5
    while "reset" not in echo.ended and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "reset" in echo.ended  # the server's side was reset too
    assert proxy.counters.resets == 1


def test_limit_data_closes_after_n_bytes(proxy):
    """Toxiproxy's limit_data: the link closes once n bytes went through it, both directions counted."""
    proxy.limit_data(10)
    with client(proxy) as sock:
        sock.sendall(b"012345")  # 6 bytes up, all delivered: the echo comes back
        got = b""
        while chunk := sock.recv(100):
            got += chunk
    assert got == b"0123"  # 6 up + 4 down = 10: the echo is cut at the limit, then the link closes
    assert proxy.counters.limited == 1


def test_down_refuses_and_resets_then_up_listens_on_the_same_port(proxy):
    port = proxy.port
    with client(proxy) as sock:
        round_trip(sock)
        proxy.down()
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            sock.sendall(b"after")
            if not sock.recv(10):
                raise ConnectionResetError("closed")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((proxy.host, port), timeout=2)
    proxy.up()
    assert proxy.port == port
    with client(proxy) as sock:
        round_trip(sock)


def test_in_front_of_postgresql(database_url):
    """A real server: queries pass, latency shows in a query's time, down fails fast."""
    from urllib.parse import urlsplit

    target = urlsplit(database_url)
    with FaultProxy(target.hostname or "127.0.0.1", target.port or 5432) as proxy:
        conn = psycopg2.connect(proxy.url(database_url), connect_timeout=5)
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
            proxy.latency(100)
            started = time.monotonic()
            cur.execute("SELECT 2")
            assert time.monotonic() - started >= 0.099
            proxy.clear()
            proxy.down()
            started = time.monotonic()
            with pytest.raises(psycopg2.OperationalError):
                cur.execute("SELECT 3")
            assert time.monotonic() - started < 5  # a reset, not a hang
        conn.close()
        with pytest.raises(psycopg2.OperationalError, match="refused"):
            psycopg2.connect(proxy.url(database_url), connect_timeout=5)


_KERNEL_DROP = """
import os, socket, time
from harness.netfault import PacketDrop, prepare_namespace
prepare_namespace()
srv = socket.socket(); srv.bind(("127.0.0.1", 25123)); srv.listen()
c = socket.create_connection(("127.0.0.1", 25123)); a, _ = srv.accept()
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 1500)
drop = PacketDrop(25123); drop.on()
started = time.monotonic(); c.sendall(b"q"); c.settimeout(30)
try:
    c.recv(1); print("answered")
except OSError as exc:
    print(type(exc).__name__, round(time.monotonic() - started, 2))
"""


def test_kernel_drop_trips_tcp_user_timeout_where_the_proxy_cannot():
    """The blackhole scenarios' tool: dropped packets end a socket after tcp_user_timeout (1.5 s here)."""
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    done = subprocess.run(
        ["unshare", "--net", "--", sys.executable, "-c", _KERNEL_DROP],
        capture_output=True,
        text=True,
        timeout=60,
        env={**__import__("os").environ, "FORKPOOL_NETNS": "1"},
    )
    print(done.stdout, done.stderr[-500:])
    kind, seconds = done.stdout.split()
    assert kind == "TimeoutError" and 1.4 <= float(seconds) < 20
