"""Configuration: environment parsing, validation with one clear line, no password anywhere."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

import forkpool
import forkpool.health
from forkpool.settings import build_settings, settings_from_env

SECRET = "s3cr3t-Pa55"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"DB_POOL_SIZE": "four"}, "DB_POOL_SIZE='four'"),
        ({"DB_POOL_MAX": "1.5"}, "DB_POOL_MAX='1.5'"),
        ({"DB_POOL_MIN": "5", "DB_POOL_MAX": "2"}, "max_size (DB_POOL_MAX)=2"),
        ({"DB_POOL_MAX": "0"}, "max_size (DB_POOL_MAX)=0"),
        ({"DB_POOL_TIMEOUT": "0"}, "timeout (DB_POOL_TIMEOUT)=0.0"),
        ({"DB_POOL_TIMEOUT": "-3"}, "timeout (DB_POOL_TIMEOUT)=-3.0"),
        ({"DB_POOL_TIMEOUT": "soon"}, "DB_POOL_TIMEOUT='soon'"),
        ({"DB_POOL_TIMEOUT": "nan"}, "DB_POOL_TIMEOUT='nan'"),
        ({"DB_POOL_MAX_LIFETIME": "-1"}, "max_lifetime (DB_POOL_MAX_LIFETIME)=-1.0"),
        ({"DATABASE_URL": f"host=x password={SECRET} nonsense"}, "DATABASE_URL"),
    ],
)
def test_bad_settings_fail_with_one_line_naming_variable_and_value(monkeypatch, env, named):
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    with pytest.raises(forkpool.ConfigError) as caught:
        forkpool.configure()
    message = str(caught.value)
    assert named in message
    assert "\n" not in message
    assert SECRET not in message


def test_pool_size_sets_min_and_max_and_explicit_bounds_override():
    assert settings_from_env({"DB_POOL_SIZE": "7"}) == {"min_size": 7, "max_size": 7}
    found = settings_from_env({"DB_POOL_SIZE": "7", "DB_POOL_MAX": "9", "DB_POOL_TIMEOUT": "2.5"})
    assert found == {"min_size": 7, "max_size": 9, "timeout": 2.5}


def test_configure_rejects_changing_an_open_pool():
    forkpool.configure(min_size=1, max_size=1)
    forkpool.get_pool()
    forkpool.configure(min_size=1, max_size=1)  # same settings: fine
    with pytest.raises(forkpool.ConfigError, match="already open"):
        forkpool.configure(min_size=2, max_size=2)


def test_unconfigured_named_pool_is_a_clear_error():
    with pytest.raises(forkpool.ConfigError, match="'reports' is not configured"):
        forkpool.get_pool("reports")


def test_named_pools_are_separate_and_reported_separately(database_url):
    forkpool.configure("a", dsn=database_url, min_size=1, max_size=1)
    forkpool.configure("b", dsn=database_url, min_size=1, max_size=1)
    a, b = forkpool.get_pool("a"), forkpool.get_pool("b")
    assert a is not b and a.identity == b.identity
    assert a.wait(10) and b.wait(10)
    assert [s["name"] for s in forkpool.health.stats()] == ["a", "b"]


def password_dsn(database_url: str) -> str:
    return database_url.replace("postgres@", f"postgres:{SECRET}@", 1)


def test_password_never_in_repr_stats_logs_or_errors(database_url, caplog, driver):
    """For each driver: the drivers' own debug logs (psycopg 3 logs every connection attempt) included."""
    caplog.set_level(logging.DEBUG)
    dsn = password_dsn(database_url)
    assert SECRET in dsn
    # A named pool reads no DB_POOL_* variable, so the driver is passed, and checked.
    settings = forkpool.configure("secret", dsn=dsn, min_size=1, max_size=1, driver=driver)
    pool = forkpool.get_pool("secret")
    assert pool.driver.name == driver
    assert pool.wait(10)
    shown = [
        repr(pool),
        repr(settings),
        str(pool.stats()),
        str(forkpool.health.stats()),
        str(forkpool.health.health_check()),
    ]
    bad = build_settings(
        dsn=dsn.rsplit("/", 1)[0] + "/no_such_db", min_size=0, max_size=1, connect_timeout=2, driver=driver
    )
    broken = forkpool.Pool(bad, "broken")
    assert broken.driver.name == driver
    with pytest.raises(forkpool.ConnectError) as caught:
        broken.getconn(timeout=2)
    shown.append(str(caught.value))
    broken.close()
    shown += [r.getMessage() for r in caplog.records]
    assert "no_such_db" in caught.value.args[0]
    for text in shown:
        assert SECRET not in text


def test_bad_configuration_in_a_fresh_process_prints_one_line(monkeypatch):
    monkeypatch.setenv("DB_POOL_SIZE", "-2")
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import forkpool\ntry:\n    forkpool.configure()\nexcept forkpool.ConfigError as e:\n    print(e)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.strip().count("\n") == 0
    assert "DB_POOL_SIZE='-2' must be at least 1" in result.stdout


def test_network_bounds_are_defaults_the_environment_overrides():
    """A silent network must fail a caller, not hang it: keepalives and tcp_user_timeout are on by default."""
    from forkpool._base import connect_params

    params = connect_params(build_settings(dsn="host=db dbname=app"), 5)
    assert {
        k: params[k]
        for k in (
            "keepalives",
            "keepalives_idle",
            "keepalives_interval",
            "keepalives_count",
            "tcp_user_timeout",
            "connect_timeout",
        )
    } == {
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 3,
        "tcp_user_timeout": 10000,
        "connect_timeout": 5,
    }
    found = settings_from_env(
        {
            "DB_POOL_TCP_USER_TIMEOUT": "20",
            "DB_POOL_KEEPALIVES_IDLE": "0",
            "DB_POOL_KEEPALIVES_COUNT": "5",
            "DB_POOL_KEEPALIVES_INTERVAL": "1.5",
        }
    )
    assert found == {
        "tcp_user_timeout": 20.0,
        "keepalives_idle": 0.0,
        "keepalives_count": 5,
        "keepalives_interval": 1.5,
    }
    off = connect_params(build_settings(dsn="host=db", **found), 5)
    assert "keepalives" not in off and off["tcp_user_timeout"] == 20000
    # The DSN's own choice wins over the pool's default; connect_kwargs win over both.
    dsn_set = connect_params(build_settings(dsn="postgresql://db/app?keepalives_idle=60&tcp_user_timeout=0"), 5)
    assert "keepalives_idle" not in dsn_set and "tcp_user_timeout" not in dsn_set
    kw = connect_params(build_settings(dsn="host=db", connect_kwargs={"keepalives": 0}), 5)
    assert kw["keepalives"] == 0


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"DB_POOL_TCP_USER_TIMEOUT": "-1"}, "tcp_user_timeout (DB_POOL_TCP_USER_TIMEOUT)=-1.0"),
        ({"DB_POOL_KEEPALIVES_COUNT": "0"}, "keepalives_count (DB_POOL_KEEPALIVES_COUNT)=0"),
        ({"DB_POOL_KEEPALIVES_INTERVAL": "0"}, "keepalives_interval (DB_POOL_KEEPALIVES_INTERVAL)=0.0"),
    ],
)
def test_bad_network_settings_name_the_variable(monkeypatch, env, named):
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    with pytest.raises(forkpool.ConfigError, match=r"\(DB_POOL_"):
        forkpool.configure()
    with pytest.raises(forkpool.ConfigError) as caught:
        forkpool.configure()
    assert named in str(caught.value)


@pytest.mark.parametrize("driver_name", ["psycopg2", "psycopg"])
def test_pool_connections_carry_the_kernel_socket_options(database_url, driver_name):
    """Read back from the socket itself: what the kernel enforces, for both drivers."""
    import socket

    pool = forkpool.Pool(build_settings(dsn=database_url, min_size=1, max_size=1, driver=driver_name), "net")
    try:
        with pool.connection() as conn:
            sock = socket.socket(fileno=os.dup(conn.fileno()))
            try:
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 5
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 2
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 10000
            finally:
                sock.close()
    finally:
        pool.close()
