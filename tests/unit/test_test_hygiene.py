"""Tests spell no Redis key: they read through the store's methods, or, where one reaches under the store on
purpose (a lost record, an expired slot, a newer epoch), name the key through ``app/store/keys.py``. A key renamed
there then cannot leave a test checking a key nothing writes any more."""

import ast
from pathlib import Path

from app.store import keys

ROOT = Path(__file__).resolve().parents[2]
# what every key starts with; derived from keys.py, so that this file spells none itself
KEY_PREFIX = keys.POOLS.partition(":")[0] + ":"
# its texts are app/ and tasks/ source code for the mutants to find, not keys a test reads
MUTANTS = "tests/mutants.py"


def spelled_keys(source: str) -> list[tuple[int, str]]:
    """The line and text of each string literal (an f-string's literal parts too) that starts like a key."""
    return sorted((node.lineno, node.value) for node in ast.walk(ast.parse(source))
                  if isinstance(node, ast.Constant) and isinstance(node.value, str)
                  and node.value.startswith(KEY_PREFIX))


def test_the_check_finds_a_key_in_a_string_and_in_an_f_string():
    source = f'r.get("{KEY_PREFIX}sweep:last")\nr.incr(f"{KEY_PREFIX}epoch:{{pid}}")\nr.get(keys.SWEEP_LAST)\n'
    assert spelled_keys(source) == [(1, f"{KEY_PREFIX}sweep:last"), (2, f"{KEY_PREFIX}epoch:")]


def test_no_test_spells_a_redis_key():
    skipped = {MUTANTS}
    spelled = [f"{path.relative_to(ROOT)}:{line}: {text!r}" for path in sorted((ROOT / "tests").rglob("*.py"))
               if str(path.relative_to(ROOT)) not in skipped for line, text in spelled_keys(path.read_text())]
    assert spelled == [], "name these keys through app/store/keys.py, or read them through the store's methods:\n" \
        + "\n".join(spelled)
