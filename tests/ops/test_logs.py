"""WARMPOOL_LOG_FORMAT=json: every line gunicorn, the worker and beat write is one JSON object."""

import json

import pytest

from tests.ops.conftest import MACHINE_ID, TENANT

FIELDS = {"time", "level", "logger", "message"}


def records(path) -> list[dict]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    assert lines, f"{path.name} is empty"
    parsed = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            pytest.fail(f"{path.name}: not a JSON line: {line!r}")
        assert isinstance(record, dict) and FIELDS <= set(record), line
        parsed.append(record)
    return parsed


@pytest.mark.parametrize("process", ["web", "worker", "beat"])
def test_every_line_is_a_json_record(ops_stack, failed_over, process):
    records(ops_stack.logs / f"{process}.log")


def test_gunicorn_access_log_is_json(ops_stack, failed_over):
    access = [r for r in records(ops_stack.logs / "web.log") if r["logger"] == "gunicorn.access"]
    assert any("/api/v1/warmpool/provision" in r["message"] for r in access)


def test_a_steps_records_carry_its_operation(ops_stack, failed_over):
    """One query on task_id follows an operation through the worker's records."""
    worker = records(ops_stack.logs / "worker.log")
    for task_id in failed_over.values():
        mine = [r for r in worker if r.get("task_id") == task_id]
        assert mine, f"no worker record carries task_id {task_id}"
        assert all(r["tenant"] == TENANT and r["machine_id"] == MACHINE_ID for r in mine)
    # the records of no operation carry none
    assert any("task_id" not in r for r in worker)
