"""forkpool.protect(async_engine) for SQLAlchemy's AsyncEngine on asyncpg and psycopg, in-process.

Unprotected, a forked child that uses its parent's AsyncEngine talks through
the parent's sessions or fails. Protected, the child gets its own sessions
(named by its identity), the parent's survive the child, and a master's
release ends the sessions (in their loop, or on the socket when it is gone)
and leaves the engine usable. The Gunicorn runs are in
tests/test_protect_asgi_servers.py.
"""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("sqlalchemy.ext.asyncio", reason="SQLAlchemy is not installed")
pytest.importorskip("greenlet", reason="SQLAlchemy's asyncio extension needs greenlet")
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

import forkpool
from forkpool import _protect as protection
from forkpool import identity
from tests.conftest import wait_for
from tests.protect_support import in_child

DRIVERS = ["asyncpg", "psycopg"]


@pytest.fixture
def forget_protected():
    yield
    protection.unprotect_all()


def _engine(database_url: str, driver: str):
    pytest.importorskip(driver, reason=f"{driver} is not installed")
    url = make_url(database_url).set(drivername=f"postgresql+{driver}")
    return create_async_engine(url, pool_size=2, max_overflow=0, pool_timeout=5)


async def _backends(engine) -> set[int]:
    async with engine.connect() as one, engine.connect() as two:
        return {(await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one() for conn in (one, two)}


async def _name(engine) -> str:
    async with engine.connect() as conn:
        return (await conn.execute(text("SELECT current_setting('application_name')"))).scalar_one()


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("protected", [False, True], ids=["unprotected", "protected"])
def test_a_child_gets_its_own_sessions_and_the_parent_keeps_its_own(
    protected, driver, database_url, suite_id, sessions, forget_protected
):
    engine = _engine(database_url, driver)
    if protected:
        assert forkpool.protect(engine) is engine
    loop = asyncio.new_event_loop()
    parent = loop.run_until_complete(_backends(engine))

    def child() -> str:
        async def work() -> str:
            mine = await _backends(engine)
            return f"{','.join(map(str, sorted(mine)))} {await _name(engine)}"

        return asyncio.run(asyncio.wait_for(work(), 15))

    report = in_child(child)
    if not protected:
        assert report.startswith("error") or {int(b) for b in report.split()[0].split(",")} & parent, report
        loop.run_until_complete(engine.dispose())
        loop.close()
        return
    backends, name = report.split()
    mine = {int(b) for b in backends.split(",")}
    assert len(mine) == 2 and not mine & parent, (report, parent)
    assert name.startswith(f"{suite_id}:") and name != identity.application_name()
    assert loop.run_until_complete(_backends(engine)) == parent  # the parent's sessions survived the child
    assert wait_for(lambda: sorted(b for _, b in sessions()) == sorted(parent), timeout=10), sessions()
    protection.release_all()  # in the connections' idle loop: AsyncEngine.dispose()
    assert wait_for(lambda: sessions() == [], timeout=10), sessions()
    assert len(loop.run_until_complete(_backends(engine))) == 2  # usable again
    loop.run_until_complete(engine.dispose())
    loop.close()


@pytest.mark.parametrize("driver", DRIVERS)
def test_release_after_the_loop_is_gone_ends_the_sessions(driver, database_url, sessions, forget_protected):
    engine = forkpool.protect(_engine(database_url, driver))
    asyncio.run(_backends(engine))  # work at import under preload_app: asyncio.run's loop is gone after
    assert len(sessions()) == 2
    protection.release_all()  # Gunicorn's pre_fork
    assert wait_for(lambda: sessions() == [], timeout=10), sessions()
    assert len(asyncio.run(_backends(engine))) == 2  # a new loop: the engine connects again
    protection.release_all()
    assert wait_for(lambda: sessions() == [], timeout=10), sessions()


def test_report_is_the_sync_engines_pool(database_url, forget_protected):
    engine = forkpool.protect(_engine(database_url, "asyncpg"))
    asyncio.run(_backends(engine))
    [(name, report)] = protection.reports()
    assert name == "sqlalchemy_async" and report.max_size == 2 and report.source == "pool_size 2 + max_overflow 0"
    assert report.open == 2 and report.in_use == 0 and report.backend == "postgresql"
    protection.release_all()
