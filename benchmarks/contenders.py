"""The pools under test in pool_bench, each opened and filled to POOL_SIZE before the first round.

ours               forkpool.Pool (min = max = 5) on psycopg2, getconn()/putconn(), default settings
ours_nocheck       diagnostic: ours with its pre-use health check removed
ours_check_always  diagnostic: ours with check_idle=0 (a round trip before every checkout)
ours_psycopg       forkpool.Pool on psycopg 3 (driver="psycopg"), default settings: the
                   reference psycopg_pool is paired against (same driver on both sides)
ours_psycopg_nocheck  diagnostic: ours_psycopg with its pre-use health check removed
psycopg2           ThreadedConnectionPool(5, 5) behind a BoundedSemaphore(5)
psycopg_pool       psycopg 3's ConnectionPool (and psycopg_pool_check, with check=)
sqlalchemy         QueuePool over psycopg2 (and sqlalchemy_pre_ping)
connect            psycopg2.connect() + close() per operation
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

POOL_SIZE = 5
APP_NAME = "pool_bench"


@dataclass
class Contender:
    key: str
    family: str  # ours | psycopg2 | psycopg_pool | sqlalchemy | connect
    config: str
    getconn: Callable[[], Any]
    putconn: Callable[[Any], None]
    pool: Any = None  # ours: the Pool, for its stats


def _sqlalchemy_engine(dsn: str, **kwargs: Any) -> Any:
    import psycopg2
    import sqlalchemy

    connect_args = {"application_name": f"{APP_NAME}:sqlalchemy"}
    for scheme in ("postgresql://", "postgres://"):
        if dsn.startswith(scheme):
            url = "postgresql+psycopg2://" + dsn[len(scheme) :]
            return sqlalchemy.create_engine(url, connect_args=connect_args, **kwargs)
    # A key=value DSN: let SQLAlchemy's pool call psycopg2 with it as it is.
    return sqlalchemy.create_engine(
        "postgresql+psycopg2://", creator=lambda: psycopg2.connect(dsn, **connect_args), **kwargs
    )


def build_contenders(dsn: str, stack: ExitStack) -> dict[str, Contender]:
    """Open every pool (filled to 5) before the first round; closed by `stack`."""
    import psycopg2
    import psycopg2.pool
    import psycopg_pool

    import forkpool
    from forkpool.settings import build_settings

    found: dict[str, Contender] = {}

    def ours(key: str, name: str, config: str, cls: type = forkpool.Pool, **extra: Any) -> None:
        extra.setdefault("driver", "psycopg2")  # what "" picks when both are installed, said explicitly
        pool = cls(build_settings(dsn=dsn, min_size=POOL_SIZE, max_size=POOL_SIZE, **extra), name)
        stack.callback(pool.close)
        pool.open(wait=True)
        found[key] = Contender(key, "ours", config, pool.getconn, pool.putconn, pool=pool)

    ours("ours", "bench", "forkpool.Pool on psycopg2, default settings (check_idle 5 s + idle socket poll)")
    nocheck = _no_check_pool_class(forkpool.Pool)
    if nocheck is not None:
        ours("ours_nocheck", "bench-nocheck", "forkpool.Pool with its pre-use check removed (diagnostic)", nocheck)
    ours(
        "ours_check_always",
        "bench-check-always",
        "forkpool.Pool, check_idle=0: a round trip per checkout (diagnostic)",
        check_idle=0,
    )
    # The same pool on psycopg 3: psycopg_pool's figures are paired against this one (same driver).
    ours(
        "ours_psycopg",
        "bench-psycopg",
        'forkpool.Pool on psycopg 3 (driver="psycopg"), default settings',
        driver="psycopg",
    )
    if nocheck is not None:
        ours(
            "ours_psycopg_nocheck",
            "bench-psycopg-nocheck",
            "forkpool.Pool on psycopg 3 with its pre-use check removed (diagnostic)",
            nocheck,
            driver="psycopg",
        )

    # psycopg2's pool raises PoolError when exhausted; the semaphore makes threads wait instead.
    p2 = psycopg2.pool.ThreadedConnectionPool(POOL_SIZE, POOL_SIZE, dsn, application_name=f"{APP_NAME}:psycopg2")
    stack.callback(p2.closeall)
    slots = threading.BoundedSemaphore(POOL_SIZE)
    p2_get, p2_put = p2.getconn, p2.putconn

    def psycopg2_getconn() -> Any:
        slots.acquire()
        try:
            return p2_get()
        except BaseException:
            slots.release()
            raise

    def psycopg2_putconn(conn: Any) -> None:
        p2_put(conn)
        slots.release()

    found["psycopg2"] = Contender(
        "psycopg2", "psycopg2", "ThreadedConnectionPool(5, 5) + BoundedSemaphore(5)", psycopg2_getconn, psycopg2_putconn
    )

    def psycopg3(key: str, config: str, **extra: Any) -> None:
        pool = psycopg_pool.ConnectionPool(
            dsn,
            min_size=POOL_SIZE,
            max_size=POOL_SIZE,
            open=True,
            name=key,
            kwargs={"application_name": f"{APP_NAME}:{key}"},
            **extra,
        )
        stack.callback(pool.close)
        pool.wait(timeout=30)
        found[key] = Contender(key, "psycopg_pool", config, pool.getconn, pool.putconn)

    psycopg3("psycopg_pool", "ConnectionPool(min_size=5, max_size=5)")
    psycopg3(
        "psycopg_pool_check",
        "ConnectionPool(..., check=ConnectionPool.check_connection)",
        check=psycopg_pool.ConnectionPool.check_connection,
    )

    def alchemy(key: str, config: str, **extra: Any) -> None:
        engine = _sqlalchemy_engine(dsn, pool_size=POOL_SIZE, max_overflow=0, **extra)
        stack.callback(engine.dispose)
        warm = [engine.raw_connection() for _ in range(POOL_SIZE)]  # QueuePool connects lazily
        for conn in warm:
            conn.close()
        found[key] = Contender(key, "sqlalchemy", config, engine.raw_connection, _close)

    alchemy("sqlalchemy", "create_engine(pool_size=5, max_overflow=0).raw_connection()")
    alchemy("sqlalchemy_pre_ping", "create_engine(..., pool_pre_ping=True).raw_connection()", pool_pre_ping=True)

    connect_kwargs = {"application_name": f"{APP_NAME}:connect"}
    found["connect"] = Contender(
        "connect",
        "connect",
        "psycopg2.connect() + close() per operation",
        lambda: psycopg2.connect(dsn, **connect_kwargs),
        _close,
    )
    return found


def _close(conn: Any) -> None:
    conn.close()


def _no_check_pool_class(pool_class: type) -> type | None:
    """ours without its pre-use health check: the "off" side of the on/off overhead."""
    if not callable(getattr(pool_class, "_usable", None)):
        return None  # the pool changed shape: the diagnostic is reported missing, not faked

    class NoCheckPool(pool_class):  # type: ignore[misc, valid-type]
        def _usable(self, entry: Any) -> bool:
            return True

    return NoCheckPool
