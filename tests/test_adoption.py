"""Adopting forkpool in an existing app: the recipes of docs/adopting.md, run for real.

Each recipe's files live in tests/adoption/<name>/ and the doc shows them
verbatim (checked below). Gunicorn runs them with 2 workers, the Celery worker
with 2 prefork processes on the test Redis, all with DB_POOL_SIZE=2: the
server must show exactly processes x 2 sessions, every one held by a child,
none by the master, and a request or a task must run a query on one of them.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

from harness._procs import free_port
from tests.server_support import Server, by_process, get, gunicorn_argv

REPO = Path(__file__).resolve().parents[1]
ADOPTION = REPO / "tests" / "adoption"
DOC = REPO / "docs" / "adopting.md"
WORKERS = 2
POOL = 2


@pytest.fixture
def recipe_env(suite_id: str) -> dict[str, str]:
    """The test's environment (DATABASE_URL, REDIS_URL, FORKPOOL_NAME) with a fixed-size pool of 2."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WEB_", "WORKER_", "PROMETHEUS_"))}
    env.update(DB_POOL_SIZE=str(POOL), PYTHONUNBUFFERED="1")
    return env


def start_gunicorn(
    servers: list[Server], recipe: str, app: str, env: dict[str, str], tmp_path: Path
) -> tuple[Server, str]:
    port = free_port()
    server = Server(gunicorn_argv(app, port, WORKERS), ADOPTION / recipe, env, tmp_path / f"{recipe}-gunicorn.log")
    servers.append(server)
    url = f"http://127.0.0.1:{port}/"
    server.wait_until(lambda: len(server.children()) == WORKERS and get(url)[0] == 200, "gunicorn ready")
    return server, url


def assert_children_hold_exactly(
    server: Server, role: str, sessions, count_settles, suite_id: str
) -> dict[int, list[int]]:
    """processes x POOL sessions, all of this role, each child holding POOL, the master none; {pid: backends}."""
    children = server.children()
    assert len(children) == WORKERS
    assert count_settles(WORKERS * POOL) == WORKERS * POOL  # every role: the master's would count too
    held = by_process(sessions, suite_id)
    assert {key: len(backends) for key, backends in held.items()} == {(role, pid): POOL for pid in children}
    assert server.pid not in {pid for _, pid in held}
    return {pid: backends for (_, pid), backends in held.items()}


# -- Gunicorn: hooks that compose with the user's own -----------------------------------------------


def test_user_hooks_call_forkpool_hooks_in_one_line(servers, recipe_env, tmp_path, sessions, count_settles, suite_id):
    hook_log = tmp_path / "hooks.log"
    server, url = start_gunicorn(servers, "own_hooks", "app:app", {**recipe_env, "HOOK_LOG": str(hook_log)}, tmp_path)
    backends = assert_children_hold_exactly(server, "web", sessions, count_settles, suite_id)
    workers = set(backends)

    for _ in range(20):
        status, body = get(url)
        assert status == 200
        answer = json.loads(body)
        assert answer["select"] == 1 and answer["backend_pid"] in backends[answer["pid"]]

    lines = [line.split() for line in hook_log.read_text().splitlines()]
    # The master imported the app (preload_app) and queried at import; when_ready left it no pool.
    assert [line for line in lines if line[0] == "when_ready"] == [["when_ready", str(server.pid), "0"]]
    # Each worker's pool was full (size 2) right after forkpool's post_fork, inside the user's hook.
    assert sorted(line for line in lines if line[0] == "post_fork") == sorted(
        ["post_fork", str(pid), str(POOL)] for pid in workers
    )

    assert server.stop() == 0
    lines = [line.split() for line in hook_log.read_text().splitlines()]
    assert sorted(line for line in lines if line[0] == "worker_exit") == sorted(
        ["worker_exit", str(pid), "0"] for pid in workers
    )  # forkpool's worker_exit closed every pool
    assert count_settles(0) == 0


# -- docs/adopting.md recipes -------------------------------------------------------------------------


def test_recipe_plain_wsgi_app_under_gunicorn(servers, recipe_env, tmp_path, sessions, count_settles, suite_id):
    server, url = start_gunicorn(servers, "wsgi_app", "app:app", recipe_env, tmp_path)
    backends = assert_children_hold_exactly(server, "web", sessions, count_settles, suite_id)
    every_backend = {b for held in backends.values() for b in held}
    for _ in range(10):
        status, body = get(url)
        match = re.fullmatch(rb"served by backend (\d+)\n", body)
        assert status == 200 and match and int(match.group(1)) in every_backend
    assert server.stop() == 0
    assert count_settles(0) == 0


def test_recipe_flask_extension_with_an_app_factory(servers, recipe_env, tmp_path, sessions, count_settles, suite_id):
    server, url = start_gunicorn(servers, "flask_app", "app:create_app()", recipe_env, tmp_path)
    backends = assert_children_hold_exactly(server, "web", sessions, count_settles, suite_id)
    every_backend = {b for held in backends.values() for b in held}
    for _ in range(10):
        status, body = get(url)
        assert status == 200 and json.loads(body)["backend_pid"] in every_backend
    assert server.stop() == 0
    assert count_settles(0) == 0


def test_recipe_celery_prefork_worker(servers, recipe_env, redis_url, tmp_path, sessions, count_settles, suite_id):
    from celery import Celery

    queue = f"{suite_id}.adoption"
    env = {**recipe_env, "CELERY_BROKER_URL": redis_url, "CELERY_RESULT_BACKEND": redis_url}
    argv = [
        sys.executable,
        "-m",
        "celery",
        "--app",
        "tasks",
        "worker",
        "--pool",
        "prefork",
        "--concurrency",
        str(WORKERS),
        "--queues",
        queue,
        "--hostname",
        f"{suite_id}@%h",
        "--loglevel",
        "INFO",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    worker = Server(argv, ADOPTION / "celery_app", env, tmp_path / "celery-worker.log")
    servers.append(worker)
    worker.wait_until(lambda: " ready." in worker.log() and len(worker.children()) == WORKERS, "celery ready")
    backends = assert_children_hold_exactly(worker, "worker", sessions, count_settles, suite_id)
    every_backend = {b for held in backends.values() for b in held}

    producer = Celery("producer", broker=redis_url, backend=redis_url, set_as_current=False)
    try:
        results = [producer.send_task("tasks.backend_pid", queue=queue) for _ in range(6)]
        answers = [result.get(timeout=30) for result in results]
    finally:
        producer.close()
    assert all(answer in every_backend for answer in answers), (answers, backends)
    assert count_settles(WORKERS * POOL) == WORKERS * POOL  # running tasks opened nothing more

    assert worker.stop() == 0
    assert count_settles(0) == 0


# -- the doc shows exactly the files the tests run ----------------------------------------------------

SNIPPET = re.compile(
    r"^File: `(tests/adoption/[^`]+)`\n\n(?:<!-- docs-test: [^\n]* -->\n)?```[a-z]*\n(.*?)^```$", re.M | re.S
)
RECIPES = ("wsgi_app", "flask_app", "celery_app")


def doc_snippets() -> dict[str, str]:
    return dict(SNIPPET.findall(DOC.read_text()))


def test_the_doc_shows_each_recipe_file_verbatim():
    shown = doc_snippets()
    files = sorted(str(p.relative_to(REPO)) for recipe in RECIPES for p in (ADOPTION / recipe).glob("*.py"))
    assert sorted(shown) == files  # every recipe file is in the doc, and the doc shows no other
    for path, code in shown.items():
        assert code == (REPO / path).read_text(), path


EXCERPT = re.compile(
    r"^Excerpt of `(tests/adoption/[^`]+)`\n\n(?:<!-- docs-test: [^\n]* -->\n)?```[a-z]*\n(.*?)^```$", re.M | re.S
)


def test_the_doc_excerpts_of_the_hooks_file_are_in_it():
    excerpts = EXCERPT.findall(DOC.read_text())
    assert [path for path, _ in excerpts] == ["tests/adoption/own_hooks/gunicorn.conf.py"]
    for path, code in excerpts:
        text = (REPO / path).read_text()
        for block in code.split("\n\n\n"):  # top-level blocks, each as it is in the file
            assert block.strip() and block.strip() in text, block


def test_each_recipe_is_at_most_ten_lines_of_code():
    """Lines of code: not blank, not a comment, not an import."""
    for recipe in RECIPES:
        lines = [
            line
            for p in (ADOPTION / recipe).glob("*.py")
            for line in p.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith(("#", "import ", "from "))
        ]
        assert len(lines) <= 10, (recipe, lines)
