"""forkpool's public API: the names of ``forkpool.__all__``, its public submodules, and the deprecated aliases."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest

import forkpool
from forkpool import fork, health, identity
from forkpool import redis as forkpool_redis

PUBLIC = [
    "AsyncPool",
    "ConfigError",
    "ConnectError",
    "ForkpoolError",
    "MissingExtra",
    "Pool",
    "PoolClosed",
    "PoolError",
    "PoolSettings",
    "PoolTimeout",
    "TooManyWaiting",
    "close_all",
    "close_async_pools",
    "configure",
    "get_async_pool",
    "get_pool",
    "open_async_pools",
    "per_process",
    "pool_for",
    "protect",
]

# {old top-level name: (new module, its name there)}
MOVED = {
    "get_redis": (forkpool_redis, "get_redis"),
    "get_async_redis": (forkpool_redis, "get_async_redis"),
    "close_async_redis": (forkpool_redis, "close_async_redis"),
    "health_check": (health, "health_check"),
    "async_health_check": (health, "async_health_check"),
    "all_stats": (health, "stats"),
    "async_stats": (health, "async_stats"),
    "manager_stats": (health, "manager_stats"),
    "suite_id": (identity, "name"),
    "application_name": (identity, "application_name"),
    "process_role": (identity, "process_role"),
    "set_identity": (identity, "set_identity"),
    "set_process_role": (identity, "set_process_role"),
    "PerProcess": (fork, "PerProcess"),
    "after_fork_in_child": (fork, "after_fork_in_child"),
}


def test_the_top_level_exports_exactly_the_public_names():
    assert sorted(forkpool.__all__) == PUBLIC
    assert len(forkpool.__all__) <= 20
    for name in forkpool.__all__:
        assert getattr(forkpool, name) is not None
    namespace: dict[str, object] = {}
    exec("from forkpool import *", namespace)
    assert sorted(set(namespace) - {"__builtins__"}) == PUBLIC


def test_the_public_submodules_export_their_names():
    assert sorted(forkpool_redis.__all__) == ["close_async_redis", "get_async_redis", "get_redis"]
    assert sorted(health.__all__) == ["async_health_check", "async_stats", "health_check", "manager_stats", "stats"]
    assert sorted(fork.__all__) == ["PerProcess", "after_fork_in_child"]
    for module in (forkpool_redis, health, fork):
        for name in module.__all__:
            assert callable(getattr(module, name)), (module.__name__, name)
    for name in ("name", "application_name", "process_role", "set_identity", "set_process_role"):
        assert callable(getattr(identity, name)), name


@pytest.fixture
def unannounced(monkeypatch: pytest.MonkeyPatch) -> None:
    """As in a fresh process: no old name used yet."""
    monkeypatch.setattr(forkpool, "_announced", set())


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_top_level_name_still_works_and_warns_once_naming_its_new_place(old, unannounced):
    module, new = MOVED[old]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = getattr(forkpool, old)
        again = [getattr(forkpool, old) for _ in range(3)]
    assert found is getattr(module, new) and all(each is found for each in again)
    assert len(caught) == 1, [str(w.message) for w in caught]
    assert caught[0].category is DeprecationWarning
    assert f"{module.__name__}.{new}" in str(caught[0].message)
    assert caught[0].filename == __file__  # attributed to the caller, not to forkpool


def test_an_old_name_imported_with_from_import_warns_once_too(unannounced):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from forkpool import all_stats
    assert all_stats is health.stats
    assert [str(w.message) for w in caught] == [
        "forkpool.all_stats is deprecated and will be removed in forkpool 0.4: use forkpool.health.stats"
    ]


def test_an_unknown_name_is_an_attribute_error_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
            _ = forkpool.no_such_name  # type: ignore[attr-defined]
        assert not hasattr(forkpool, "no_such_name")


def test_each_old_name_warns_once_per_process_under_default_filters():
    program = (
        "import warnings; warnings.simplefilter('default'); import forkpool\n"
        "for _ in range(3): forkpool.get_redis; forkpool.suite_id\n"
        "from forkpool import get_redis\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"}
    )
    assert result.returncode == 0, result.stderr
    warned = [line for line in result.stderr.splitlines() if "DeprecationWarning" in line]
    assert len(warned) == 2 and "use forkpool.redis.get_redis" in warned[0], result.stderr
    assert "use forkpool.identity.name" in warned[1], result.stderr


def test_importing_forkpool_and_its_public_modules_warns_nothing():
    program = (
        "import forkpool, forkpool.identity, forkpool.redis, forkpool.health, forkpool.fork; "
        "forkpool.get_pool; forkpool.identity.name(); print('ok')"
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", program],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0 and result.stdout == "ok\n", result.stderr


# -- the deployment's name: FORKPOOL_NAME, SUITE_ID its deprecated alias ---------------------------------


@pytest.fixture
def no_name(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv("FORKPOOL_NAME", raising=False)
    monkeypatch.delenv("SUITE_ID", raising=False)
    monkeypatch.setattr(identity, "_warned", False)
    return monkeypatch


def test_the_name_comes_from_forkpool_name_and_defaults_to_forkpool(no_name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert identity.name() == "forkpool"
        no_name.setenv("FORKPOOL_NAME", "shop web")
        assert identity.name() == "shop_web"  # one safe alphabet, as in Redis client names
        assert identity.application_name(pid=7) == "shop_web:app:7"


def test_suite_id_is_read_as_a_deprecated_alias_and_says_so_once(no_name):
    no_name.setenv("SUITE_ID", "old-run")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        names = [identity.name() for _ in range(3)] + [identity.application_name(pid=7)]
    assert names == ["old-run", "old-run", "old-run", "old-run:app:7"]
    assert len(caught) == 1, [str(w.message) for w in caught]
    assert caught[0].category is FutureWarning  # for whoever deploys: shown by Python's default filters
    assert "SUITE_ID is deprecated" in str(caught[0].message) and "FORKPOOL_NAME" in str(caught[0].message)


def test_forkpool_name_wins_over_suite_id_without_a_warning(no_name):
    no_name.setenv("SUITE_ID", "old-run")
    no_name.setenv("FORKPOOL_NAME", "new-run")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert identity.name() == "new-run"


def test_the_deprecated_suite_id_is_shown_once_by_default_in_a_real_process():
    program = "import forkpool.identity as i; print([i.application_name(pid=1) for _ in range(3)])"
    result = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "SUITE_ID": "legacy"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "['legacy:app:1', 'legacy:app:1', 'legacy:app:1']\n"
    assert result.stderr.count("FutureWarning") == 1 and "SUITE_ID" in result.stderr, result.stderr


def test_the_old_identity_functions_still_work_and_warn(no_name):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        identity.set_identity(suite_id="kept")
        assert identity.suite_id() == "kept"
    assert identity.name() == "kept"
    assert [w.category for w in caught] == [DeprecationWarning, DeprecationWarning]
    assert "set_identity(name=...)" in str(caught[0].message)
    assert "forkpool.identity.name()" in str(caught[1].message)
