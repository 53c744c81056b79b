#!/usr/bin/env python3
"""Set up and run forkpool on a fresh machine with nothing but Python 3.11+.

    python3 bootstrap.py demo      # the main job: `forkpool demo` on embedded services
    python3 bootstrap.py test      # lint and types, the whole test suite, then the library's tests on 3.12 / 3.13
    python3 bootstrap.py forkpool ARGS...   # any forkpool command

Creates ./.venv and installs the library (shared/, the `forkpool` distribution,
with all its extras) and the suite (this directory, with its `dev` and
`embedded` extras) in one pip call, again only when a pyproject.toml changes,
then runs the command in it.

`test` first runs the static checks (`ruff check .`, `ruff format --check .`,
`mypy`: the library, strict; configured in pyproject.toml; `mkdocs build --strict`:
the docs site, mkdocs.yml), one line each, then
pytest whatever they found: a lint failure never hides a test result, and the
command exits with the worst code of all (FORKPOOL_CHECKS=0: skip the checks).

`test` with no test named also runs the library's own tests (those that need no
suite: pool, asyncio pool, per-process, fork) on each other Python it finds
(3.12, 3.13: pyenv's, or python3.X on PATH), each in a small venv of its own
(./.venv-3.12, ./.venv-3.13: the library with its extras, pytest), the fork
tests under -W error::DeprecationWarning. FORKPOOL_MATRIX=0: skip it.

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
import threading
import time
import venv
from pathlib import Path
from typing import TextIO

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
    for extra, tests, needs in (
        ("mysqlclient", "Django-on-MariaDB", "libmariadb-dev pkg-config"),
        ("uwsgi", "uWSGI", "gcc python3-dev"),
    ):
        if subprocess.run(pip + ["-e", f"{ROOT}[{extra}]"], stderr=subprocess.DEVNULL).returncode != 0:
            print(
                f"bootstrap: {extra} did not build; the {tests} tests will be skipped. "
                f"Install its build needs with: {install_command(needs)}",
                flush=True,
            )
    STAMP.write_text(wanted)


# The system packages the tests need that no pip wheel carries: (what, binary to find, Debian package).
SYSTEM_PACKAGES = (
    ("pgbouncer", ("pgbouncer", "/usr/sbin/pgbouncer"), "pgbouncer"),
    ("MariaDB", ("mariadbd", "/usr/sbin/mariadbd", "mysqld", "/usr/sbin/mysqld"), "mariadb-server"),
    # To build mysqlclient (the suite's `mysqlclient` extra) from source.
    ("MariaDB's client headers", ("mariadb_config", "mysql_config"), "libmariadb-dev"),
    ("pkg-config", ("pkg-config",), "pkg-config"),
)


def install_command(package: str) -> str:
    """The one command that installs `package` (harness/pgbouncer.py and harness/services.py say the same)."""
    return ("" if os.name == "posix" and os.geteuid() == 0 else "sudo ") + f"apt-get install -y {package}"


def pgbouncer_install() -> str:
    return install_command("pgbouncer")


def find_binary(names: tuple[str, ...]) -> str | None:
    # Debian puts servers in /usr/sbin, which a non-root PATH may lack.
    return next(
        (
            found
            for name in names
            if (found := name if name.startswith("/") and os.access(name, os.X_OK) else shutil.which(name))
        ),
        None,
    )


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
    if (
        os.environ.get("FORKPOOL_NO_APT") == "1"
        or os.name != "posix"
        or os.geteuid() != 0
        or not shutil.which("apt-get")
    ):
        for what, package in missing:
            print(
                f"bootstrap: {what} is not installed; its tests will be skipped. Install it with: "
                f"{install_command(package)}",
                flush=True,
            )
        return
    print(f"bootstrap: installing {' and '.join(packages)} (apt-get, first run only)", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # A list made long ago may no longer name the current version: update first (a few seconds).
    steps = [["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]]
    for step in steps:
        if subprocess.run(step, env=env, stdout=subprocess.DEVNULL).returncode != 0:
            print(
                f"bootstrap: `{' '.join(step)}` failed; the tests that need {' and '.join(packages)} will be "
                f"skipped. Install with: {install_command(' '.join(packages))}",
                file=sys.stderr,
                flush=True,
            )
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


# -- the library on the other Pythons it supports (shared/pyproject.toml's classifiers) ----------

MATRIX_PYTHONS = ("3.12", "3.13")
MATRIX_TESTS = (
    "tests/test_pool.py",
    "tests/test_aio_pool.py",
    "tests/test_aio_pool_upkeep.py",
    "tests/test_aio_pool_asyncpg.py",
    "tests/test_manager.py",
    "tests/test_recovery.py",
)
# Forks: any threaded-fork DeprecationWarning (Python 3.12+) is an error. The one ignored is the
# reload test's own import trick (importlib, not a fork).
MATRIX_FORK_TESTS = ("tests/test_fork.py", "tests/test_per_process.py", "tests/test_fork_quiet.py")
MATRIX_WARNINGS = ("-W", "error::DeprecationWarning", "-W", "ignore:__package__ != __spec__.parent:DeprecationWarning")
MATRIX_PACKAGES = ("pytest>=8.0", "pytest-timeout>=2.3", "hypothesis>=6.0", "gevent>=24.2")


def matrix_pythons() -> list[tuple[str, Path]]:
    """(version, interpreter) for each of MATRIX_PYTHONS found here, other than the venv's own."""
    own = subprocess.run(
        [str(venv_bin("python")), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    found = []
    for version in MATRIX_PYTHONS:
        if version == own:
            continue
        candidates = sorted(
            pyenv.glob(f"{version}.*/bin/python"),
            key=lambda p: tuple(int(x) for x in p.parts[-3].split(".") if x.isdigit()),
        )
        on_path = shutil.which(f"python{version}")
        chosen = candidates[-1] if candidates else Path(on_path) if on_path else None
        if chosen is not None:
            found.append((version, chosen))
    return found


def ensure_matrix_venv(version: str, python: Path, log: TextIO) -> Path:
    """./.venv-X.Y with the library (editable, all extras) and what its own tests need."""
    where = ROOT / f".venv-{version}"
    stamp = where / ".forkpool-matrix"
    wanted = hashlib.sha256(
        (ROOT / "shared/pyproject.toml").read_bytes() + str(python).encode() + " ".join(MATRIX_PACKAGES).encode()
    ).hexdigest()
    bin_python = where / "bin" / "python"
    if stamp.exists() and stamp.read_text() == wanted and bin_python.exists():
        return bin_python
    sys.stdout.write(f"bootstrap: creating {where} ({python})\n")  # one write: two Pythons set up at once
    sys.stdout.flush()
    subprocess.run([str(python), "-m", "venv", "--clear", str(where)], check=True, stdout=log, stderr=log)
    pip = [str(bin_python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run(pip + ["-e", f"{ROOT / 'shared'}[all]", *MATRIX_PACKAGES], check=True, stdout=log, stderr=log)
    stamp.write_text(wanted)
    return bin_python


def run_on(version: str, python: Path, results: dict[str, tuple[int, str]]) -> None:
    """Set up and run the library's tests on one Python; its output goes to reports/python-X.Y.log."""
    started = time.monotonic()
    log_path = ROOT / "reports" / f"python-{version}.log"
    log_path.parent.mkdir(exist_ok=True)
    with log_path.open("w") as log:
        try:
            interpreter = str(ensure_matrix_venv(version, python, log))
        except subprocess.CalledProcessError as exc:
            results[version] = (1, f"set-up failed ({exc.returncode}), see {log_path}")
            return
        env = {**os.environ, "PYTHONPATH": str(ROOT)}  # conftest imports the harness (embedded servers)
        pytest_args = ["-m", "pytest", "-p", "no:xdist", "-p", "no:cacheprovider", "-q"]
        code, summaries = 0, []
        for args in (
            [interpreter, *pytest_args, *MATRIX_TESTS],
            [interpreter, *MATRIX_WARNINGS, *pytest_args, *MATRIX_FORK_TESTS],
        ):
            log.write(f"$ {' '.join(args)}\n")
            log.flush()
            code = subprocess.call(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT) or code
            log.flush()
            lines = [line for line in log_path.read_text().splitlines() if line.strip()]
            summaries.append(lines[-1].strip("= ") if lines else "no output")
    results[version] = (code, f"{'; '.join(summaries)} ({time.monotonic() - started:.0f} s, log {log_path})")


def run_matrix(rest: list[str]) -> int:
    """The library's own tests on each other supported Python, side by side; 0 if all passed (or none found)."""
    if os.environ.get("FORKPOOL_MATRIX", "1") == "0" or any(not a.startswith("-") for a in rest):
        return 0  # a chosen test or directory: the caller asked for those only
    found = matrix_pythons()
    if not found:
        return 0
    print(f"bootstrap: the library's tests on Python {', '.join(v for v, _ in found)}", flush=True)
    results: dict[str, tuple[int, str]] = {}
    # One thread per Python: each waits on its pytest; the two cores are free after the main run.
    runners = [threading.Thread(target=run_on, args=(version, python, results)) for version, python in found]
    for runner in runners:
        runner.start()
    for runner in runners:
        runner.join()
    code = 0
    for version, _ in found:
        failed, summary = results.get(version, (1, "did not run"))
        print(f"bootstrap: Python {version}: {'FAILED' if failed else 'passed'}: {summary}", flush=True)
        code = code or failed
    return code


# The static checks `test` runs first, from the repository's root (their configuration: pyproject.toml).
CHECKS = (
    ("ruff check", ("ruff", "check", ".")),
    ("ruff format", ("ruff", "format", "--check", ".")),
    ("mypy (shared/forkpool, strict)", ("mypy",)),
    # import-linter's contracts, in the root pyproject.toml: the library's layers, the suite kept out of it.
    ("lint-imports (layers)", ("lint-imports", "--no-logo")),
    # The docs site into ./site (ignored by git); --strict: a broken link, anchor or included file fails it
    # (not with --quiet, which hides the warnings strict mode counts).
    ("mkdocs build --strict (docs site)", ("mkdocs", "build", "--strict")),
)


def run_checks() -> int:
    """Lint, format and type checks, one line each; 0 if all passed, else 1. Never stops the tests."""
    if os.environ.get("FORKPOOL_CHECKS", "1") == "0":
        return 0
    code = 0
    for label, (tool, *args) in CHECKS:
        command = [str(venv_bin(tool)), *args]
        try:
            result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        except OSError as exc:  # the tool is missing from the venv
            print(f"bootstrap: {label}: FAILED: {exc.strerror}: {command[0]}", flush=True)
            code = 1
            continue
        if result.returncode == 0:
            print(f"bootstrap: {label}: passed", flush=True)
            continue
        lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
        # The tool's own summary ("Found 3 errors.", "2 files would be reformatted", "Contracts: 2 kept, 1 broken."),
        # else its last line.
        summary = [
            line for line in lines if line.startswith(("Found ", "Contracts: ")) or " would be reformatted" in line
        ]
        said = (summary or lines or [f"exit code {result.returncode}"])[-1].strip()
        print(f"bootstrap: {label}: FAILED: {said} (see: {' '.join(command)})", flush=True)
        code = 1
    return code


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    if sys.version_info < (3, 11):  # noqa: UP036 - bootstrap.py runs on the machine's python3, whatever it is
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
    checks = run_checks() if command == "test" else 0
    code = subprocess.call(args)
    if command == "test":
        code = run_matrix(rest) or code
    return max(checks, code)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
    except subprocess.CalledProcessError as exc:
        print(f"bootstrap: set-up failed: {' '.join(map(str, exc.cmd))} exited {exc.returncode}", file=sys.stderr)
        sys.exit(1)
