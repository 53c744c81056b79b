"""The machine a benchmark ran on and the versions it measured: CPU, memory, load, Python,
the PostgreSQL server, the packages, and which shared/ source (commit, uncommitted files, hash)."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterable
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from harness._procs import kernel_file

REPO_ROOT = Path(__file__).resolve().parents[1]


def _cpu_model() -> str:
    for line in (kernel_file("cpuinfo") or "").splitlines():  # psutil has no CPU model name
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _mem_total() -> str | None:
    return f"{psutil.virtual_memory().total / 1024**3:.1f} GiB"


def _version(*dists: str) -> str | None:
    for dist in dists:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def _forkpool_version() -> str | None:
    """The forkpool imported (a stale forkpool.egg-info in the working directory can shadow its metadata)."""
    try:
        import forkpool
    except ImportError:
        return None
    return getattr(forkpool, "__version__", None) or _version("forkpool")


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
    return {
        "git_commit": _git("rev-parse", "HEAD"),
        # _git() strips the output, and with it the first line's leading status blank: split instead.
        "shared_dirty_files": [line.split(maxsplit=1)[-1] for line in dirty.splitlines()] if dirty else [],
        "shared_sha256": digest.hexdigest(),
    }


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
    return {
        "version": server_version,
        "banner": server_banner,
        "max_connections": max_connections,
        "server": "embedded (harness.services.EmbeddedPostgres)" if embedded else f"DATABASE_URL {redact_url(dsn)}",
    }


def pool_bench_packages() -> dict[str, str | None]:
    """pool_bench's peers and the libpq each links."""
    import psycopg
    import psycopg2

    return {
        "forkpool (ours)": _forkpool_version(),
        "psycopg2-binary": _version("psycopg2-binary", "psycopg2"),
        "psycopg2 libpq": _libpq(psycopg2.__libpq_version__),
        "psycopg": _version("psycopg"),
        "psycopg implementation": psycopg.pq.__impl__,
        "psycopg libpq": _libpq(psycopg.pq.version()),
        "psycopg-pool": _version("psycopg-pool", "psycopg_pool"),
        "sqlalchemy": _version("sqlalchemy", "SQLAlchemy"),
    }


def aio_bench_packages() -> dict[str, str | None]:
    """aio_bench's peers, the libpq psycopg links, and the event loop measured."""
    import asyncio

    import psycopg

    policy = type(asyncio.get_event_loop_policy())
    return {
        "forkpool (ours)": _forkpool_version(),
        "psycopg": _version("psycopg"),
        "psycopg implementation": psycopg.pq.__impl__,
        "psycopg libpq": _libpq(psycopg.pq.version()),
        "psycopg-pool": _version("psycopg-pool", "psycopg_pool"),
        "asyncpg": _version("asyncpg"),
        "event loop": f"asyncio ({policy.__module__}.{policy.__qualname__})",
    }


def _psycopg_libpq() -> str | None:
    try:
        import psycopg
    except ImportError:
        return None
    return _libpq(psycopg.pq.version())


def suite_packages() -> dict[str, str | None]:
    """What the suite benchmark's servers run on."""
    import psycopg2

    return {
        "forkpool (ours)": _forkpool_version(),
        "psycopg2-binary": _version("psycopg2-binary", "psycopg2"),
        "psycopg2 libpq": _libpq(psycopg2.__libpq_version__),
        "gunicorn": _version("gunicorn"),
        "celery": _version("celery"),
        "kombu": _version("kombu"),
        "billiard": _version("billiard"),
        "redis (client)": _version("redis"),
        # the asgi worker class: psycopg 3 and uvicorn's event loop and HTTP parser ("auto": uvloop and
        # httptools when installed, else asyncio and h11)
        "psycopg": _version("psycopg"),
        "psycopg libpq": _psycopg_libpq(),
        "uvicorn": _version("uvicorn"),
        "uvicorn-worker": _version("uvicorn-worker"),
        "uvicorn event loop": "uvloop " + str(_version("uvloop")) if _version("uvloop") else "asyncio",
        "uvicorn HTTP parser": (
            "httptools " + str(_version("httptools")) if _version("httptools") else f"h11 {_version('h11')}"
        ),
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
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "build": " ".join(platform.python_build()),
            "switch_interval_s": sys.getswitchinterval(),
        },
        "postgresql": server_info(dsn, embedded, app_name),
        "packages": packages,
        "source": source_state(),
    }


def load_average() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def machine_markdown(machine: dict[str, Any], extra_rows: Iterable[tuple[str, str]] = ()) -> list[str]:
    """The "## Machine" section: a two-column table, `extra_rows` after PostgreSQL."""
    load = " / ".join(
        ", ".join(f"{x:.2f}" for x in machine.get(key) or []) or "-"
        for key in ("load_average_at_start", "load_average_at_end")
    )
    lines = [
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        f"| CPU | {machine['cpu_model']} |",
        f"| cores | {machine['cpu_count']} ({machine['cpus_usable']} usable) |",
        f"| memory | {machine['memory']} |",
        f"| platform | {machine['platform']} |",
        f"| load average (1, 5, 15 min) at start / end | {load} |",
        f"| CPU use during the run | {cpu_use_text(machine.get('cpu_use'))} |",
        f"| Python | {machine['python']['version']} ({machine['python']['implementation']}) |",
        f"| PostgreSQL | {machine['postgresql']['version']}, {machine['postgresql']['server']} |",
    ]
    lines += [f"| {name} | {value} |" for name, value in extra_rows]
    for name, version in machine["packages"].items():
        lines.append(f"| {name} | {version} |")
    source = machine["source"]
    dirty = ", ".join(source["shared_dirty_files"]) or "none"
    lines += [
        f"| git commit | {source['git_commit']} |",
        f"| shared/ uncommitted changes | {dirty} |",
        f"| shared/forkpool/*.py sha256 | {source['shared_sha256'][:16]} |",
    ]
    return lines


# -- how busy the machine was during a run ----------------------------------------------------------------------


def _cpu_times() -> list[float] | None:
    """All CPUs' times: user nice system idle iowait irq softirq steal (seconds; None where not all are kept)."""
    times = psutil.cpu_times()
    fields = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    if not all(hasattr(times, name) for name in fields):
        return None
    return [getattr(times, name) for name in fields]


def _process_cpu(pid: int, reaped: bool = False) -> tuple[int, float] | None:
    """(parent pid, user + system CPU seconds) of a live process; with `reaped`, plus those of its
    children that exited and were waited for."""
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            times = proc.cpu_times()
            return proc.ppid(), times.user + times.system + (
                times.children_user + times.children_system if reaped else 0.0
            )
    except psutil.Error:
        return None


def postmaster_pid(dsn: str) -> int | None:
    """The local PostgreSQL server's main process (the parent of a backend), or None if not on this machine."""
    import psycopg2

    conn = psycopg2.connect(dsn, application_name="bench:probe")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            backend = cur.fetchone()[0]
        found = _process_cpu(backend)
    finally:
        conn.close()
    return found[0] if found else None


def _server_cpu(postmaster: int | None, reaped: bool = False) -> dict[int, float]:
    if postmaster is None:
        return {}
    try:
        pids = [postmaster, *(child.pid for child in psutil.Process(postmaster).children())]
    except psutil.NoSuchProcess:
        return {}
    found = {}
    for pid in pids:
        info = _process_cpu(pid, reaped and pid == postmaster)
        if info:
            found[pid] = info[1]
    return found


def _own_cpu(times: Any, reaped: bool) -> float:
    return times.user + times.system + (times.children_user + times.children_system if reaped else 0.0)


class CpuMeter:
    """How busy the machine's CPUs were between start and result(), and whose work it was: this
    process, the benchmark's PostgreSQL server (postmaster and its live children; backends that
    exited before the end are not counted) and everything else (other people's work).

    With `reaped` (suite_bench: its servers and load generator are its child processes, and
    connect-per-request ends a backend per request): this process also counts its children that
    exited and were waited for (and theirs), and the server its backends that exited; the
    processes in `helpers` (still running at the end, e.g. its Redis) count as this benchmark's."""

    def __init__(self, postmaster: int | None = None, reaped: bool = False, helpers: Iterable[int] = ()) -> None:
        self.postmaster, self.reaped, self.helpers = postmaster, reaped, [p for p in helpers if p]
        self._stat, self._self = _cpu_times(), _own_cpu(os.times(), reaped) + self._helpers_cpu()
        self._server = _server_cpu(postmaster, reaped)
        self._began = time.monotonic()

    def _helpers_cpu(self) -> float:
        return sum(found[1] for pid in self.helpers if (found := _process_cpu(pid)))

    def result(self) -> dict[str, Any] | None:
        stat, server = _cpu_times(), _server_cpu(self.postmaster, self.reaped)
        mine = _own_cpu(os.times(), self.reaped) + self._helpers_cpu()
        if stat is None or self._stat is None:
            return None
        seconds = time.monotonic() - self._began
        delta = [b - a for a, b in zip(self._stat, stat, strict=False)]
        total = sum(delta) or 1
        capacity = seconds * (os.cpu_count() or 1)  # CPU seconds the machine had
        busy = (total - delta[3] - delta[4]) / total  # all but idle and iowait
        own = (mine - self._self) / capacity
        served = (
            sum(cpu - self._server.get(pid, 0.0) for pid, cpu in server.items()) / capacity if self.postmaster else None
        )
        return {
            "seconds": round(seconds, 1),
            "cpus": os.cpu_count(),
            "machine_busy_pct": round(100 * busy, 1),
            "steal_pct": round(100 * delta[7] / total, 1),
            "this_process_pct": round(100 * own, 1),
            "server_pct": None if served is None else round(100 * served, 1),
            "others_pct": round(100 * max(busy - own - (served or 0.0), 0.0), 1),
        }


def cpu_use_text(use: dict[str, Any] | None) -> str:
    if not use:
        return "-"
    server = "" if use["server_pct"] is None else f", its PostgreSQL {use['server_pct']} %"
    return (
        f"{use['machine_busy_pct']} % busy over {use['seconds']} s on {use['cpus']} CPUs: "
        f"this benchmark {use['this_process_pct']} %{server}, everything else {use['others_pct']} % "
        f"(steal {use['steal_pct']} %)"
    )


def run_context_line(
    load_start: list[float] | None, use: dict[str, Any] | None, versions: str = "", quick: bool = False
) -> str:
    """A text result's context: load at start and end, CPU use, versions, the commit and shared/ changes."""
    source = source_state()
    loads = " / ".join(", ".join(f"{x:.2f}" for x in found or []) for found in (load_start, load_average()))
    return (
        f"Load average (1, 5, 15 min) at start / end: {loads}; CPU: {cpu_use_text(use)}; "
        f"Python {sys.version.split()[0]}{', ' + versions if versions else ''}; commit {source['git_commit']}, "
        f"shared/ dirty: {', '.join(source['shared_dirty_files']) or 'none'}"
        + ("; --quick: figures meaningless" if quick else "")
    )


def save_text_result(out_dir: Path, name: str, started: datetime, text: str, label: str = "results") -> Path:
    """Print a benchmark's text result and write it to ``<out_dir>/<name>_<UTC start>.txt``."""
    print(text)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}_{started:%Y-%m-%dT%H%M%SZ}.txt"
    path.write_text(text)
    print(f"{label}: {path}")
    return path
