"""The recipes of docs/protect-sqlalchemy.md, run as written: each block, then a fork whose child uses the engine.

A recipe's block reads ``DATABASE_URL``; the test sets it to the database the
recipe is for (PostgreSQL and MariaDB started by the fixtures, a SQLite file
in a temporary directory) and appends the check below: the parent uses the
engine (a pooled connection to inherit), forks, the child uses it on a
connection of its own, and the parent's still works.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sqlalchemy", reason="forkpool.protect(engine) needs SQLAlchemy (forkpool[sqlalchemy])")

DOC = Path(__file__).resolve().parents[1] / "docs" / "protect-sqlalchemy.md"
RECIPE = re.compile(r"<!-- recipe: ([\w-]+) -->\n```python\n(.*?)```", re.S)

CHECK = '''
import os, sys
from sqlalchemy import text

def session():
    """This process's session: the server's id for it, or for SQLite the pid that opened the connection."""
    def ask(conn):
        name = conn.dialect.name
        if name == "sqlite":
            return conn.connection.info.setdefault("made_by", os.getpid())
        query = "SELECT pg_backend_pid()" if name == "postgresql" else "SELECT CONNECTION_ID()"
        return conn.execute(text(query)).scalar()
    if "create_app" in globals():
        with app.app_context():
            with db.engine.connect() as conn:
                return ask(conn)
    with engine.connect() as conn:
        return ask(conn)

parent = session()
read_fd, write_fd = os.pipe()
pid = os.fork()
if pid == 0:
    try:
        os.write(write_fd, str(session()).encode())
        os._exit(0)
    except BaseException as exc:
        os.write(write_fd, f"error {type(exc).__name__}: {exc}".encode())
        os._exit(1)
os.close(write_fd)
child = os.read(read_fd, 4096).decode()
os.waitpid(pid, 0)
assert child != str(parent) and not child.startswith("error"), (parent, child)
assert session() == parent, "the parent's session did not survive the child"
print("ok", parent, child)
'''


# The test config's in-memory database: the child works on its own copy of the parent's.
CHECK_MEMORY = """
import os
from sqlalchemy import text

def count(insert=None):
    with app.app_context():
        if insert:
            db.session.execute(text(insert))
            db.session.commit()
        found = db.session.execute(text("SELECT count(*) FROM t")).scalar()
        db.session.remove()
        return found

count("CREATE TABLE t (n INTEGER)")
count("INSERT INTO t VALUES (1)")
read_fd, write_fd = os.pipe()
pid = os.fork()
if pid == 0:
    try:
        os.write(write_fd, str(count("INSERT INTO t VALUES (2)")).encode())
    finally:
        os._exit(0)
os.close(write_fd)
child = os.read(read_fd, 4096).decode()
os.waitpid(pid, 0)
assert (child, count()) == ("2", 1), (child, count())
print("ok", child)
"""


def recipes() -> dict[str, str]:
    return dict(RECIPE.findall(DOC.read_text()))


def run(code: str, url: str, cwd: Path, check: str = CHECK) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": url, "FORKPOOL_NAME": "docs-recipe"}
    return subprocess.run(
        [sys.executable, "-c", code + check], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def test_the_doc_has_the_four_recipes():
    assert set(recipes()) == {"postgresql", "mariadb", "sqlite", "flask-factory"}


@pytest.mark.parametrize("name", ["postgresql", "mariadb", "sqlite", "flask-factory", "flask-factory-sqlite"])
def test_a_recipe_runs_and_its_child_uses_a_connection_of_its_own(name, request, tmp_path):
    code = recipes()[name.removesuffix("-sqlite")]
    if name.startswith("flask"):
        pytest.importorskip("flask_sqlalchemy")
    if name in ("postgresql", "flask-factory"):
        url = request.getfixturevalue("database_url").replace("postgresql://", "postgresql+psycopg2://", 1)
    elif name == "mariadb":
        url = request.getfixturevalue("mariadb_url").replace("mysql://", "mysql+pymysql://", 1)
    else:
        url = f"sqlite:///{tmp_path / 'app.db'}"
    if name == "flask-factory-sqlite":  # the test config the recipe names, as a test module would make it
        code += '\napp = create_app({"SQLALCHEMY_DATABASE_URI": "sqlite://", "SQLALCHEMY_ENGINE_OPTIONS": {}})\n'
    result = run(code, url, tmp_path, CHECK_MEMORY if name == "flask-factory-sqlite" else CHECK)
    assert result.returncode == 0 and result.stdout.startswith("ok"), result.stderr
