#!/usr/bin/env python3
"""Set up and run forkpool on a fresh machine with nothing but Python 3.11+.

    python3 bootstrap.py demo      # the main job: `forkpool demo` on embedded services
    python3 bootstrap.py test      # the whole test suite
    python3 bootstrap.py forkpool ARGS...   # any forkpool command

Creates ./.venv and installs the library (shared/, the `forkpool` distribution,
with all its extras) and the suite (this directory, with its `dev` and
`embedded` extras) in one pip call, again only when a pyproject.toml changes,
then runs the command in it.

PgBouncer and MariaDB's server (Debian's and Ubuntu's `pgbouncer` and
`mariadb-server`: no pip wheel carries either) are the system packages: where
one is missing and this runs as root on a system with apt, `test` installs it
(FORKPOOL_NO_APT=1: never); elsewhere the command that installs it is printed,
and the tests that need it are skipped with that reason. The tests start their
own servers of both, never the ones a machine may already run.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("FORKPOOL_VENV", ROOT / ".venv"))
STAMP = VENV / ".forkpool-installed"
PROJECT_FILES = ("pyproject.toml", "shared/pyproject.toml")


def venv_bin(name: str) -> Path:
    return VENV / ("Scripts" if os.name == "nt" else "bin") / name


def ensure_venv() -> None:
    wanted = hashlib.sha256(b"".join((ROOT / p).read_bytes() for p in PROJECT_FILES)).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted and venv_bin("forkpool").exists():
        return
    if not venv_bin("python").exists():
        print(f"bootstrap: creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("bootstrap: installing forkpool (shared/) and the suite (first run only)", flush=True)
    pip = [str(venv_bin("python")), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run(pip + ["--upgrade", "pip"], check=True)
    # One call: pip takes the suite's `forkpool` requirement from ./shared, never from an index.
    subprocess.run(pip + ["-e", f"{ROOT / 'shared'}[all]", "-e", f"{ROOT}[dev,embedded]"], check=True)
    # Extras pip must compile, each in a step of its own that may fail: only the tests needing it
    # then skip, saying so. mysqlclient builds against MariaDB's client library, uWSGI with gcc.
    for extra, tests, needs in (("mysqlclient", "Django-on-MariaDB", "libmariadb-dev pkg-config"),
                                ("uwsgi", "uWSGI", "gcc python3-dev")):
        if subprocess.run(pip + ["-e", f"{ROOT}[{extra}]"], stderr=subprocess.DEVNULL).returncode != 0:
            print(f"bootstrap: {extra} did not build; the {tests} tests will be skipped. "
                  f"Install its build needs with: {install_command(needs)}", flush=True)
    STAMP.write_text(wanted)


# The system packages the tests need that no pip wheel carries: (what, binary to find, Debian package).
SYSTEM_PACKAGES = (("pgbouncer", ("pgbouncer", "/usr/sbin/pgbouncer"), "pgbouncer"),
                   ("MariaDB", ("mariadbd", "/usr/sbin/mariadbd", "mysqld", "/usr/sbin/mysqld"), "mariadb-server"),
                   # To build mysqlclient (the suite's `mysqlclient` extra) from source.
                   ("MariaDB's client headers", ("mariadb_config", "mysql_config"), "libmariadb-dev"),
                   ("pkg-config", ("pkg-config",), "pkg-config"))


def install_command(package: str) -> str:
    """The one command that installs `package` (harness/pgbouncer.py and harness/services.py say the same)."""
    return ("" if os.name == "posix" and os.geteuid() == 0 else "sudo ") + f"apt-get install -y {package}"


def pgbouncer_install() -> str:
    return install_command("pgbouncer")


def find_binary(names: tuple[str, ...]) -> str | None:
    # Debian puts servers in /usr/sbin, which a non-root PATH may lack.
    return next((found for name in names
                 if (found := name if name.startswith("/") and os.access(name, os.X_OK) else shutil.which(name))), None)


def find_pgbouncer() -> str | None:
    return find_binary(SYSTEM_PACKAGES[0][1])


def ensure_system_packages() -> None:
    """Install what is missing (root with apt); otherwise say how. Never fatal: the tests that need it skip."""
    missing = [(what, package) for what, binaries, package in SYSTEM_PACKAGES if not find_binary(binaries)]
    if os.environ.get("FORKPOOL_PGBOUNCER"):  # the user named their own PgBouncer
        missing = [(what, package) for what, package in missing if package != "pgbouncer"]
    if not missing:
        return
    packages = [package for _, package in missing]
    if os.environ.get("FORKPOOL_NO_APT") == "1" or os.name != "posix" or os.geteuid() != 0 \
            or not shutil.which("apt-get"):
        for what, package in missing:
            print(f"bootstrap: {what} is not installed; its tests will be skipped. Install it with: "
                  f"{install_command(package)}", flush=True)
        return
    print(f"bootstrap: installing {' and '.join(packages)} (apt-get, first run only)", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # A list made long ago may no longer name the current version: update first (a few seconds).
    steps = [["apt-get", "update", "-qq"],
             ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]]
    for step in steps:
        if subprocess.run(step, env=env, stdout=subprocess.DEVNULL).returncode != 0:
            print(f"bootstrap: `{' '.join(step)}` failed; the tests that need {' and '.join(packages)} will be "
                  f"skipped. Install with: {install_command(' '.join(packages))}", file=sys.stderr, flush=True)
            return
    if "pgbouncer" in packages:
        stop_system_pgbouncer()


def stop_system_pgbouncer() -> None:
    """The package may start its own service (port 6432) where policy allows: the harness starts its
    own PgBouncers on free ports, so the system one is stopped and kept from starting at boot."""
    for step in (["service", "pgbouncer", "stop"], ["update-rc.d", "pgbouncer", "disable"]):
        if shutil.which(step[0]):
            subprocess.run(step, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def xdist_args(rest: list[str]) -> list[str]:
    """Two pytest workers (FORKPOOL_TEST_WORKERS), unless the caller chose (-n, -p no:xdist).

    Most tests wait on real servers more than they compute: two workers halve the run on two
    cores. The modules that time whole deployments under load stay on one worker, one after
    another (tests/conftest.py, SERIAL_MODULES), so they never measure each other.
    """
    chosen = any(a == "-n" or a.startswith(("-n", "--numprocesses")) or a == "no:xdist" for a in rest)
    workers = os.environ.get("FORKPOOL_TEST_WORKERS", "2")
    return [] if chosen or workers in ("0", "1") else ["-n", workers, "--dist", "loadgroup"]


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    if sys.version_info < (3, 11):
        print(f"bootstrap: forkpool needs Python 3.11 or newer, this is {sys.version.split()[0]}", file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    if command == "test" or "--pgbouncer" in rest:  # demo, loadtest and up take --pgbouncer
        ensure_system_packages()  # first: mysqlclient builds against libmariadb-dev
    ensure_venv()
    if command == "test":
        args = [str(venv_bin("python")), "-m", "pytest", *xdist_args(rest), *rest]
    elif command == "demo":
        args = [str(venv_bin("forkpool")), "demo", *rest]
    elif command == "forkpool":
        args = [str(venv_bin("forkpool")), *rest]
    else:
        print(f"bootstrap: unknown command {command!r}; use demo, test or forkpool", file=sys.stderr)
        return 2
    os.chdir(ROOT)
    return subprocess.call(args)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
    except subprocess.CalledProcessError as exc:
        print(f"bootstrap: set-up failed: {' '.join(map(str, exc.cmd))} exited {exc.returncode}", file=sys.stderr)
        sys.exit(1)
