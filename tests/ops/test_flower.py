"""Flower: local unless told otherwise, never exposed without a password, and it finds an operation
by the API's task_id."""

import os
import subprocess
import sys

import psutil
import requests

from app.processes import free_port, wait_until
from tests.conftest import ROOT
from tests.ops.conftest import FLOWER_USER


def test_flower_finds_an_operations_steps_by_the_api_task_id(ops_stack, failed_over):
    task_id = failed_over["manual"]

    def steps():
        rv = requests.get(ops_stack.flower_url + "/api/tasks", params={"search": task_id}, auth=FLOWER_USER,
                          timeout=10)
        rv.raise_for_status()
        return rv.json()
    found = wait_until(steps, 20, 0.2, "Flower to list the failover's steps")
    names = {task["name"] for task in found.values()}
    assert "warmpool.failover.promote" in names, names
    assert all(task_id in task["args"] for task in found.values())
    assert requests.get(ops_stack.flower_url + "/api/tasks", timeout=10).status_code == 401  # the password


def test_flowers_own_metrics_are_as_the_readme_says(ops_stack, failed_over):
    """README: Flower's /metrics, without the password, counts events by task name (the failover's steps)."""
    def scraped():
        rv = requests.get(ops_stack.flower_url + "/metrics", timeout=10)
        return rv.status_code == 200 and 'task="warmpool.failover.promote"' in rv.text and rv.text
    text = wait_until(scraped, 20, 0.2, "Flower's metrics to count the failover's steps")
    for name in ("flower_events_total", "flower_task_runtime_seconds", "flower_worker_online"):
        assert name in text, name


def test_flower_listens_on_loopback_only_by_default(ops_stack):
    flower = psutil.Process(ops_stack.processes["flower"].process.pid)
    listening = {c.laddr.ip for c in flower.net_connections("inet") if c.status == psutil.CONN_LISTEN}
    assert listening and listening <= {"127.0.0.1"}, listening


def test_flower_refuses_to_be_exposed_without_a_password():
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
    done = subprocess.run([sys.executable, "-m", "celery", "-A", "tasks", "flower", f"--port={free_port()}"],
                          cwd=ROOT, env={**env, "FLOWER_ADDRESS": "0.0.0.0"}, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode != 0 and "FLOWER_BASIC_AUTH" in done.stderr, done.stderr
