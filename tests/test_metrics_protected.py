"""Protected pools in the Prometheus gauges, beside forkpool's own (a protected SQLAlchemy engine on PostgreSQL).

Values are read after known checkouts; the exporter thread's rounds are waited for on what the
metrics say, never on a clock.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("sqlalchemy", reason="a protected engine needs SQLAlchemy (forkpool[sqlalchemy])")
pytest.importorskip("prometheus_client", reason="metrics need forkpool[prometheus]")
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine

import forkpool
import forkpool.identity
from forkpool import _protect as protection
from forkpool import identity
from tests.conftest import wait_for

GAUGES = ("size", "idle", "in_use", "waiting", "max_size")


def gauges(text: str, integration: str, pid: int | None = None, role: str | None = None) -> dict[str, dict[str, float]]:
    """{pool label: {gauge: value}} of one integration's pools (of one process, in multiprocess mode; of one
    role: a process keeps the series of the roles earlier tests gave it)."""
    found: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        key = family.name.removeprefix("forkpool_pool_")
        if key not in GAUGES:
            continue
        for sample in family.samples:
            labels = sample.labels
            if labels.get("integration") != integration or (pid is not None and labels.get("pid") != str(pid)):
                continue
            if role is not None and labels.get("role") != role:
                continue
            found.setdefault(labels["pool"], {})[key] = sample.value
    return found


@pytest.fixture
def forget_protected():
    yield
    protection.unprotect_all()


def sqlalchemy_url(database_url: str) -> str:
    return database_url.replace("postgresql://", "postgresql+psycopg2://", 1)


def test_a_protected_engine_is_in_the_same_gauges_as_forkpools_own_pool(database_url, forget_protected):
    from forkpool import metrics

    if metrics.multiprocess_dir() is not None:
        pytest.skip("PROMETHEUS_MULTIPROC_DIR is set for the test process: its files are not this test's")
    forkpool.configure(min_size=1, max_size=1)
    assert forkpool.get_pool().open(wait=True, timeout=10)
    engine = forkpool.protect(create_engine(sqlalchemy_url(database_url), pool_size=3, max_overflow=2))
    try:
        held = [engine.raw_connection() for _ in range(3)]
        held.pop().close()  # back to SQLAlchemy's pool: 3 open, 2 in use
        metrics.export_process()
        text = metrics.render_metrics().decode()
        [(label, protected)] = gauges(text, "sqlalchemy", role=identity.process_role()).items()
        assert label.startswith("engine postgresql+psycopg2://") and "@" in label
        assert protected == {"size": 3, "idle": 1, "in_use": 2, "max_size": 5}  # SQLAlchemy has no waiting count
        own = gauges(text, "forkpool", role=identity.process_role())
        assert own["default"]["size"] == 1 and own["default"]["max_size"] == 1
        backends = {
            s.labels["backend"]
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "forkpool_pool_size" and s.labels.get("pool") == label
        }
        assert backends == {"postgresql"}

        for conn in held:
            conn.close()
        engine.dispose()
        metrics.export_process()
        after = gauges(metrics.render_metrics().decode(), "sqlalchemy")[label]
        assert after == {"size": 0, "idle": 0, "in_use": 0, "max_size": 5}
    finally:
        engine.dispose()


CHILD = textwrap.dedent("""
    import sys
    from sqlalchemy import create_engine
    import forkpool
    from forkpool import metrics

    forkpool.identity.set_process_role("web")
    engine = forkpool.protect(create_engine(sys.argv[1], pool_size=2, max_overflow=0))
    metrics.start_exporter(interval=0.05)
    held = [engine.raw_connection() for _ in range(2)]
    print("held", flush=True)
    sys.stdin.readline()
    for conn in held:
        conn.close()
    print("returned", flush=True)
    sys.stdin.readline()
""")


def test_a_workers_exporter_thread_publishes_its_protected_pools_to_the_shared_directory(database_url, tmp_path):
    """Multiprocess mode, as in a Gunicorn deployment: the process that holds the engine publishes without
    being scraped; any process reads the directory."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, sqlalchemy_url(database_url)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "held"

        def seen() -> dict[str, float]:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=str(tmp_path))
            found = gauges(generate_latest(registry).decode(), "sqlalchemy", pid=child.pid)
            return next(iter(found.values()), {})

        assert wait_for(lambda: seen() == {"size": 2, "idle": 0, "in_use": 2, "max_size": 2}, 30), seen()
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "returned"
        assert wait_for(lambda: seen() == {"size": 2, "idle": 2, "in_use": 0, "max_size": 2}, 30), seen()
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.wait(30) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_gunicorn_workers_publish_their_protected_engines(servers, database_url, suite_id, tmp_path):
    """The real path: forkpool.gunicorn's post_fork starts each worker's exporter; every live worker's
    eagerly opened engine (pool_size 2) shows in the shared directory, the master (which holds none) not."""
    from tests.protect_support import APPS, start_gunicorn_app

    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = {**os.environ, "PROTECT": "1", "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    server, _ = start_gunicorn_app(
        servers, APPS / "sqla", "gunicorn_protected.conf.py", "web:app", env, tmp_path / "gunicorn.log", workers=2
    )

    def by_pid() -> dict[int, dict[str, float]]:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(metrics_dir))
        found: dict[int, dict[str, float]] = {}
        for family in text_string_to_metric_families(generate_latest(registry).decode()):
            key = family.name.removeprefix("forkpool_pool_")
            for sample in family.samples:
                labels = sample.labels
                if key in GAUGES and labels.get("integration") == "sqlalchemy" and labels.get("role") == "web":
                    found.setdefault(int(labels["pid"]), {})[key] = sample.value
        return found

    def every_worker_full() -> bool:
        seen, live = by_pid(), set(server.children())
        expected = {"size": 2, "idle": 2, "in_use": 0, "max_size": 2}
        return live.issubset(seen) and all(seen[pid] == expected for pid in live)

    assert wait_for(every_worker_full, 30), (by_pid(), server.children())
    assert server.pid not in by_pid()
