"""A busy threaded process that forks at random moments: run by tests/test_busy_fork.py.

    python tests/busy_fork_program.py FORKS SEED

Six threads loop over ``pool.connection()`` with a short query while the main
thread forks FORKS times at random moments; each child does one of VARIANTS.
A real program, not a pytest process, so a child can end the way programs end
(a normal interpreter exit runs atexit; ``os._exit`` does not; SIGKILL).

Prints one JSON line (children, outcomes, the parent's counts and its backend
pids before and after), then waits for a line on stdin before closing its pool,
so the test can look at the server while the parent still holds its sessions.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import threading
import time

import forkpool

THREADS = 6
POOL_SIZE = 4
CHILD_DEADLINE = 20.0  # a child still alive this long after its fork is hung

VARIANTS = (
    "own_pool_exit",  # opens its own pool, queries, exits normally (atexit closes the pool)
    "own_pool_os_exit",  # opens its own pool, queries, os._exit: no close, the kernel drops the socket
    "own_pool_sigkill",  # opens its own pool, queries, then waits to be SIGKILLed
    "nothing_exit",  # touches nothing, exits normally
    "nothing_os_exit",  # touches nothing, os._exit
)


def backend_pids(pool: forkpool.Pool) -> list[int]:
    conns = [pool.getconn(timeout=10) for _ in range(POOL_SIZE)]
    try:
        found = []
        for conn in conns:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_backend_pid()")
                found.append(cur.fetchone()[0])
            conn.commit()
        return sorted(found)
    finally:
        for conn in conns:
            pool.putconn(conn)


def run_child(variant: str, report_fd: int) -> None:
    """Runs in the forked child; only the forking thread exists here."""
    if variant.startswith("own_pool"):
        pool = forkpool.get_pool()
        with pool.connection(timeout=10) as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            os.write(report_fd, f"{cur.fetchone()[0]}\n".encode())
    else:
        os.write(report_fd, b"-\n")
    os.close(report_fd)
    if variant.endswith("_os_exit"):
        os._exit(0)
    if variant.endswith("_sigkill"):
        while True:
            time.sleep(1)
    sys.exit(0)  # a normal exit: interpreter shutdown, atexit handlers


def main() -> int:
    forks, seed = int(sys.argv[1]), int(sys.argv[2])
    rng = random.Random(seed)
    forkpool.configure(min_size=POOL_SIZE, max_size=POOL_SIZE, timeout=10)
    pool = forkpool.get_pool()
    if not pool.wait(15):
        print(json.dumps({"error": f"pool not full: {pool.last_connect_error}"}), flush=True)
        return 1
    before = backend_pids(pool)

    stop = threading.Event()
    counts = {"ops": 0, "errors": 0}
    errors: list[str] = []
    count_lock = threading.Lock()

    def busy() -> None:
        while not stop.is_set():
            try:
                with pool.connection() as conn:
                    conn.cursor().execute("select pg_sleep(0.002)")
                ok = True
            except Exception as exc:  # noqa: BLE001 - counted and reported, the test asserts none
                ok = False
                errors.append(repr(exc)[:200])
            with count_lock:
                counts["ops" if ok else "errors"] += 1

    threads = [threading.Thread(target=busy, daemon=True) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)

    children = []
    for number in range(forks):
        time.sleep(rng.uniform(0.0, 0.02))
        variant = VARIANTS[number % len(VARIANTS)]
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(read_fd)
                run_child(variant, write_fd)
            except SystemExit:
                raise  # the normal exit: unwinds to the interpreter's own shutdown
            except BaseException:  # noqa: BLE001 - never fall back into the parent's loop
                os._exit(3)
        os.close(write_fd)
        children.append({"pid": pid, "variant": variant, "fd": read_fd, "forked_at": time.monotonic()})

    for child in children:
        child.update(_finish(child))
    stop.set()
    for thread in threads:
        thread.join(10)
    after = backend_pids(pool)
    print(
        json.dumps(
            {
                "parent": os.getpid(),
                "before": before,
                "after": after,
                "ops": counts["ops"],
                "errors": counts["errors"],
                "error_samples": errors[:5],
                "children": [{k: v for k, v in c.items() if k not in ("fd", "forked_at")} for c in children],
            }
        ),
        flush=True,
    )
    sys.stdin.readline()
    forkpool.close_all()
    return 0


def _finish(child: dict) -> dict:
    """Read the child's report, end a SIGKILL variant, reap it; a child past its deadline is hung."""
    deadline = child["forked_at"] + CHILD_DEADLINE
    report = _read_line(child["fd"], deadline)
    if child["variant"].endswith("_sigkill") and report:
        os.kill(child["pid"], signal.SIGKILL)
    while True:
        pid, status = os.waitpid(child["pid"], os.WNOHANG)
        if pid:
            return {"report": report, "hung": False, "status": os.waitstatus_to_exitcode(status)}
        if time.monotonic() > deadline:
            os.kill(child["pid"], signal.SIGKILL)
            os.waitpid(child["pid"], 0)
            return {"report": report, "hung": True, "status": None}
        time.sleep(0.01)


def _read_line(fd: int, deadline: float) -> str:
    import select

    data = b""
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 64)
        if not chunk:
            break
        data += chunk
    os.close(fd)
    return data.decode().strip()


if __name__ == "__main__":
    sys.exit(main())
