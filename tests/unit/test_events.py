"""The event catalogue (app/events.py): every kind the code records is in it, the docs name only kinds in it,
and the store's event sinks (webhooks, metrics) do what it says of each kind."""

import ast
import re
from pathlib import Path

from app.events import EVENT_KINDS, EVENT_TYPES, TEST_TYPE, WEBHOOK_TYPES
from app.pools import pool_id

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _recorded_kinds() -> dict[str, list[str]]:
    """Every literal kind passed to ``.event(...)`` in app/ and tasks/: ``store.event(pid, kind, ...)`` or a
    step's ``op.event(kind, ...)``, with where. A kind that is not a literal is allowed only in a function named
    ``event`` (a wrapper passing its own argument on); anywhere else it would hide a kind from this check."""
    found: dict[str, list[str]] = {}
    for path in sorted([*(ROOT / "app").rglob("*.py"), *(ROOT / "tasks").rglob("*.py")]):
        tree = ast.parse(path.read_text())
        wrappers = {id(call) for func in ast.walk(tree) if isinstance(func, ast.FunctionDef) and func.name == "event"
                    for call in ast.walk(func)}
        for call in ast.walk(tree):
            if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "event"):
                continue
            first_is_kind = isinstance(call.args[0], ast.Constant)
            kind = call.args[0] if first_is_kind else call.args[1]
            where = f"{path.relative_to(ROOT)}:{call.lineno}"
            if isinstance(kind, ast.Constant) and isinstance(kind.value, str):
                found.setdefault(kind.value, []).append(where)
            else:
                assert id(call) in wrappers, f"{where}: an event kind that is not a literal"
    return found


def test_every_kind_the_code_records_is_in_the_catalogue_and_every_row_is_recorded():
    recorded = _recorded_kinds()
    assert len(recorded) > 30 and "failover_completed" in recorded  # the walk sees the calls
    missing = {kind: where for kind, where in recorded.items() if kind not in EVENT_KINDS}
    assert missing == {}, "add these kinds to app/events.py"
    assert sorted(set(EVENT_KINDS) - set(recorded)) == [], "kinds nothing records any more"
    assert all(kind.meaning for kind in EVENT_KINDS.values())


def test_the_operator_docs_list_exactly_the_webhook_types_of_the_catalogue():
    text = (ROOT / "docs/operator-tools.md").read_text()
    section = text[text.index("### Event types"):]
    section = section[:section.index("\n### ", 1)]
    rows = dict(re.findall(r"^\| `([a-z_.]+)` \| (?:`([a-z_]+)`|none)", section, re.M))
    assert rows.pop(TEST_TYPE) == ""  # sent by the test route only: no kind behind it
    assert {kind: webhook for webhook, kind in rows.items()} == WEBHOOK_TYPES
    assert EVENT_TYPES == sorted(rows)


def test_every_event_the_docs_name_is_in_the_catalogue():
    mention = re.compile(r"\bevents? `([a-z_]+)`|`([a-z_]+)` events?\b")  # "event `x`", "`x` event"
    named = {(path.name, before or after) for path in DOCS for before, after in mention.findall(path.read_text())}
    assert len(named) > 5  # the docs name some
    assert sorted((doc, kind) for doc, kind in named if kind not in EVENT_KINDS) == []


def test_the_webhook_sink_publishes_exactly_the_kinds_with_a_webhook_type(store):
    hook = store.add_webhook("acme", "https://93.184.216.34/hook", None)
    for kind in EVENT_KINDS:
        store.event(pool_id("acme", 1), kind, "", trigger="health", recovery_time_seconds=1.0, status="offline")
    delivered = sorted(delivery["type"] for delivery in store.deliveries(hook["id"]))
    assert delivered == EVENT_TYPES and "pool.heal_given_up" in delivered


def test_the_metrics_sink_counts_the_failovers_and_lost_standbys_the_catalogue_says(store):
    for kind in EVENT_KINDS:
        store.event(pool_id("acme", 1), kind, "", trigger="health", recovery_time_seconds=1.0, status="offline")
    figures = store.metrics()
    assert figures["failovers_started"] == {"health": "1"}
    # a host move ends a failover as a success, but carries no recovery time to observe (issue 19, item 5)
    assert figures["failovers"] == {"health|success": "2", "health|failure": "1", "health|cancelled": "1"}
    assert figures["failover_seconds"]["sum"] == "1"
    assert figures["standbys_lost"] == {"offline": "1"}
