"""The front door: a setting that cannot work ends any `forkpool` command in one line, before it starts anything.

Each case runs the real command (`python -m forkpool ...`) in a clean environment
and checks what a new user would see: exit code 2, exactly one line on stderr
naming the setting, no traceback, no password, and nothing on stdout (the suite's
commands print their servers' URLs as soon as they start them: an empty stdout
means nothing was started). "Down" servers are free ports with nothing
listening; the machine's own PostgreSQL and Redis are never used.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator

import pytest

from harness._procs import free_port
from tests.test_security import assert_one_line_error, harness

PASSWORD = "s3cret-pw"
# Each case takes well under a second; this only stops a hang (the old Redis case waited 60 s).
HANG_GUARD_S = 20
# Every command that reads DATABASE_URL; `fault` runs on its own embedded servers and ignores it.
DATABASE_COMMANDS = ["demo", "loadtest", "soak", "up", "initdb", "budget", "stats"]
SUITE_COMMANDS = ["demo", "loadtest", "soak", "up"]  # the ones that use REDIS_URL


def argv(command: str) -> list[str]:
    """The command with what it needs besides the setting under test: a free port for `up`, a URL for `stats`."""
    if command == "up":
        return ["up", "--port", str(free_port())]  # never the default 8000: another suite may hold it
    if command == "stats":
        return ["stats", "--url", f"http://127.0.0.1:{free_port()}"]
    return [command]


def front_door(args: list[str], tmp_path, **env: str) -> subprocess.CompletedProcess:
    # XDG_RUNTIME_DIR: `forkpool stats` must not find the state file of a `forkpool up` running elsewhere.
    return harness(*args, timeout=HANG_GUARD_S, XDG_RUNTIME_DIR=str(tmp_path), **env)


def assert_refused(result: subprocess.CompletedProcess, setting: str) -> str:
    """Exit 2, one line naming `setting`, no traceback or password, nothing started; the line."""
    what = " ".join(map(str, result.args[3:]))
    line = assert_one_line_error(what, result, [PASSWORD])
    assert result.returncode == 2, (what, result.returncode, line)
    assert setting in line, (what, line)
    assert result.stdout == "", (what, result.stdout)
    return line


@pytest.fixture
def down_url() -> str:
    return f"postgresql://u:{PASSWORD}@127.0.0.1:{free_port()}/db"


@pytest.mark.parametrize("command", DATABASE_COMMANDS)
def test_database_server_down(command: str, down_url: str, tmp_path):
    line = assert_refused(front_door(argv(command), tmp_path, DATABASE_URL=down_url), "DATABASE_URL")
    assert "postgresql://u:***@127.0.0.1:" in line and "Connection refused" in line, line


@pytest.mark.parametrize(
    "url",
    [
        "not a url",
        f"postgresql://u:{PASSWORD}@127.0.0.1:5/db?no_such_option=1",
        # libpq's error quotes a bad percent-escape as written: the password undecoded must be masked too
        f"postgresql://u:{PASSWORD}%zz@127.0.0.1:5/db",
    ],
)
@pytest.mark.parametrize("command", DATABASE_COMMANDS)
def test_database_url_malformed(command: str, url: str, tmp_path):
    line = assert_refused(front_door(argv(command), tmp_path, DATABASE_URL=url), "DATABASE_URL")
    assert "invalid dsn" in line and "ProgrammingError" not in line, line


def test_stats_names_the_option_it_was_given(down_url: str, tmp_path):
    result = front_door(["stats", "--url", "http://127.0.0.1:1", "--database-url", down_url], tmp_path)
    assert "Connection refused" in assert_refused(result, "--database-url")


def test_stats_without_a_running_suite(tmp_path):
    line = assert_refused(front_door(argv("stats"), tmp_path), "--url")
    assert "forkpool up" in line, line


@pytest.mark.parametrize("command", SUITE_COMMANDS)
def test_redis_unreachable(command: str, tmp_path):
    url = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"
    line = assert_refused(front_door(argv(command), tmp_path, REDIS_URL=url), "REDIS_URL")
    assert "redis://:***@127.0.0.1:" in line and "Connection refused" in line, line


def test_redis_url_malformed(tmp_path):
    result = front_door(argv("loadtest"), tmp_path, REDIS_URL=f"redis://:{PASSWORD}@127.0.0.1:port/0")
    assert "is not a Redis URL" in assert_refused(result, "REDIS_URL")


def test_celery_broker_url_is_checked_too(tmp_path):
    """The suite's processes inherit CELERY_BROKER_URL and would use it over REDIS_URL: `fault` included."""
    url = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"
    assert_refused(front_door(["fault", "all"], tmp_path, CELERY_BROKER_URL=url), "CELERY_BROKER_URL")


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port something else listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", free_port()))
        sock.listen()
        yield sock.getsockname()[1]


def test_up_on_a_port_in_use(taken_port: int, tmp_path):
    line = assert_refused(front_door(["up", "--port", str(taken_port)], tmp_path), "--port")
    assert f"127.0.0.1:{taken_port}" in line and "in use" in line, line


def test_up_on_a_port_in_use_from_the_environment(taken_port: int, tmp_path):
    assert_refused(front_door(["up"], tmp_path, PORT=str(taken_port)), f"PORT={taken_port}")


@pytest.mark.parametrize("command", ["loadtest", "up", "fault"])
def test_a_pool_setting_the_suite_would_reject(command: str, tmp_path):
    args = ["fault", "all"] if command == "fault" else argv(command)
    assert_refused(front_door(args, tmp_path, DB_POOL_TIMEOUT="soon"), "DB_POOL_TIMEOUT")


def test_more_web_threads_than_pool_connections(tmp_path):
    result = front_door(["loadtest", "--web-threads", "8", "--pool-size", "4"], tmp_path)
    assert "--pool-size" in assert_refused(result, "--web-threads")


@pytest.mark.parametrize("case", ["pg-down", "pg-malformed", "redis-down", "redis-malformed"])
def test_doctor_takes_an_unusable_server_url_in_one_line(case: str, down_url: str, tmp_path):
    """doctor reads only the servers it is pointed at: a bad --dsn or --redis-url is one line, exit 2."""
    args, setting = {
        "pg-down": (["doctor", "--dsn", down_url], "--dsn"),
        "pg-malformed": (["doctor", "--dsn", "not a url"], "--dsn"),
        "redis-down": (["doctor", "--redis-url", f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"], "--redis-url"),
        "redis-malformed": (["doctor", "--redis-url", f"nothing:{PASSWORD}"], "--redis-url"),
    }[case]
    assert_refused(front_door(args, tmp_path), setting)
