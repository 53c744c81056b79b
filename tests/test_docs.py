"""Every Python snippet of the docs (docs/**/*.md and the READMEs) runs, or is checked as what it is.

A small extractor rather than a plugin (pytest-markdown-docs, pytest-examples run snippets in the test
process): a snippet here forks, opens pools and registers at-exit hooks, so each runs as a script in a
process of its own, against the embedded PostgreSQL and Redis of tests/conftest.py, named with the
test's own identity so that its sessions can be counted.

A fenced ```python block is run unless the line before it says otherwise:

- ``<!-- docs-test: run check=NAME -->``: run, then CHECKS[NAME] in the same process (it drives the app);
  ``run django``: run inside a Django project (the suite's, ``DJANGO_SETTINGS_MODULE=django_stack.settings``);
- ``<!-- docs-test: gunicorn-conf -->``: a gunicorn.conf.py: executed, every setting it sets validated by
  Gunicorn's own Config (a hook's arity too), and the full hook list present, each one forkpool's or
  calling forkpool's;
- ``<!-- docs-test: django-settings [NAMES] -->``: a settings.py fragment: executed (NAMES: settings
  an earlier block of the page defined), every app importable, every ENGINE a backend Django has, and
  Django set up with them in a process of its own;
- ``<!-- docs-test: skip: REASON -->``: deliberately not runnable: compiled, its names checked, the mark says why
  (no snippet needs it today);
- ``<!-- recipe: NAME -->``: run by tests/test_protect_sqla_docs.py (against PostgreSQL, MariaDB, SQLite).

Whatever the mode, every forkpool name a snippet uses (imports, ``forkpool.x.y`` chains) must exist and
be public, and so must every ``forkpool.x.y`` written in the docs' inline code and shell blocks: a
renamed or removed name fails here.
"""

from __future__ import annotations

import ast
import importlib
import os
import re
import subprocess
import sys
import textwrap
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

import forkpool

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted(p for p in (ROOT / "docs").rglob("*.md") if "results" not in p.relative_to(ROOT / "docs").parts)
FILES = [ROOT / "README.md", ROOT / "shared" / "README.md", *PAGES]
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[^\n]*\n(?P<code>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)
MARK = re.compile(r"^<!-- docs-test: (?P<mode>[\w-]+)(?P<arg>.*?) -->$")
RECIPE = re.compile(r"^<!-- recipe: [\w-]+ -->$")
MODES = ("run", "gunicorn-conf", "django-settings", "skip", "recipe")

# Gunicorn's server hooks that forkpool provides, all of which a forkpool gunicorn.conf.py takes.
HOOKS = ("on_starting", "post_worker_init", "when_ready", "pre_fork", "post_fork", "worker_exit", "on_exit")
ASGI_HOOKS = {"on_starting": "asgi_on_starting", "post_fork": "asgi_post_fork"}

# Dotted names in the docs that start with "forkpool." but are not Python names of the library.
NOT_NAMES = {
    "forkpool.commands": "the entry point group of the `forkpool` command's plugins",
    "forkpool.pools": "the per_process key of the pools' registry",
}

CHECKS = {
    # per_process's example: a forked child gets a connection of its own, and the parent's still answers.
    "per-process-fork": textwrap.dedent(
        """
        import os

        parent = connection()
        with parent.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            backend = cur.fetchone()[0]
        pid = os.fork()
        if pid == 0:
            with connection().cursor() as cur:
                cur.execute("SELECT pg_backend_pid()")
                os._exit(0 if connection() is not parent and cur.fetchone()[0] != backend else 1)
        assert os.waitpid(pid, 0)[1] == 0, "the child did not get a connection of its own"
        with parent.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            assert cur.fetchone()[0] == backend, "the parent's session did not survive the child"
        print("checked: one connection per process, the parent's intact")
        """
    ),
    # A WSGI app called as a server calls it, once.
    "wsgi": textwrap.dedent(
        """
        from wsgiref.util import setup_testing_defaults

        environ = {}
        setup_testing_defaults(environ)
        status = []
        body = b"".join(app(environ, lambda line, headers: status.append(line)))
        assert status == ["200 OK"] and body, (status, body)
        print("checked:", body)
        """
    ),
    # The Flask app factory's app, one request through Flask's test client.
    "flask": textwrap.dedent(
        """
        answer = create_app().test_client().get("/")
        assert answer.status_code == 200 and answer.get_json()["backend_pid"] > 0, answer.data
        print("checked: GET /", answer.get_json())
        """
    ),
    # The Celery task, run where it is defined (eagerly: no broker needed) on this process's pool.
    "celery-task": textwrap.dedent(
        """
        result = backend_pid.apply().get()
        assert isinstance(result, int) and result > 0, result
        print("checked: backend_pid() =", result)
        """
    ),
    # An ASGI app's GET / through its lifespan (Starlette's TestClient runs it).
    "asgi-root": textwrap.dedent(
        """
        from starlette.testclient import TestClient

        with TestClient(app) as client:
            answer = client.get("/")
            assert answer.status_code == 200 and answer.json() == {"n": 1}, answer.text
        print("checked: GET /")
        """
    ),
    # Drive the ASGI app through its lifespan and one request (Starlette's TestClient runs the lifespan).
    "asgi-now": textwrap.dedent(
        """
        from starlette.testclient import TestClient

        with TestClient(app) as client:
            answer = client.get("/now")
            assert answer.status_code == 200 and answer.json()["now"], answer.text
        print("checked: GET /now")
        """
    ),
}


@dataclass(frozen=True)
class Snippet:
    path: Path
    line: int
    code: str
    mode: str
    arg: str

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def snippets() -> list[Snippet]:
    found = []
    for path in FILES:
        text = path.read_text()
        for match in FENCE.finditer(text):
            if match.group("lang") not in ("python", "py"):
                continue
            before = [line.strip() for line in text[: match.start()].splitlines() if line.strip()]
            mark = MARK.match(before[-1]) if before else None
            if mark:
                mode, arg = mark.group("mode"), mark.group("arg").strip()
            elif before and RECIPE.match(before[-1]):
                mode, arg = "recipe", ""
            else:
                mode, arg = "run", ""
            line = text[: match.start()].count("\n") + 1
            found.append(Snippet(path, line, textwrap.dedent(match.group("code")), mode, arg))
    return found


SNIPPETS = snippets()


def of_mode(mode: str) -> list[Snippet]:
    return [s for s in SNIPPETS if s.mode == mode]


def params(mode: str) -> list:
    return [pytest.param(s, id=s.id) for s in of_mode(mode)]


# -- the extractor and the marks ---------------------------------------------------------------------------


def test_snippets_are_found_and_every_mark_is_known():
    assert {s.mode for s in SNIPPETS} <= set(MODES), {s.id: s.mode for s in SNIPPETS if s.mode not in MODES}
    # Every kind is there: a broken fence pattern or mark would leave one empty.
    assert len(of_mode("run")) >= 25 and of_mode("gunicorn-conf") and of_mode("django-settings")
    for s in of_mode("skip"):  # deliberately not run: it compiles, its names are checked below, and it says why
        ast.parse(s.code)
        assert s.arg.startswith(":") and len(s.arg.removeprefix(":").strip()) > 10, f"{s.id}: say why it is not run"
    for s in of_mode("run"):
        for option in s.arg.split():
            known = option == "django" or option.removeprefix("check=") in CHECKS
            assert known, f"{s.id}: unknown {option!r}"
    # Each page's marks sit right before a python fence: a mark before anything else is a mistake.
    for path in FILES:
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines):
            if line.startswith("<!-- docs-test"):
                assert lines[number + 1].startswith("```python"), f"{path}:{number + 1}: mark not before a fence"


# -- names: every forkpool name the docs use exists and is public --------------------------------------------


def resolve(dotted: str) -> object:
    """The object `forkpool.a.b.c` names; fails when a part is missing or private, or deprecated at the top."""
    parts = dotted.split(".")
    assert parts[0] == "forkpool"
    obj: object = forkpool
    for index, part in enumerate(parts[1:], start=1):
        assert not part.startswith("_"), f"{dotted}: {part} is private"
        prefix = ".".join(parts[:index])
        if isinstance(obj, types.ModuleType):
            try:
                obj = importlib.import_module(f"{prefix}.{part}")
                continue
            except ModuleNotFoundError as exc:
                if exc.name != f"{prefix}.{part}":
                    raise
            if obj is forkpool:  # the top level: only what forkpool.__all__ names (old names are deprecated)
                assert part in forkpool.__all__, f"{dotted}: forkpool.{part} is not in forkpool.__all__"
        assert hasattr(obj, part), f"{dotted}: {prefix} has no {part}"
        obj = getattr(obj, part)
        if not isinstance(obj, types.ModuleType | type):
            break  # an instance or a function: what follows is its attributes, not the library's names
    return obj


def names_used(code: str) -> set[str]:
    """Every dotted forkpool name the code imports or reads (``forkpool.x.y``, ``from forkpool.x import y``)."""
    tree = ast.parse(code)
    bound: dict[str, str] = {}  # local name -> the dotted forkpool name it is bound to
    used: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "forkpool":
                    used.add(alias.name)
                    if alias.asname:
                        bound[alias.asname] = alias.name
                    else:
                        bound["forkpool"] = "forkpool"
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "forkpool":
            for alias in node.names:
                used.add(f"{node.module}.{alias.name}")
                bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            chain = []
            part: ast.expr = node
            while isinstance(part, ast.Attribute):
                chain.append(part.attr)
                part = part.value
            if isinstance(part, ast.Name) and part.id in bound:
                used.add(".".join([bound[part.id], *reversed(chain)]))
    return used


@pytest.mark.parametrize("snippet", [pytest.param(s, id=s.id) for s in SNIPPETS])
def test_every_forkpool_name_a_snippet_uses_exists(snippet: Snippet):
    used = names_used(snippet.code)
    for name in sorted(used):
        resolve(name)
    if "forkpool" in snippet.code:
        assert used or '"forkpool.django"' in snippet.code, f"{snippet.id}: mentions forkpool, uses none of it"


DOTTED = re.compile(r"(?<![\w./-])forkpool(?:\.[A-Za-z_]\w*)+")
FROM_IMPORT = re.compile(r"from (forkpool(?:\.\w+)*) import ([\w ,]+)")


def prose_names() -> list[tuple[str, str]]:
    """(where, name): forkpool.x.y written in inline code and in non-Python blocks (shell, ini)."""
    found = []
    for path in FILES:
        text = path.read_text()
        blocks = [m.group("code") for m in FENCE.finditer(text) if m.group("lang") not in ("python", "py")]
        prose = FENCE.sub("", text)
        spans = re.findall(r"`([^`\n]+)`", prose)
        for piece in [*spans, *blocks]:
            names = DOTTED.findall(piece)
            for module, imported in FROM_IMPORT.findall(piece):  # `from forkpool.gunicorn import a, b as c`
                names += [f"{module}.{name.split()[0]}" for name in imported.split(",") if name.strip()]
            found += [(str(path.relative_to(ROOT)), name) for name in names]
    return found


def test_every_forkpool_name_in_the_docs_prose_exists():
    found = prose_names()
    assert len(found) > 30  # the scan works
    failures = []
    for where, name in found:
        if name in NOT_NAMES:
            continue
        try:
            resolve(name)
        except (AssertionError, ImportError) as exc:
            failures.append(f"{where}: {exc}")
    assert not failures, "\n".join(failures)


# -- run: each snippet as a script, on the embedded servers ---------------------------------------------


@pytest.mark.parametrize("snippet", params("run"))
def test_snippet_runs(snippet: Snippet, tmp_path, database_url, redis_url, suite_id, count_settles):
    options = snippet.arg.split()
    code = snippet.code + "".join(CHECKS[o.removeprefix("check=")] for o in options if o.startswith("check="))
    script = tmp_path / "snippet.py"
    script.write_text(code)
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "DB_POOL_SIZE": "2",
        "PYTHONPATH": str(tmp_path),
    }
    if "django" in options:  # the suite's Django project: its settings read DATABASE_URL and REDIS_URL
        env.update(DJANGO_SETTINGS_MODULE="django_stack.settings", PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}")
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90
    )
    assert result.returncode == 0, f"{snippet.id} failed:\n{result.stdout}\n{result.stderr}"
    assert count_settles(0) == 0, f"{snippet.id} left sessions on the server after its process ended"


# -- config files ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("snippet", params("gunicorn-conf"))
def test_gunicorn_conf_snippet_takes_every_hook_and_gunicorn_accepts_it(snippet: Snippet):
    from gunicorn.config import Config

    import forkpool.gunicorn

    namespace: dict = {"__name__": "__config__", "__file__": "gunicorn.conf.py"}
    exec(compile(snippet.code, snippet.id, "exec"), namespace)
    cfg = Config()
    for name, value in namespace.items():
        if name in cfg.settings:
            cfg.set(name, value)  # Gunicorn's own validation: types, and each hook's number of arguments
    asgi = str(namespace.get("worker_class", "")).startswith("uvicorn")
    for hook in HOOKS:
        assert hook in namespace, f"{snippet.id}: the hook {hook} is missing"
        wanted = getattr(forkpool.gunicorn, ASGI_HOOKS.get(hook, hook) if asgi else hook)
        given = namespace[hook]
        if given is not wanted:  # a hook of the user's own calls forkpool's, in one line
            assert f"forkpool.gunicorn.{wanted.__name__}(" in snippet.code, f"{snippet.id}: {hook} is not forkpool's"
        assert cfg.settings[hook].get() is given


DJANGO_SETUP = """
import json, sys
import django
from django.conf import settings

given = json.loads(sys.argv[1])
settings.configure(INSTALLED_APPS=given["apps"], DATABASES=given["databases"])
django.setup()
from django.apps import apps
assert apps.is_installed("forkpool.django")
print("django set up with", given["apps"])
"""


@pytest.mark.parametrize("snippet", params("django-settings"))
def test_django_settings_snippet_loads(snippet: Snippet, tmp_path):
    import json

    namespace: dict = {}
    for name in snippet.arg.split():  # settings an earlier block of the page defined
        namespace[name] = {} if name == "DATABASES" else tmp_path
    exec(compile(snippet.code, snippet.id, "exec"), namespace)
    apps = [app for app in namespace.get("INSTALLED_APPS", []) if app is not Ellipsis]
    databases = namespace.get("DATABASES", {})
    assert apps or databases, f"{snippet.id} sets neither INSTALLED_APPS nor DATABASES"
    for app in apps:
        importlib.import_module(app)
    for alias, database in databases.items():
        engine = database["ENGINE"]
        assert engine.startswith("django.db.backends.") and importlib.util.find_spec(engine), (alias, engine)
    if apps:
        config = {
            "apps": apps,
            "databases": {alias: {**db, "NAME": str(db["NAME"])} for alias, db in databases.items()},
        }
        result = subprocess.run(
            [sys.executable, "-c", DJANGO_SETUP, json.dumps(config)], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, f"{snippet.id}:\n{result.stderr}"


# -- run elsewhere ------------------------------------------------------------------------------------------


def test_recipe_snippets_are_the_ones_test_protect_sqla_docs_runs():
    from tests.test_protect_sqla_docs import DOC, recipes

    recipe_snippets = of_mode("recipe")
    assert {s.path for s in recipe_snippets} == {DOC}
    assert sorted(s.code for s in recipe_snippets) == sorted(recipes().values())
