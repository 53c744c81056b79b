"""The server hooks' part of the metrics: prometheus_client's multiprocess directory.

Needs prometheus_client (extra ``prometheus``) only when ``PROMETHEUS_MULTIPROC_DIR``
is set; without it every function here does nothing, so the Gunicorn and Celery
hooks work in a deployment without metrics.
"""

from __future__ import annotations

import glob
import os
import re

from .errors import import_extra

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_PID_IN_NAME = re.compile(r"_(\d+)\.db$")


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def prepare_directory() -> None:
    """At a master's start: create the directory, drop files of processes that no longer exist.

    A fresh run (the harness gives each run its own directory) starts empty; a
    restarted server keeps nothing of processes that are gone.
    """
    path = multiprocess_dir()
    if path is None:
        return
    os.makedirs(path, exist_ok=True)
    for pid in pids_with_files(path):
        if not pid_alive(pid):
            for name in glob.glob(os.path.join(path, f"*_{pid}.db")):
                os.remove(name)


def mark_dead(pid: int) -> None:
    """A process ended: its gauges go (counters stay, summed into the totals)."""
    if multiprocess_dir() is not None:
        multiprocess = import_extra("prometheus_client.multiprocess", "prometheus", MULTIPROC_ENV)
        multiprocess.mark_process_dead(pid)


def pids_with_files(path: str) -> set[int]:
    return {int(m.group(1)) for name in os.listdir(path) if (m := _PID_IN_NAME.search(name))}


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (a zombie counts: it is not reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
