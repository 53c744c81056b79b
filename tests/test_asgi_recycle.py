"""The async tier's worker (web/asgi_worker.py): max_requests recycling under keep-alive load drops no request.

Real Gunicorn, real uvicorn workers, clients that keep their connections alive
and never retry: every request must get a response while workers leave at
max_requests, over and over.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from harness._procs import free_port
from tests.conftest import wait_for
from tests.server_support import Server, get, gunicorn_argv

pytest.importorskip("uvicorn_worker", reason="the async tier runs under Gunicorn's uvicorn worker (dev extra)")
import requests

ROOT = Path(__file__).resolve().parents[1]
APP = """
import os


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": str(os.getpid()).encode()})
"""
WORKERS = 2
MAX_REQUESTS = 25
RECYCLES = 8  # workers replaced at max_requests while the clients keep their connections busy
CLIENTS = 6


def keep_alive_load(url: str, server: Server, recycles: int) -> tuple[set[int], list[str], int]:
    """CLIENTS threads, one keep-alive session each, no retry, until `recycles` workers have been replaced."""
    first = set(server.children())
    pids: set[int] = set()
    errors: list[str] = []
    sent = [0]
    stop = threading.Event()
    lock = threading.Lock()

    def client() -> None:
        with requests.Session() as session:  # one connection, reused: requests retries nothing by default
            while not stop.is_set():
                try:
                    response = session.get(url, timeout=30)
                    pid = int(response.text) if response.status_code == 200 else 0
                    outcome = None if pid else f"HTTP {response.status_code}"
                except requests.RequestException as exc:
                    pid, outcome = 0, f"{type(exc).__name__}: {exc}"
                with lock:
                    sent[0] += 1
                    pids.add(pid) if pid else errors.append(outcome or "")

    threads = [threading.Thread(target=client, daemon=True) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        replaced = wait_for(lambda: len(pids - first - {0}) >= recycles, timeout=240)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert replaced, f"only {len(pids - first)} replacements answered; errors {errors[:5]}"
    return pids, errors, sent[0]


@pytest.mark.parametrize("worker_class", ["web.asgi_worker.DrainingUvicornWorker"])
def test_max_requests_recycling_drops_no_keep_alive_request(worker_class, tmp_path):
    (tmp_path / "drain_app.py").write_text(APP)
    port = free_port()
    options = ("--worker-class", worker_class, "--max-requests", str(MAX_REQUESTS), "--keep-alive", "2")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    server = Server(gunicorn_argv("drain_app:app", port, WORKERS, *options), tmp_path, env, tmp_path / "gunicorn.log")
    try:
        url = f"http://127.0.0.1:{port}/"
        server.wait_until(lambda: len(server.children()) == WORKERS and get(url)[0] == 200, "gunicorn ready")
        pids, errors, sent = keep_alive_load(url, server, RECYCLES)
    finally:
        server.stop()
    print(f"{worker_class}: {sent} requests, {len(pids)} worker pids answered, {len(errors)} dropped")
    assert errors == [], f"{len(errors)} of {sent} requests dropped: {errors[:5]}"
    assert server.log().count("Maximum request limit") >= RECYCLES
