"""The library as a user gets it: its wheel, in a clean virtualenv, with no extras.

One virtualenv per test session (module fixture): the wheel is built from a
copy of shared/ (building in place would write build/ and egg-info next to
the sources), installed with the venv's own pip, which fetches
nothing else: it requires nothing. What that bare install holds and does
is recorded, then the `psycopg2` extra is added for the checks that open a
pool. Every check then runs the venv's
interpreter from a directory outside the checkout, so nothing of the suite
or of the dev venv is importable. Without PyPI the whole module is skipped,
saying so; it never passes without having installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchmarks.install_size import measure

REPO = Path(__file__).resolve().parents[1]
PYPI = "https://pypi.org/simple"
# What the suite pulls in and the library must not.
NOT_REQUIRED = {"flask", "celery", "gunicorn", "locust", "matplotlib", "rich", "prometheus-client", "redis"}
INSTALLER_TOOLS = {"pip", "setuptools", "wheel"}
NETWORK_TROUBLE = (
    "NewConnectionError",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Max retries exceeded",
    "Network is unreachable",
    "ConnectTimeout",
    "ReadTimeoutError",
    "Could not fetch URL",
    "No matching distribution found",
)

# venv + build + install: ~10 s here, more on a slow network; one worker builds the venv (module fixture)
pytestmark = [pytest.mark.timeout(300), pytest.mark.xdist_group("wheel")]


@dataclass(frozen=True)
class CleanVenv:
    root: Path
    python: Path
    bin: Path
    wheel: Path
    workdir: Path  # outside the checkout: `import forkpool` can only find the installed wheel
    bare_names: frozenset[str] = frozenset()  # what `pip install forkpool` alone installed
    bare_pool: str = ""  # what get_pool() raised there (no driver)

    def env(self, **extra: str) -> dict[str, str]:
        """The venv as activated, without anything that points back at the checkout or the dev venv."""
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "DATABASE_URL", "PROCESS_ROLE")
            and not k.startswith(("DB_POOL_", "WEB_", "WORKER_", "PYTEST_"))
        }
        env.update(VIRTUAL_ENV=str(self.root / "venv"), PATH=f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}")
        env.update(extra)
        return env

    def run(self, argv: list[str], timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            argv, cwd=self.workdir, env=self.env(**env), capture_output=True, text=True, timeout=timeout
        )

    def script(self, code: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
        path = self.workdir / "check.py"
        path.write_text(textwrap.dedent(code))
        return self.run([str(self.python), str(path)], timeout, **env)


def _tail(result: subprocess.CompletedProcess, lines: int = 15) -> str:
    return "\n".join((result.stdout + result.stderr).strip().splitlines()[-lines:])


def _offline(result: subprocess.CompletedProcess) -> bool:
    return any(marker in result.stdout + result.stderr for marker in NETWORK_TROUBLE)


@pytest.fixture(scope="module")
def clean_venv(tmp_path_factory: pytest.TempPathFactory) -> CleanVenv:
    root = tmp_path_factory.mktemp("wheel-install")
    source, wheels, workdir = root / "shared", root / "wheels", root / "work"
    shutil.copytree(
        REPO / "shared", source, ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__")
    )
    workdir.mkdir()
    made = subprocess.run(
        [sys.executable, "-m", "venv", str(root / "venv")], capture_output=True, text=True, timeout=120
    )
    assert made.returncode == 0, made.stderr
    venv = CleanVenv(root, root / "venv" / "bin" / "python", root / "venv" / "bin", wheels / "unbuilt", workdir)
    pip = [str(venv.python), "-m", "pip"]

    # PyPI itself, not a local mirror or pip's cache: no config file, no find-links.
    probe_env = {
        k: v for k, v in venv.env().items() if k not in ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL")
    }
    probe = subprocess.run(
        [
            *pip,
            "index",
            "versions",
            "psycopg2-binary",
            "--index-url",
            PYPI,
            "--no-cache-dir",
            "--timeout",
            "20",
            "--retries",
            "1",
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
        env={**probe_env, "PIP_CONFIG_FILE": os.devnull},
    )
    if probe.returncode != 0 or "psycopg2-binary" not in probe.stdout:
        pytest.skip(f"pip cannot reach PyPI ({PYPI}): {_tail(probe, 2) or 'no output'}")

    # Absolute path: a bare directory name would be taken for a project on the index.
    built = venv.run([*pip, "wheel", "--no-deps", str(source), "-w", str(wheels)], timeout=300)
    if built.returncode != 0:
        (pytest.skip if _offline(built) else pytest.fail)(f"building the wheel failed:\n{_tail(built)}")
    (wheel,) = wheels.glob("forkpool-*.whl")
    installed = venv.run([*pip, "install", str(wheel)], timeout=300)
    if installed.returncode != 0:
        (pytest.skip if _offline(installed) else pytest.fail)(f"pip install of the wheel failed:\n{_tail(installed)}")
    bare = CleanVenv(root, venv.python, venv.bin, wheel, workdir)
    bare_names = frozenset(installed_names(bare))
    probe_pool = bare.script("""
        import forkpool
        try:
            forkpool.get_pool()
        except forkpool.MissingExtra as exc:
            print(exc)
    """)
    assert probe_pool.returncode == 0, probe_pool.stderr
    # Then the driver, as the README's install line has it.
    with_driver = venv.run([*pip, "install", f"{wheel}[psycopg2]"], timeout=300)
    if with_driver.returncode != 0:
        (pytest.skip if _offline(with_driver) else pytest.fail)(f"installing the extra failed:\n{_tail(with_driver)}")
    return CleanVenv(root, venv.python, venv.bin, wheel, workdir, bare_names, probe_pool.stdout.strip())


def installed_names(venv: CleanVenv) -> set[str]:
    listed = venv.run([str(venv.python), "-m", "pip", "list", "--format=json"])
    assert listed.returncode == 0, listed.stderr
    return {entry["name"].lower().replace("_", "-") for entry in json.loads(listed.stdout)}


def test_import_forkpool_comes_from_the_wheel(clean_venv: CleanVenv) -> None:
    done = clean_venv.script("""
        import json
        import forkpool
        from forkpool import *  # every public name imports without an extra
        print(json.dumps({"file": forkpool.__file__, "version": forkpool.__version__,
                          "names": len(forkpool.__all__)}))
    """)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert Path(found["file"]).is_relative_to(clean_venv.root / "venv" / "lib")  # not the checkout
    assert clean_venv.wheel.name == f"forkpool-{found['version']}-py3-none-any.whl"


def test_nothing_is_required_and_the_driver_is_an_extra(
    clean_venv: CleanVenv, capsys: pytest.CaptureFixture[str]
) -> None:
    assert clean_venv.bare_names - INSTALLER_TOOLS == {"forkpool"}
    # A pool there says, in one line, which extras bring a driver.
    assert "forkpool[psycopg2]" in clean_venv.bare_pool and "forkpool[psycopg]" in clean_venv.bare_pool
    assert "\n" not in clean_venv.bare_pool
    names = installed_names(clean_venv)
    assert names - INSTALLER_TOOLS == {"forkpool", "psycopg2-binary"}
    assert not names & NOT_REQUIRED

    library = measure(clean_venv.root / "venv", "forkpool")
    assert library["closure"].names == ("forkpool",)  # its requirements: none
    suite = measure(Path(sys.prefix), "forkpool-suite")  # the dev venv: the suite and its dev tools
    with capsys.disabled():
        print(
            "\ninstall size, (a) the library, no extras, clean venv:"
            f"\n  {library['closure'].line()}\n  {library['environment'].line()}"
            "\ninstall size, (b) everything the suite pulls (root project, dev venv):"
            f"\n  {suite['closure'].line()}\n  {suite['environment'].line()}"
        )


def test_a_pool_opens_and_survives_a_fork(
    clean_venv: CleanVenv,
    database_url: str,
    suite_id: str,
    sessions: Callable[..., list],
    count_settles: Callable[..., int],
) -> None:
    script = clean_venv.workdir / "fork_check.py"
    script.write_text(
        textwrap.dedent("""
        import json, os, sys
        import forkpool

        pool = forkpool.get_pool()
        assert pool.wait(10), "the pool did not fill"

        def backend_pid(p):
            with p.connection() as conn, conn.cursor() as cur:
                cur.execute("SELECT pg_backend_pid()")
                return cur.fetchone()[0]

        before = backend_pid(pool)
        go_r, go_w = os.pipe()
        up_r, up_w = os.pipe()
        child = os.fork()
        if child == 0:
            own = forkpool.get_pool()
            os.write(up_w, f"{backend_pid(own)} {int(own is not pool)}\\n".encode())
            os.read(go_r, 1)
            sys.exit(0)  # a normal exit: atexit closes its own pool; the inherited one is only let go
        child_backend, other_pool = map(int, os.read(up_r, 64).split())
        print(json.dumps({"parent": os.getpid(), "child": child, "parent_backend": before,
                          "child_backend": child_backend, "child_has_own_pool": other_pool == 1}), flush=True)
        sys.stdin.readline()
        os.write(go_w, b"x")
        _, status = os.waitpid(child, 0)
        print(json.dumps({"child_exit": os.waitstatus_to_exitcode(status), "parent_backend": backend_pid(pool),
                          "same_pool": forkpool.get_pool() is pool, "size": pool.stats()["size"]}), flush=True)
    """)
    )
    proc = subprocess.Popen(
        [str(clean_venv.python), str(script)],
        cwd=clean_venv.workdir,
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_venv.env(DATABASE_URL=database_url, DB_POOL_SIZE="1", FORKPOOL_NAME=suite_id),
    )
    try:
        line = proc.stdout.readline()
        assert line, proc.communicate(timeout=30)[1]
        forked = json.loads(line)
        assert forked["child_has_own_pool"] and forked["child_backend"] != forked["parent_backend"]
        # Both processes hold exactly their own session, each named for its process.
        assert sorted(sessions()) == sorted(
            [
                (f"{suite_id}:app:{forked['parent']}", forked["parent_backend"]),
                (f"{suite_id}:app:{forked['child']}", forked["child_backend"]),
            ]
        )
        out, err = proc.communicate("go\n", timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    done = json.loads(out)
    # The child's exit left the parent's session alone: same backend, same pool, still one connection.
    assert done == {"child_exit": 0, "parent_backend": forked["parent_backend"], "same_pool": True, "size": 1}
    assert count_settles(0) == 0  # and the parent closed it at its own exit


def test_the_forkpool_command_runs(clean_venv: CleanVenv) -> None:
    helped = clean_venv.run([str(clean_venv.bin / "forkpool"), "--help"])
    assert helped.returncode == 0, helped.stderr
    listed = helped.stdout.split("commands:\n", 1)[1].split("\n\n", 1)[0]
    own = clean_venv.script("import json, forkpool.cli; print(json.dumps(sorted(forkpool.cli.LIBRARY_COMMANDS)))")
    assert own.returncode == 0, own.stderr
    library_commands = json.loads(own.stdout)
    assert "budget" in library_commands
    # Exactly the library's own: none of the commands the suite adds through entry points.
    suite_commands = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"][
        "forkpool.commands"
    ]
    assert suite_commands and not set(suite_commands) & set(library_commands)
    assert [line.split()[0] for line in listed.splitlines()] == library_commands

    fits = clean_venv.run([str(clean_venv.bin / "forkpool"), "budget", "--max-connections", "20"])
    assert fits.returncode == 0, fits.stderr
    assert fits.stdout.splitlines()[-1] == "verdict: 16 of 17 -> fits (headroom 1)"
    short = clean_venv.run([str(clean_venv.bin / "forkpool"), "budget", "--max-connections", "10"])
    assert short.returncode == 3 and short.stdout.splitlines()[-1] == "verdict: 16 of 7 -> DOES NOT FIT (headroom -9)"


def test_an_extra_backed_feature_names_its_extra(clean_venv: CleanVenv) -> None:
    done = clean_venv.script("""
        import importlib, json
        import forkpool
        import forkpool.redis

        seen = {}

        def attempt(label, action):
            try:
                action()
            except forkpool.MissingExtra as exc:
                seen[label] = ["MissingExtra", isinstance(exc, ImportError), str(exc)]
            except Exception as exc:
                seen[label] = [type(exc).__name__, isinstance(exc, ImportError), str(exc)]
            else:
                seen[label] = ["ok", False, ""]

        attempt("get_redis", forkpool.redis.get_redis)
        attempt("metrics", lambda: importlib.import_module("forkpool.metrics"))
        attempt("metrics again", lambda: importlib.import_module("forkpool.metrics"))
        attempt("flask", lambda: importlib.import_module("forkpool.flask"))
        attempt("wire_celery", lambda: importlib.import_module("forkpool.celery").wire_celery(None))
        attempt("gunicorn hooks", lambda: importlib.import_module("forkpool.gunicorn").worker_exit(None, None))
        print(json.dumps(seen))
    """)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    expected_extra = {
        "get_redis": "redis",
        "metrics": "prometheus",
        "metrics again": "prometheus",
        "flask": "flask",
        "wire_celery": "celery",
    }
    for label, extra in expected_extra.items():
        kind, is_import_error, message = seen[label]
        assert (kind, is_import_error) == ("MissingExtra", True), (label, seen[label])
        assert f"pip install 'forkpool[{extra}]'" in message, (label, message)
    assert seen["gunicorn hooks"] == ["ok", False, ""]  # the hooks never import gunicorn itself
