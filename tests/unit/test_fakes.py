"""The fakes reach every seam: they replace ``settings``, ``store`` and ``vast`` on ``app.runtime`` alone
(tests/unit/fakes.install), so a module of the service that imported one of them by name would keep the real one.
This checks, from the source, that none does."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SEAMS = {"settings", "store", "vast"}
SERVICE = sorted([*(ROOT / "app").rglob("*.py"), *(ROOT / "tasks").rglob("*.py"), ROOT / "celeryconfig.py",
                  ROOT / "flowerconfig.py"])


def package_of(path: Path) -> str:
    """The dotted package a module file belongs to (what its relative imports start from)."""
    return ".".join(path.relative_to(ROOT).parent.parts)


def seams_imported_by_name(source: str, package: str) -> list[str]:
    """Where ``source`` (a module of ``package``) imports settings, store or vast from app.runtime by name, at
    any depth (a function's own imports too), relative or starred: "line: name"."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ImportFrom):
            continue
        base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
        module = ".".join([*base, *([node.module] if node.module else [])])
        found += [f"{node.lineno}: {alias.name}" for alias in node.names
                  if module == "app.runtime" and (alias.name in SEAMS or alias.name == "*")]
    return found


def test_no_module_of_the_service_imports_the_runtimes_seams_by_name():
    assert {ROOT / "app" / "runtime.py", ROOT / "tasks" / "base.py", ROOT / "celeryconfig.py"} <= set(SERVICE)
    imported = {f"{path.relative_to(ROOT)}:{where}" for path in SERVICE
                for where in seams_imported_by_name(path.read_text(), package_of(path))}
    assert imported == set(), "use `from app import runtime` and runtime.store() (op.store in a step)"


def test_the_check_finds_a_seam_imported_by_name_anywhere():
    source = ("from app.runtime import Throttled, store\n"
              "from app import runtime\n"
              "def step():\n"
              "    from app.runtime import vast\n"
              "    from .runtime import settings\n"
              "    from ..runtime import *\n"
              "    return runtime.settings()\n")
    assert seams_imported_by_name(source, "app.api") == ["1: store", "4: vast", "6: *"]
    assert seams_imported_by_name(source, "app") == ["1: store", "4: vast", "5: settings"]
    assert seams_imported_by_name("from app.runtime import Throttled, on_account, urgent\n", "tasks") == []
