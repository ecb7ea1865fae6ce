"""docs/architecture.md's correctness rules each name the code that enforces them, and those names exist.

A refactor that moves or renames the enforcing code fails here until the rule's pointer follows it.
"""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RULES = (ROOT / "docs/architecture.md").read_text().split("## Correctness rules", 1)[1].split("\n## ", 1)[0]
# `path/to/file.py` or `path/to/file.py: name` (a def, class or constant of that file)
FILE_REF = re.compile(r"`([\w/]+\.py)(?::\s*(\w+))?`")
# `Class.method` or `function_name` (a def or class anywhere in the service's code)
NAME_REF = re.compile(r"`([A-Za-z_]\w*(?:\.\w+)?)`")


def _defined(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
            if isinstance(node, ast.ClassDef):
                names |= {f"{node.name}.{item.name}" for item in node.body
                          if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)}
        elif isinstance(node, ast.Assign):
            names |= {target.id for target in node.targets if isinstance(target, ast.Name)}
    return names


SOURCES = [p for d in ("app", "tasks") for p in (ROOT / d).rglob("*.py")] + [ROOT / "celeryconfig.py"]
DEFINED = {path: _defined(path) for path in SOURCES}
ANYWHERE = set().union(*DEFINED.values())
# Store is composed of repositories: the rules name their methods as Store.<method>
ANYWHERE |= {"Store." + name.split(".")[1] for path, names in DEFINED.items() if "store" in path.parts
             for name in names if "." in name}


def rules() -> dict[int, str]:
    items = re.split(r"\n(?=\d+\. \*\*)", "\n" + RULES.strip())
    return {int(item.split(".", 1)[0]): item for item in items if re.match(r"\d+\. \*\*", item)}


def test_the_rules_are_numbered_one_to_seventeen():
    assert sorted(rules()) == list(range(1, 18))


def test_every_rule_names_code_that_exists():
    for number, text in rules().items():
        files = FILE_REF.findall(text)
        names = [n for n in NAME_REF.findall(text) if n in ANYWHERE]
        assert files or names, f"rule {number} names no code that enforces it"
        for path, name in files:
            source = ROOT / path
            assert source.exists(), f"rule {number}: {path} does not exist"
            if name:
                assert name in DEFINED.get(source, _defined(source)), f"rule {number}: {path} defines no {name}"
