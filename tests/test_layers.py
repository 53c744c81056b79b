"""How the code is layered: import-linter's contracts hold, and what they cannot see.

The contracts live in the root pyproject.toml ([tool.importlinter]): forkpool's
modules in layers (the order is also in forkpool/__init__.py, checked below),
nothing of the suite in the library, web and workers apart. bootstrap.py test
runs ``lint-imports`` beside ruff and mypy; the first test here runs it too, so
a broken contract fails the tests as well.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("flask", "celery", "gunicorn", "redis", "prometheus_client")


def test_the_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint), "--no-logo", "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    out = result.stdout
    assert result.returncode == 0, out[out.find("Broken contracts") :] or out + result.stderr
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    assert f"Contracts: {len(contracts)} kept, 0 broken." in out, out


def runtime_imports(path: Path) -> set[str]:
    """Modules `path` imports when it runs, not under TYPE_CHECKING (a relative import by its name as written)."""
    tree = ast.parse(path.read_text())
    type_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_only.update(id(child) for child in ast.walk(node))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                found.update([node.module] if node.module else [a.name for a in node.names])
            elif node.module:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_gunicorn_config_files_of_web_and_workers_do_not_import_each_other():
    """import-linter skips ``*.conf.py`` (not importable by name): Gunicorn loads them by path."""
    for package, forbidden in (("web", "workers"), ("workers", "web")):
        for path in (ROOT / package).glob("*.conf.py"):
            roots = {name.split(".")[0] for name in runtime_imports(path)}
            assert forbidden not in roots, f"{path.relative_to(ROOT)} imports {forbidden}"


def test_the_django_stack_imports_no_flask_and_no_workers():
    """It reuses the suite's framework-free modules only: web/api.py, web/schemas.py, web/server_settings.py."""
    for path in (ROOT / "django_stack").rglob("*.py"):
        imports = runtime_imports(path)
        roots = {name.split(".")[0] for name in imports}
        assert not roots & {"flask", "workers", "harness"}, f"{path.relative_to(ROOT)} imports {roots}"
        web = {name for name in imports if name.split(".")[0] == "web"}
        assert web <= {"web.api", "web.schemas", "web.server_settings"}, f"{path.relative_to(ROOT)} imports {web}"


def test_the_core_and_the_server_hooks_import_without_any_extra():
    # Every extra made unimportable: the pool, the CLI and the hooks still load,
    # and asking for an extra's feature names the extra to install.
    program = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {EXTRAS!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Block())
import forkpool, forkpool.cli, forkpool.gunicorn, forkpool._servers, forkpool.budget, forkpool.redis
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {EXTRAS!r})
assert not loaded, loaded
try:
    forkpool.redis.get_redis()
except forkpool.MissingExtra as exc:
    print(exc)
for module in ("forkpool.metrics", "forkpool.flask", "forkpool.celery"):
    try:
        importlib.import_module(module)
        if module == "forkpool.celery":
            forkpool.celery.wire_celery()
    except forkpool.MissingExtra as exc:
        print(exc)
"""
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.rsplit("'", 2)[-2] for line in lines] == [
        "forkpool[redis]",
        "forkpool[prometheus]",
        "forkpool[flask]",
        "forkpool[celery]",
    ], lines


def test_the_layers_written_in_the_package_docstring_are_the_contracts():
    import forkpool

    doc = forkpool.__doc__ or ""
    block = doc[doc.index("Modules, bottom-up") :].split("\n\n", 1)[1]
    written = [sorted(name.strip() for name in line.split(",")) for line in block.strip().splitlines()]
    contract = next(
        c
        for c in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
        if c["id"] == "forkpool-layers"
    )
    layers = [sorted(name.strip() for name in layer.split("|")) for layer in reversed(contract["layers"])]
    assert written == layers
    library = ROOT / "shared" / "forkpool"
    modules = {p.stem for p in library.glob("*.py")} | {p.parent.name for p in library.glob("*/__init__.py")}
    assert {name for layer in layers for name in layer} == modules - {"__init__", "__main__"}
