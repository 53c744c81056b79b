"""The machine a benchmark ran on and the versions it measured: CPU, memory, load, Python,
the PostgreSQL server, the packages, and which shared/ source (commit, uncommitted files, hash)."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

REPO_ROOT = Path(__file__).resolve().parents[1]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total() -> str | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError):
        pass
    return None


def _version(*dists: str) -> str | None:
    for dist in dists:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def _libpq(number: int) -> str:
    major, minor = divmod(number, 10000)
    return f"{major}.{minor}" if major >= 10 else f"{major}.{minor // 100}.{minor % 100}"


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def source_state() -> dict[str, Any]:
    """Which library (shared/forkpool) was measured: the tree moves, so its commit, dirty files and a content hash."""
    digest = hashlib.sha256()
    for path in sorted((REPO_ROOT / "shared" / "forkpool").glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    dirty = _git("status", "--porcelain", "--", "shared")
    return {"git_commit": _git("rev-parse", "HEAD"),
            "shared_dirty_files": [line[3:] for line in dirty.splitlines()] if dirty else [],
            "shared_sha256": digest.hexdigest()}


def server_info(dsn: str, embedded: bool, app_name: str) -> dict[str, Any]:
    """The PostgreSQL server: version, banner, max_connections, and which server it is."""
    import psycopg2

    from harness.services import redact_url

    conn = psycopg2.connect(dsn, application_name=f"{app_name}:probe")
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW server_version")
            server_version = cur.fetchone()[0]
            cur.execute("SELECT version()")
            server_banner = cur.fetchone()[0]
            cur.execute("SHOW max_connections")
            max_connections = int(cur.fetchone()[0])
    finally:
        conn.close()
    return {"version": server_version, "banner": server_banner, "max_connections": max_connections,
            "server": "embedded (harness.services.EmbeddedPostgres)" if embedded
            else f"DATABASE_URL {redact_url(dsn)}"}


def pool_bench_packages() -> dict[str, str | None]:
    """pool_bench's peers and the libpq each links."""
    import psycopg
    import psycopg2

    return {
        "forkpool (ours)": _version("forkpool"),
        "psycopg2-binary": _version("psycopg2-binary", "psycopg2"),
        "psycopg2 libpq": _libpq(psycopg2.__libpq_version__),
        "psycopg": _version("psycopg"),
        "psycopg implementation": psycopg.pq.__impl__,
        "psycopg libpq": _libpq(psycopg.pq.version()),
        "psycopg-pool": _version("psycopg-pool", "psycopg_pool"),
        "sqlalchemy": _version("sqlalchemy", "SQLAlchemy"),
    }


def suite_packages() -> dict[str, str | None]:
    """What the suite benchmark's servers run on."""
    import psycopg2

    return {
        "forkpool (ours)": _version("forkpool"),
        "psycopg2-binary": _version("psycopg2-binary", "psycopg2"),
        "psycopg2 libpq": _libpq(psycopg2.__libpq_version__),
        "gunicorn": _version("gunicorn"),
        "celery": _version("celery"),
        "kombu": _version("kombu"),
        "billiard": _version("billiard"),
        "redis (client)": _version("redis"),
    }


def machine_info(dsn: str, embedded: bool, app_name: str, packages: dict[str, str | None]) -> dict[str, Any]:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "memory": _mem_total(),
        "platform": platform.platform(),
        "load_average_at_start": load_average(),
        "python": {"version": platform.python_version(), "implementation": platform.python_implementation(),
                   "build": " ".join(platform.python_build()), "switch_interval_s": sys.getswitchinterval()},
        "postgresql": server_info(dsn, embedded, app_name),
        "packages": packages,
        "source": source_state(),
    }


def load_average() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def machine_markdown(machine: dict[str, Any], extra_rows: Iterable[tuple[str, str]] = ()) -> list[str]:
    """The "## Machine" section: a two-column table, `extra_rows` after PostgreSQL."""
    load = " / ".join(", ".join(f"{x:.2f}" for x in machine.get(key) or []) or "-"
                      for key in ("load_average_at_start", "load_average_at_end"))
    lines = ["## Machine", "", "| | |", "|---|---|",
             f"| CPU | {machine['cpu_model']} |",
             f"| cores | {machine['cpu_count']} ({machine['cpus_usable']} usable) |",
             f"| memory | {machine['memory']} |",
             f"| platform | {machine['platform']} |",
             f"| load average (1, 5, 15 min) at start / end | {load} |",
             f"| Python | {machine['python']['version']} ({machine['python']['implementation']}) |",
             f"| PostgreSQL | {machine['postgresql']['version']}, {machine['postgresql']['server']} |"]
    lines += [f"| {name} | {value} |" for name, value in extra_rows]
    for name, version in machine["packages"].items():
        lines.append(f"| {name} | {version} |")
    source = machine["source"]
    dirty = ", ".join(source["shared_dirty_files"]) or "none"
    lines += [f"| git commit | {source['git_commit']} |",
              f"| shared/ uncommitted changes | {dirty} |",
              f"| shared/forkpool/*.py sha256 | {source['shared_sha256'][:16]} |"]
    return lines
