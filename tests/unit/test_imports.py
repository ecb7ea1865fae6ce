"""Imports go one way: the web process never loads the workers' modules, and no module of ``app/`` or ``tasks/``
imports itself back through another."""

import ast
import subprocess
import sys
from pathlib import Path

from app import commands, operations
from tasks import celery_app

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("app", "tasks")


def test_the_web_process_never_imports_a_task_module():
    """``create_app()`` sends tasks by name (app/queue.py): no step, beat task or worker patch (tasks/__init__.py
    patches kombu) is loaded in the web process."""
    code = ("import sys\nfrom app import create_app\ncreate_app()\n"
            "print(sorted(m for m in sys.modules if m == 'tasks' or m.startswith('tasks.')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_every_task_the_web_process_sends_by_name_is_one_a_worker_registers():
    celery_app.loader.import_default_modules()  # what a worker imports (celeryconfig.imports)
    sent = [value for module in (operations, commands) for value in vars(module).values()
            if isinstance(value, str) and value.startswith("warmpool.")]
    sent += list(operations.step_routes())  # every declared step
    assert len(sent) > 20 and [name for name in sent if name not in celery_app.tasks] == []


def _module_of(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that ``path`` imports, anywhere in it (a function's import counts: it runs)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from package import module`` imports that module; ``from module import name``, the module
            found.update(f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                         for alias in node.names)
    return found & modules


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One path per cycle found by a depth-first walk."""
    cycles, done, path = [], set(), []

    def visit(module: str) -> None:
        if module in path:
            cycles.append(path[path.index(module):] + [module])
            return
        if module in done:
            return
        path.append(module)
        for imported in sorted(graph[module]):
            visit(imported)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)
    return cycles


def test_no_import_cycle_among_the_modules_of_app_and_tasks():
    files = {_module_of(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")}
    graph = {module: _imports(path, set(files)) - {module} for module, path in files.items()}
    assert sum(map(len, graph.values())) > 50  # the walk sees the imports
    assert _cycles(graph) == []


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
