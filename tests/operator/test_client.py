"""The ``warmpool`` client (issue 12) as an operator runs it: a process against the API under gunicorn,
with the stack's worker doing the work. Exit codes, tables, --json and --wait's progress."""

import json
import os
import pty
import re
import subprocess
import sys

import pytest

from app.client import BAD_KEY, FAILED, NOT_FOUND, OK, STILL_RUNNING, UNREACHABLE, USAGE
from app.processes import free_port
from tests.conftest import API_KEYS, ROOT

MACHINE = 321
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def warmpool(web, *args: str, key: str | None = API_KEYS["acme"], url: str | None = None,
             **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "WARMPOOL_URL": url or web.url, **env}
    environment.pop("WARMPOOL_API_KEY", None)
    if key:
        environment["WARMPOOL_API_KEY"] = key
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=120)


def test_help_documents_every_exit_code(web):
    for args in (["--help"], ["failover", "--help"], ["pools", "--help"]):
        out = warmpool(web, *args).stdout
        assert "Exit codes:" in out, args
        for code in (OK, FAILED, USAGE, NOT_FOUND, BAD_KEY, UNREACHABLE, STILL_RUNNING):
            assert re.search(rf"^\s+{code}\s+\S", out, re.M), (args, code)
    assert len({OK, FAILED, USAGE, NOT_FOUND, BAD_KEY, UNREACHABLE, STILL_RUNNING}) == 7


@pytest.mark.parametrize("args", [["status", "abc"], ["status", "0"], ["provision", "5"], ["pools", "--bogus"],
                                  ["failover"], ["task"]])
def test_usage_errors_exit_2(web, args):
    assert warmpool(web, *args).returncode == USAGE


def test_errors_say_what_happened(clean_stack, web):
    rv = warmpool(web, "pools", key="wrong-key")
    assert rv.returncode == BAD_KEY and "invalid API key" in rv.stderr and "wrong-key" not in rv.stderr
    assert warmpool(web, "pools", key=None).returncode == BAD_KEY
    rv = warmpool(web, "status", "999999")
    assert rv.returncode == NOT_FOUND and "No warm pool for machine 999999" in rv.stderr
    assert warmpool(web, "task", "f" * 32).returncode == NOT_FOUND
    rv = warmpool(web, "pools", url=f"http://127.0.0.1:{free_port()}")
    assert rv.returncode == UNREACHABLE and "cannot reach warmpool" in rv.stderr
    # a task that never runs (nothing enqueued it): --wait gives up after --timeout
    task_id = clean_stack.store.new_op("acme", 5, "provision")
    rv = warmpool(web, "task", task_id, "--wait", "--timeout", "1")
    assert rv.returncode == STILL_RUNNING and f"warmpool task {task_id} --wait" in rv.stderr


@pytest.mark.timeout(120)
def test_an_operator_session(clean_stack, web):
    hosts = json.loads(warmpool(web, "hosts", "--json").stdout)["hosts"]
    host = next(h for h in hosts if h["can_create_warm_pool"])
    table = warmpool(web, "hosts")
    assert table.returncode == OK and str(host["machine_id"]) in table.stdout and host["gpu_name"] in table.stdout

    rv = warmpool(web, "provision", str(MACHINE), "--host", str(host["machine_id"]), "--wait")
    assert rv.returncode == OK, rv.stderr
    assert "provision 321: " in rv.stderr  # a line a step: stderr is no terminal here
    assert re.search(r"state\s.*SUCCESS", rv.stdout)
    clean_stack.wait_state(MACHINE, "active")

    pools = json.loads(warmpool(web, "pools", "--json").stdout)
    assert [p["machine_id"] for p in pools["pools"]] == [MACHINE] and pools["pools"][0]["state"] == "active"
    status = warmpool(web, "status", str(MACHINE))
    assert status.returncode == OK and re.search(r"state\s.*active", status.stdout)

    rv = warmpool(web, "failover", str(MACHINE), "--wait")
    assert rv.returncode == OK, rv.stderr
    assert "Failover test completed" in rv.stdout and "failover phases" in rv.stdout
    assert "start_standby" in rv.stdout
    pool = clean_stack.wait_state(MACHINE, "active")
    assert str(pool["primary_gpu_id"]) in rv.stdout  # the new primary
    events = warmpool(web, "events", str(MACHINE))
    assert events.returncode == OK and "failover_completed" in events.stdout

    # without --wait: the task id, to follow later
    rv = warmpool(web, "cleanup", str(MACHINE))
    assert rv.returncode == OK and "follow it with: warmpool task" in rv.stdout
    task_id = re.search(r"warmpool task ([0-9a-f]{32})", rv.stdout).group(1)
    task = json.loads(warmpool(web, "task", task_id, "--wait", "--json").stdout)
    assert task["state"] == "SUCCESS" and task["operation"] == "cleanup"
    assert warmpool(web, "pools").stdout.count("disabled") == 1

    # refused by the service (409): the operation did not happen
    rv = warmpool(web, "failover", str(MACHINE))
    assert rv.returncode == FAILED and "Cannot test failover in state disabled" in rv.stderr


@pytest.mark.timeout(120)
def test_a_failed_operation_exits_1(clean_stack, web):
    rv = warmpool(web, "provision", "77", "--host", "1", "--wait")  # no such host in the simulator
    assert rv.returncode == FAILED, (rv.stdout, rv.stderr)
    assert re.search(r"state\s.*FAILURE", rv.stdout)


@pytest.mark.timeout(120)
def test_wait_on_a_terminal_shows_the_step_and_the_time(clean_stack, web):
    hosts = json.loads(warmpool(web, "hosts", "--json").stdout)["hosts"]
    host = next(h for h in hosts if h["can_create_warm_pool"])
    controller, terminal = pty.openpty()
    env = {**os.environ, "WARMPOOL_URL": web.url, "WARMPOOL_API_KEY": API_KEYS["acme"], "TERM": "xterm",
           "COLUMNS": "120"}
    process = subprocess.Popen([sys.executable, "-m", "app.cli", "provision", str(MACHINE), "--host",
                                str(host["machine_id"]), "--wait"], cwd=ROOT, env=env,
                               stdin=terminal, stdout=terminal, stderr=terminal)
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the terminal closed: the process ended
            break
        if not chunk:
            break
        output += chunk
    os.close(controller)
    assert process.wait(timeout=60) == OK
    text = ANSI.sub("", output.decode(errors="replace"))
    assert re.search(r"provision 321: \w+ \((PENDING|STARTED)\)\s+0:00:\d\d", text), text
    assert "SUCCESS" in text
