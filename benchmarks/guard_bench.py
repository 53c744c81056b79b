"""The regression guard's figures as pyperf benchmarks, on the forkpool found under --library.

Run by ``python -m benchmarks.guard`` once per commit, benchmark and round (--only, in pyperf's
worker mode: the process runs the loops itself), never by hand. Each benchmark is one contender in one
scenario, named ``scenario/contender``; a value is the time of ``inner_loops`` operations, so
pyperf reports the cost of one operation. With more than one thread or task, the fairness of
each value (fewest operations any thread or task completed / mean) goes to --side as a JSON line.

Only forkpool's public API is used (``configure``, ``Pool``, ``AsyncPool``), so that any commit's
forkpool can be measured by the same code; the peers are the same in every run and serve as the
A/A control of the comparison between commits. A contender a commit's forkpool cannot be (``ours_asyncpg``
before driver="asyncpg" existed) is left out of that commit's run, and noted.

The asyncio contenders: ``ours`` (AsyncPool on psycopg 3), ``ours_asyncpg`` (AsyncPool on asyncpg),
``asyncpg`` (asyncpg's own pool) and, with 1 task, ``asyncpg_bare``: one asyncpg connection, no pool,
the floor. ours_asyncpg / asyncpg_bare is our pool's overhead; ours / ours_asyncpg the drivers' difference.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

POOL_SIZE = 5
THREADS = 8
TASKS = 50
APP_NAME = "guard"


@dataclass(frozen=True)
class Bench:
    scenario: str
    contender: str
    ops: int  # operations per value in a full run
    quick_ops: int

    @property
    def name(self) -> str:
        return f"{self.scenario}/{self.contender}"


# Order matters only for reading: the guard runs them in a shuffled order each round.
BENCHES: list[Bench] = [
    Bench("checkout_1t", "ours", 20_000, 300),
    Bench("checkout_1t", "psycopg2", 20_000, 300),
    Bench("checkout_1t", "psycopg_pool", 10_000, 300),
    Bench("checkout_1t", "ours_psycopg", 20_000, 300),
    Bench("select1_8t", "ours", 1_000, 200),
    Bench("select1_8t", "psycopg2", 1_000, 200),
    Bench("aio_txn_1task", "ours", 200, 50),
    Bench("aio_txn_1task", "ours_asyncpg", 200, 50),
    Bench("aio_txn_1task", "asyncpg", 200, 50),
    Bench("aio_txn_1task", "asyncpg_bare", 200, 50),
    Bench("aio_txn_50tasks", "ours", 600, 200),
    Bench("aio_txn_50tasks", "ours_asyncpg", 600, 200),
    Bench("aio_txn_50tasks", "asyncpg", 600, 200),
    Bench("autocommit_1t", "ours", 600, 100),
    Bench("autocommit_1t", "psycopg2", 600, 100),
]


# -- the contenders, opened on first use in the worker that measures them ---------------------------


class Setup:
    """Everything a worker opens, once, and closes at exit."""

    def __init__(self, dsn: str, library: str | None, note: Callable[[dict[str, Any]], None]) -> None:
        self.dsn = dsn
        self.library = library
        self.note = note  # a fact about this run for the report (which forkpool, what a pool lends)
        self._sync: dict[str, tuple[Callable[[], Any], Callable[[Any], None]]] = {}
        self._aio: dict[str, Any] = {}
        self._closers: list[Callable[[], None]] = []
        self.loop: asyncio.AbstractEventLoop | None = None

    def forkpool(self) -> Any:
        """The forkpool under test: the one in --library, checked (an installed one must not stand in)."""
        import forkpool

        if self.library and not os.path.realpath(forkpool.__file__).startswith(os.path.realpath(self.library)):
            raise SystemExit(f"guard_bench: forkpool came from {forkpool.__file__}, not from {self.library}")
        self.note({"forkpool": os.path.dirname(forkpool.__file__)})
        return forkpool

    def supports(self, contender: str) -> bool:
        """False for a contender this commit's forkpool cannot be: its run leaves it out (and notes it)."""
        if contender != "ours_asyncpg":
            return True
        forkpool = self.forkpool()
        try:
            forkpool.configure("guard-aio-asyncpg", dsn=self.dsn, driver="asyncpg")
        except forkpool.ConfigError:
            self.note({"ours_asyncpg": "not in this forkpool"})
            return False
        return True

    def _ours(self, name: str, **options: Any) -> Any:
        forkpool = self.forkpool()
        settings = forkpool.configure(name, dsn=self.dsn, min_size=POOL_SIZE, max_size=POOL_SIZE, **options)
        pool = forkpool.Pool(settings, name)
        pool.open(wait=True)
        self._closers.append(pool.close)
        return pool

    def sync(self, contender: str) -> tuple[Callable[[], Any], Callable[[Any], None]]:
        if contender not in self._sync:
            self._sync[contender] = self._open_sync(contender)
        return self._sync[contender]

    def _open_sync(self, contender: str) -> tuple[Callable[[], Any], Callable[[Any], None]]:
        if contender == "ours":
            pool = self._ours("guard", driver="psycopg2")
            return pool.getconn, pool.putconn
        if contender == "ours_psycopg":
            pool = self._ours("guard-psycopg", driver="psycopg")
            return pool.getconn, pool.putconn
        if contender == "ours_autocommit":
            # The default pool, as a user configures it from the environment: a forkpool that does not
            # know DB_POOL_AUTOCOMMIT lends connections in transaction mode (BEGIN ... ROLLBACK per checkout).
            os.environ["DB_POOL_AUTOCOMMIT"] = "on"
            pool = self._ours("default", driver="psycopg2")
            conn = pool.getconn()
            self.note({"autocommit_pool_lends_autocommit": bool(conn.autocommit)})
            pool.putconn(conn)
            return pool.getconn, pool.putconn
        if contender in ("psycopg2", "psycopg2_autocommit"):
            import psycopg2.pool

            p2 = psycopg2.pool.ThreadedConnectionPool(
                POOL_SIZE, POOL_SIZE, self.dsn, application_name=f"{APP_NAME}:psycopg2"
            )
            self._closers.append(p2.closeall)
            # It raises PoolError when exhausted; the semaphore makes threads wait instead (as pool_bench).
            slots = threading.BoundedSemaphore(POOL_SIZE)
            get, put = p2.getconn, p2.putconn
            autocommit = contender == "psycopg2_autocommit"

            def getconn() -> Any:
                slots.acquire()
                conn = get()
                if autocommit:
                    conn.autocommit = True  # the pool keeps no session state: set per checkout
                return conn

            def putconn(conn: Any) -> None:
                put(conn)
                slots.release()

            return getconn, putconn
        if contender == "psycopg_pool":
            import psycopg_pool

            p3 = psycopg_pool.ConnectionPool(
                self.dsn,
                min_size=POOL_SIZE,
                max_size=POOL_SIZE,
                open=True,
                kwargs={"application_name": f"{APP_NAME}:psycopg_pool"},
            )
            p3.wait(timeout=30)
            self._closers.append(p3.close)
            return p3.getconn, p3.putconn
        raise ValueError(contender)

    async def aio(self, contender: str) -> Any:
        if contender not in self._aio:
            self._aio[contender] = await self._open_aio(contender)
        return self._aio[contender]

    async def _open_aio(self, contender: str) -> Any:
        if contender == "ours":
            forkpool = self.forkpool()
            name = "guard-aio"
            settings = forkpool.configure(name, dsn=self.dsn, min_size=POOL_SIZE, max_size=POOL_SIZE, driver="psycopg")
            pool = forkpool.AsyncPool(settings, name)
            if not await pool.open(wait=True, timeout=30):
                raise RuntimeError(f"{pool!r} did not fill in 30 s")
            self._closers.append(lambda: self._run(pool.close()))
            return _AioPool(pool.getconn, pool.putconn, _psycopg_transaction)
        if contender == "ours_asyncpg":
            forkpool = self.forkpool()
            name = "guard-aio-asyncpg"
            settings = forkpool.configure(name, dsn=self.dsn, min_size=POOL_SIZE, max_size=POOL_SIZE, driver="asyncpg")
            pool = forkpool.AsyncPool(settings, name)
            if not await pool.open(wait=True, timeout=30):
                raise RuntimeError(f"{pool!r} did not fill in 30 s")
            self._closers.append(lambda: self._run(pool.close()))
            return _AioPool(pool.getconn, pool.putconn, _asyncpg_transaction)
        if contender == "asyncpg_bare":
            import asyncpg

            conn = await asyncpg.connect(self.dsn, server_settings={"application_name": f"{APP_NAME}:asyncpg_bare"})
            self._closers.append(lambda: self._run(conn.close()))

            async def lend() -> Any:
                return conn

            async def take_back(_: Any) -> None:
                pass

            return _AioPool(lend, take_back, _asyncpg_transaction)  # one task at a time: no pool needed
        if contender == "asyncpg":
            import asyncpg

            pool = await asyncpg.create_pool(
                self.dsn,
                min_size=POOL_SIZE,
                max_size=POOL_SIZE,
                server_settings={"application_name": f"{APP_NAME}:asyncpg"},
            )
            self._closers.append(lambda: self._run(pool.close()))
            return _AioPool(pool.acquire, pool.release, _asyncpg_transaction)
        raise ValueError(contender)

    def _run(self, coro: Awaitable[Any]) -> Any:
        assert self.loop is not None
        return self.loop.run_until_complete(coro)

    def event_loop(self) -> asyncio.AbstractEventLoop:
        if self.loop is None:
            self.loop = asyncio.new_event_loop()
        return self.loop

    def close(self) -> None:
        for close in reversed(self._closers):
            try:
                close()
            except Exception as exc:  # noqa: BLE001 - closing at exit: say so, keep closing the rest
                print(f"guard_bench: closing: {exc}", file=sys.stderr)
        if self.loop is not None:
            self.loop.close()


@dataclass
class _AioPool:
    getconn: Callable[[], Awaitable[Any]]
    putconn: Callable[[Any], Awaitable[Any]]
    transaction: Callable[[Any], Awaitable[None]]


async def _psycopg_transaction(conn: Any) -> None:
    cur = await conn.execute("SELECT 1")  # not in autocommit: psycopg sends BEGIN first
    await cur.fetchone()
    await conn.commit()


async def _asyncpg_transaction(conn: Any) -> None:
    async with conn.transaction():  # BEGIN ... COMMIT, the statements psycopg sends
        await conn.fetchval("SELECT 1")


# -- the timed loops ---------------------------------------------------------------------------------


def _checkout(get: Callable[[], Any], put: Callable[[Any], None]) -> Callable[[], None]:
    def op() -> None:
        put(get())

    return op


def _select1(get: Callable[[], Any], put: Callable[[Any], None], commit: bool = True) -> Callable[[], None]:
    def op() -> None:
        conn = get()
        try:
            cur = conn.cursor()
            cur.execute("SELECT 1")
            cur.fetchone()
            cur.close()
            if commit:
                conn.commit()  # every contender returns an idle connection: no pool pays a rollback
        finally:
            put(conn)

    return op


def _one_thread(op: Callable[[], None], n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        op()
    return time.perf_counter() - started


def _threads(op: Callable[[], None], n: int, threads: int) -> tuple[float, list[int]]:
    """`n` operations shared by `threads` threads started before the clock; (seconds, operations per thread)."""
    counter = itertools.count()  # next() on it is atomic under the GIL
    done = [0] * threads
    go = threading.Event()

    def worker(index: int) -> None:
        go.wait()
        mine = 0
        while next(counter) < n:
            op()
            mine += 1
        done[index] = mine

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    started = time.perf_counter()
    go.set()
    for thread in pool:
        thread.join()
    return time.perf_counter() - started, done


async def _tasks(op: Callable[[], Awaitable[None]], n: int, tasks: int) -> tuple[float, list[int]]:
    counter = itertools.count()
    done = [0] * tasks
    go = asyncio.Event()

    async def worker(index: int) -> None:
        await go.wait()
        mine = 0
        while next(counter) < n:
            await op()
            mine += 1
        done[index] = mine

    running = [asyncio.ensure_future(worker(i)) for i in range(tasks)]
    await asyncio.sleep(0)  # every task reaches go.wait() before the clock starts
    started = time.perf_counter()
    go.set()
    await asyncio.gather(*running)
    return time.perf_counter() - started, done


def fairness(done: list[int]) -> float:
    mean = sum(done) / len(done)
    return min(done) / mean if mean else 0.0


class Timed:
    """One benchmark's time function for pyperf: runs loops x inner operations, returns seconds."""

    def __init__(self, bench: Bench, setup: Setup, side: str | None, label: str) -> None:
        self.bench, self.setup, self.side, self.label = bench, setup, side, label

    def _record(self, done: list[int]) -> None:
        if self.side:
            line = {"label": self.label, "bench": self.bench.name, "fairness": fairness(done), "ops": done}
            with open(self.side, "a") as out:
                out.write(json.dumps(line) + "\n")

    def __call__(self, loops: int, inner: int) -> float:
        n = loops * inner
        scenario, contender = self.bench.scenario, self.bench.contender
        if scenario == "checkout_1t":
            return _one_thread(_checkout(*self.setup.sync(contender)), n)
        if scenario == "select1_8t":
            elapsed, done = _threads(_select1(*self.setup.sync(contender)), n, THREADS)
            self._record(done)
            return elapsed
        if scenario == "autocommit_1t":
            which = "ours_autocommit" if contender == "ours" else "psycopg2_autocommit"
            return _one_thread(_select1(*self.setup.sync(which), commit=False), n)
        loop = self.setup.event_loop()
        pool = loop.run_until_complete(self.setup.aio(contender))

        async def txn() -> None:
            conn = await pool.getconn()
            try:
                await pool.transaction(conn)
            finally:
                await pool.putconn(conn)

        if scenario == "aio_txn_1task":

            async def one() -> float:
                started = time.perf_counter()
                for _ in range(n):
                    await txn()
                return time.perf_counter() - started

            return loop.run_until_complete(one())
        elapsed, done = loop.run_until_complete(_tasks(txn, n, TASKS))
        self._record(done)
        return elapsed


def main() -> None:
    import pyperf

    def pass_on(cmd: list[str], args: Any) -> None:
        cmd.extend(["--dsn", args.dsn, "--label", args.label])
        if args.library:
            cmd.extend(["--library", args.library])
        if args.side:
            cmd.extend(["--side", args.side])
        if args.quick:
            cmd.append("--quick")
        if args.only:
            cmd.extend(["--only", args.only])

    runner = pyperf.Runner(program_args=("-m", "benchmarks.guard_bench"), add_cmdline_args=pass_on)
    parser = runner.argparser
    parser.add_argument("--dsn", required=True, help="the server every commit's run uses")
    parser.add_argument("--library", help="directory holding the forkpool package to measure (first on sys.path)")
    parser.add_argument("--label", default="", help="which commit this is (base, head), for --side")
    parser.add_argument("--side", help="append each multi-thread value's fairness here (JSON lines)")
    parser.add_argument("--quick", action="store_true", help="a few hundred operations per value")
    parser.add_argument("--only", metavar="NAME", help="run only this benchmark (scenario/contender)")
    args = runner.parse_args()
    if args.library:
        sys.path.insert(0, args.library)

    def note(fact: dict[str, Any]) -> None:
        if args.side:
            with open(args.side, "a") as out:
                out.write(json.dumps({"label": args.label, **fact}) + "\n")

    setup = Setup(args.dsn, args.library, note)
    runner.metadata["guard_label"] = args.label
    try:
        for bench in BENCHES:
            if args.only and bench.name != args.only:
                continue
            if not setup.supports(bench.contender):
                continue
            inner = bench.quick_ops if args.quick else bench.ops
            timed = Timed(bench, setup, args.side, args.label)
            runner.bench_time_func(bench.name, timed, inner, inner_loops=inner)
    finally:
        setup.close()


if __name__ == "__main__":
    main()
