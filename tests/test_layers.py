"""How the code is layered: the library in layers with no import circle, and nothing of the suite in it.

A newcomer reads forkpool bottom-up (the order is in forkpool/__init__.py);
web and workers use the library's public modules and never each other.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "shared" / "forkpool"
SUITE_PACKAGES = {"web", "workers", "harness", "suite", "benchmarks", "tests", "django_stack"}
EXTRAS = ("flask", "celery", "gunicorn", "redis", "prometheus_client")


def runtime_import_nodes(path: Path) -> list[ast.Import | ast.ImportFrom]:
    """The import statements `path` runs: top level and inside functions, not under TYPE_CHECKING."""
    tree = ast.parse(path.read_text())
    type_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_only.update(id(child) for child in ast.walk(node))
    return [
        node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in type_only
    ]


def runtime_imports(path: Path) -> set[str]:
    """Modules `path` imports when it runs (a relative import by its name as written)."""
    found: set[str] = set()
    for node in runtime_import_nodes(path):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                found.update([node.module] if node.module else [a.name for a in node.names])
            elif node.module:
                found.add(node.module)
        else:
            found.update(alias.name for alias in node.names)
    return found


def library_graph() -> dict[str, set[str]]:
    """forkpool's modules and what each imports of the others; a subpackage counts as one node."""
    graph: dict[str, set[str]] = {}
    for path in LIBRARY.rglob("*.py"):
        relative = path.relative_to(LIBRARY).with_suffix("").parts
        node = relative[0]
        package = relative[:-1]
        deps = graph.setdefault(node, set())
        for name in runtime_imports_resolved(path, package):
            if name and name != node and ((LIBRARY / f"{name}.py").exists() or (LIBRARY / name).is_dir()):
                deps.add(name)
    return graph


def runtime_imports_resolved(path: Path, package: tuple[str, ...]) -> set[str]:
    """The forkpool-level module (first part below forkpool) of each import `path` makes at run time."""
    found: set[str] = set()
    for node in runtime_import_nodes(path):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - (node.level - 1)])
                targets = [base + node.module.split(".")] if node.module else [base + [a.name] for a in node.names]
            elif node.module and node.module.split(".")[0] == "forkpool":
                targets = [node.module.split(".")[1:] or [a.name for a in node.names][:1]]
            else:
                continue
            found.update(t[0] for t in targets if t)
        else:
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("forkpool."))
    return found


def test_the_library_has_no_import_circle():
    graph = library_graph()
    state: dict[str, int] = {}
    circles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph[module]):
            if state.get(dep) == 1:
                circles.append(path[path.index(dep) :] + [module, dep] if dep in path else [module, dep])
            elif not state.get(dep):
                visit(dep, path + [module])
        state[module] = 2

    for module in sorted(graph):
        if not state.get(module):
            visit(module, [])
    assert not circles, f"import circles: {circles}"


def test_the_library_imports_nothing_of_the_suite():
    for path in LIBRARY.rglob("*.py"):
        roots = {name.split(".")[0] for name in runtime_imports(path)}
        assert not roots & SUITE_PACKAGES, f"{path.name} imports {roots & SUITE_PACKAGES}"


@pytest.mark.parametrize("package, forbidden", [("web", "workers"), ("workers", "web")])
def test_web_and_workers_do_not_import_each_other(package, forbidden):
    for path in (ROOT / package).rglob("*.py"):
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
import forkpool, forkpool._cli, forkpool.gunicorn, forkpool._servers, forkpool.budget, forkpool.redis
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


def test_the_layers_written_in_the_package_docstring_are_the_real_ones():
    import forkpool

    doc = forkpool.__doc__ or ""
    block = doc[doc.index("Modules, bottom-up") :].split("\n\n", 1)[1]
    layers = [[name.strip() for name in line.split(",")] for line in block.strip().splitlines()]
    level = {name: number for number, names in enumerate(layers) for name in names}
    graph = library_graph()
    modules = set(graph) - {"__init__", "__main__"}
    assert set(level) == modules, f"missing from the docstring: {modules - set(level)}; extra: {set(level) - modules}"
    for module, deps in graph.items():
        for dep in deps:
            if module in level:
                assert level[dep] < level[module], f"{module} imports {dep}, listed on the same line or below"
