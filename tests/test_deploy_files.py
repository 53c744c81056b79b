"""Procfile, Dockerfile and docker-compose.yml: run what can run here, check the rest against the code.

Docker does not run on these machines, so compose is checked by reading it:
it parses, its services wait for healthy databases, its commands are the
Procfile's, and every variable it sets is one the code reads. The Procfile
itself is started for real with honcho.
"""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from harness._procs import free_port
from tests.conftest import wait_for
from tests.suite_helpers import http, sessions_by_role

ROOT = Path(__file__).resolve().parents[1]
CODE_DIRS = ("shared/forkpool", "suite", "web", "workers", "django_stack")
_READS = re.compile(
    r'(?:env_int|env_bool|env\.get|environ\.get|getenv)\(\s*"([A-Z][A-Z0-9_]+)"|^\s*"([A-Z][A-Z0-9_]+)": "\w+",|_ENV = "([A-Z][A-Z0-9_]+)"',
    re.M,
)


def variables_the_code_reads(folders: tuple[str, ...] = CODE_DIRS) -> set[str]:
    found: set[str] = set()
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            for match in _READS.finditer(path.read_text()):
                found.add(next(group for group in match.groups() if group))
    return found


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(":", 1) for line in lines if line.strip() and not line.startswith("#"))


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_parses_and_apps_wait_for_healthy_databases():
    services = compose()["services"]
    assert {"postgres", "pgbouncer", "redis", "web", "worker", "asgi", "initdb"} <= set(services)
    for db in ("postgres", "pgbouncer", "redis"):
        assert services[db]["healthcheck"]["test"]
    for app in ("web", "worker", "asgi"):
        depends = services[app]["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["pgbouncer"]["condition"] == "service_healthy"
        assert depends["redis"]["condition"] == "service_healthy"
        assert depends["initdb"]["condition"] == "service_completed_successfully"
        assert services[app]["build"] == "."
    assert (ROOT / "Dockerfile").exists()


def test_compose_commands_are_the_procfile_commands():
    services, procs = compose()["services"], procfile()
    assert services["web"]["command"] == shlex.split(procs["web"])
    assert services["worker"]["command"] == shlex.split(procs["worker"])
    assert services["asgi"]["command"] == shlex.split(procs["asgi"])
    assert set(procs) == {"web", "worker", "asgi"}  # every process the Procfile runs is a service too
    assert services["initdb"]["command"] == ["forkpool", "initdb"]


def pgbouncer_ini() -> configparser.ConfigParser:
    ini = configparser.ConfigParser(inline_comment_prefixes=None)
    ini.read_string((ROOT / "deploy" / "pgbouncer" / "pgbouncer.ini").read_text())
    return ini


def test_apps_reach_postgresql_through_pgbouncer_and_agree_with_its_configuration():
    services, ini = compose()["services"], pgbouncer_ini()
    assert ini["pgbouncer"]["pool_mode"] == "transaction"
    bouncer = services["pgbouncer"]
    assert (
        bouncer["build"] == "deploy/pgbouncer" and bouncer["depends_on"]["postgres"]["condition"] == "service_healthy"
    )
    assert "6432" in bouncer["healthcheck"]["test"] and ini["pgbouncer"]["listen_port"] == "6432"
    for app in ("web", "worker", "asgi"):
        env = services[app]["environment"]
        assert "@pgbouncer:6432/forkpool" in env["DATABASE_URL"] and "forkpool" in ini["databases"]
        assert env["DB_POOL_PREPARE"] == "off"  # Debian bookworm's PgBouncer is 1.18: no prepared statements
        assert env["DB_BUDGET_MAX_CLIENT_CONN"] == ini["pgbouncer"]["max_client_conn"]
        assert env["HOST_LABEL"] == "auto" and env["DB_BUDGET_HOSTS"].startswith("${")  # replicas are hosts
    assert "@postgres:5432/" in services["initdb"]["environment"]["DATABASE_URL"]  # DDL straight to the server
    scale = yaml.load((ROOT / "docker-compose.scale.yml").read_text(), Loader=_TaggedLoader)["services"]
    assert {name: s["ports"] for name, s in scale.items()} == {  # a free host port per replica
        "web": ["127.0.0.1::8000"],
        "asgi": ["127.0.0.1::8001"],
        "worker": ["127.0.0.1::9100"],
    }


class _TaggedLoader(yaml.SafeLoader):
    """Compose's merge tags (!override, !reset) read as the values they carry."""


_TaggedLoader.add_multi_constructor(
    "!",
    lambda loader, tag, node: (
        loader.construct_sequence(node) if isinstance(node, yaml.SequenceNode) else loader.construct_scalar(node)
    ),
)


@pytest.fixture
def readable_dir() -> Iterator[Path]:
    """A directory PgBouncer's unprivileged user can reach (pytest's tmp_path is root's, mode 0700)."""
    from harness._procs import default_base_dir

    path = Path(tempfile.mkdtemp(prefix="forkpool-compose-pgbouncer-", dir=default_base_dir()))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_compose_pgbouncer_configuration_runs_in_transaction_pooling(pgbouncer_binary, database_url, readable_dir):
    """deploy/pgbouncer/pgbouncer.ini under the real binary, only its host, port and auth file swapped."""
    import psycopg2

    from harness._procs import chown_tree, server_user, spawn, stop

    tmp_path = readable_dir

    target = psycopg2.extensions.parse_dsn(database_url)
    admin = psycopg2.connect(database_url)
    admin.autocommit = True
    with admin.cursor() as cur:  # the user and database compose's postgres service creates
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = 'forkpool'")
        if not cur.fetchone():
            cur.execute("CREATE ROLE forkpool LOGIN PASSWORD 'compose-secret'")
        cur.execute("SELECT 1 FROM pg_database WHERE datname = 'forkpool'")
        if not cur.fetchone():
            cur.execute("CREATE DATABASE forkpool OWNER forkpool")
    admin.close()
    port = free_port()
    text = (ROOT / "deploy" / "pgbouncer" / "pgbouncer.ini").read_text()
    text = (
        text.replace("host=postgres port=5432", f"host={target['host']} port={target['port']}")
        .replace("listen_addr = 0.0.0.0", "listen_addr = 127.0.0.1")
        .replace("listen_port = 6432", f"listen_port = {port}")
        .replace("auth_file = /tmp/userlist.txt", f"auth_file = {tmp_path / 'userlist.txt'}")
    )
    (tmp_path / "pgbouncer.ini").write_text(text)
    (tmp_path / "userlist.txt").write_text('"forkpool" "compose-secret"\n')  # what entrypoint.sh writes
    user = server_user()
    chown_tree(tmp_path, user)
    proc = spawn(
        [pgbouncer_binary, str(tmp_path / "pgbouncer.ini")], log_path=tmp_path / "log", cwd=tmp_path, user=user
    )
    url = f"postgresql://forkpool:compose-secret@127.0.0.1:{port}"
    try:
        assert wait_for(lambda: _accepts(url + "/forkpool"), 10), (tmp_path / "log").read_text()
        conn = psycopg2.connect(url + "/forkpool", application_name="compose:web@c1:7")
        with conn.cursor() as cur:
            cur.execute("SELECT current_setting('application_name'), current_user")
            assert cur.fetchone() == ("compose:web@c1:7", "forkpool")  # SCRAM both ways, the identity passed on
        conn.close()
        console = psycopg2.connect(url + "/pgbouncer")
        console.autocommit = True
        with console.cursor() as cur:
            cur.execute("SHOW CONFIG")
            config = {row[0]: row[1] for row in cur.fetchall()}
        console.close()
        assert config["pool_mode"] == "transaction" and config["max_client_conn"] == "400"
        assert not _accepts(f"postgresql://forkpool:wrong@127.0.0.1:{port}/forkpool")
    finally:
        stop(proc, signal.SIGTERM, 10)


def _accepts(url: str) -> bool:
    import psycopg2

    try:
        psycopg2.connect(url, connect_timeout=2).close()
        return True
    except psycopg2.OperationalError:
        return False


def test_every_variable_compose_sets_is_read_by_the_code():
    known = variables_the_code_reads()
    assert {"DATABASE_URL", "DB_POOL_SIZE", "WEB_CONCURRENCY", "WORKER_CONCURRENCY"} <= known  # the scan works
    for name in ("web", "worker", "asgi", "initdb"):
        unknown = set(compose()["services"][name]["environment"]) - known
        assert not unknown, f"{name} sets variables nothing reads: {unknown}"


def documented_variables(text: str) -> set[str]:
    documented = set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)`", text, re.M))
    documented |= set(re.findall(r"^\| `[A-Z][A-Z0-9_]+` / `([A-Z][A-Z0-9_]+)`", text, re.M))
    return documented


def test_configuration_reference_lists_exactly_what_the_code_reads_library_and_suite_apart():
    page = (ROOT / "docs" / "configuration.md").read_text()
    library, suite = page.split("\n## The library\n")[1].split("\n## The suite\n")
    read_by_library = variables_the_code_reads(("shared/forkpool",))
    assert documented_variables(library) == read_by_library
    assert documented_variables(suite) == variables_the_code_reads() - read_by_library


def test_dockerfile_copies_every_package_and_runs_the_web_command():
    dockerfile = (ROOT / "Dockerfile").read_text()
    for package in ("shared", "web", "workers", "harness", "suite", "django_stack"):
        assert f"COPY {package} ./{package}" in dockerfile
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile, re.M)
    assert cmd and yaml.safe_load(cmd.group(1)) == shlex.split(procfile()["web"])


def test_procfile_runs_under_honcho(database_url, redis_url, admin, pg_server):
    suite_id = f"honcho{uuid.uuid4().hex[:6]}"
    url = pg_server.create_database(suite_id) if pg_server else database_url
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "REDIS_URL": redis_url,
        "FORKPOOL_NAME": suite_id,
        "CELERY_QUEUE": f"{suite_id}.tasks",
        "DB_POOL_SIZE": "2",
        "WEB_CONCURRENCY": "2",
        "WORKER_CONCURRENCY": "1",
        "ASGI_CONCURRENCY": "1",
        "ASGI_PORT": str(free_port()),
    }
    init = subprocess.run(
        [sys.executable, "-m", "forkpool", "initdb"], env=env, capture_output=True, text=True, timeout=60
    )
    assert init.returncode == 0, init.stderr
    port = free_port()
    bindir = Path(sys.executable).parent
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    honcho = subprocess.Popen(
        [str(bindir / "honcho"), "start", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    asgi = f"http://127.0.0.1:{env['ASGI_PORT']}"
    try:
        assert wait_for(lambda: _ready(base), 40, 0.2), "the Procfile's web never became ready"
        assert wait_for(lambda: _ready(asgi), 40, 0.2), "the Procfile's asgi never became ready"
        status, job, _ = http(base, "POST", "/jobs", {"kind": "record_event", "args": {"key": suite_id}})
        assert status == 202
        assert wait_for(lambda: http(base, "GET", f"/jobs/{job['id']}")[1].get("state") == "SUCCESS", 40, 0.2)
        status, job, _ = http(asgi, "POST", "/jobs", {"kind": "record_event", "args": {"key": f"{suite_id}-a"}})
        assert status == 202  # the async tier enqueues for the same workers
        assert wait_for(lambda: http(asgi, "GET", f"/jobs/{job['id']}")[1].get("state") == "SUCCESS", 40, 0.2)
        want = {"web": 4, "worker": 2, "asgi": 2}
        wait_for(lambda: {r: sum(p.values()) for r, p in sessions_by_role(admin, suite_id).items()} == want, 20)
        assert {r: sum(p.values()) for r, p in sessions_by_role(admin, suite_id).items()} == want
    finally:
        os.killpg(honcho.pid, signal.SIGTERM)
        honcho.wait(30)
    assert wait_for(lambda: not sessions_by_role(admin, suite_id), 20)


def _ready(base: str) -> bool:
    try:
        return http(base, "GET", "/readyz", timeout=2)[0] == 200
    except OSError:
        return False
