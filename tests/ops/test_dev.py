"""`warmpool dev` on Ctrl-C: its children stop in order, with no traceback and nothing left behind;
a second Ctrl-C stops what is left at once. A restart keeps the pools and the dev key."""

import os
import re
import signal
import subprocess
import sys

import psutil
import pytest
import requests

from app.devstack import dev_store
from app.processes import free_port, wait_until
from tests.conftest import ROOT

STOPPED_IN_ORDER = ["flower", "beat", "worker", "web", "simulator", "redis"]
# what would point dev at the test session's own Redis and simulator
SESSION_SETTINGS = ("REDIS_URL", "VAST_API_URL", "VAST_API_KEY", "VAST_RATE_LIMITS", "WARMPOOL_API_KEYS")


class Dev:
    """`warmpool dev` started the way a terminal starts it: in a process group of its own, which Ctrl-C
    signals as a whole."""

    def __init__(self, tmp_path, **settings: str):
        self.port, self.flower_port = free_port(), free_port()
        self.log = tmp_path / f"dev-{self.port}.log"
        env = {**{k: v for k, v in os.environ.items() if k not in SESSION_SETTINGS}, **settings}
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "dev", "--port", str(self.port), "--sim-port", str(free_port()),
                 "--flower-port", str(self.flower_port), "--time-scale", "0.05", "--data-dir", str(tmp_path / "var")],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(self.ready, 90, 0.2, "warmpool dev to be ready")
        self.children = psutil.Process(self.process.pid).children(recursive=True)

    def ready(self) -> bool:
        assert self.process.poll() is None, self.output()
        try:
            return (requests.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2).ok
                    and requests.get(f"http://127.0.0.1:{self.flower_port}/healthcheck", timeout=2).ok)
        except (requests.ConnectionError, requests.Timeout):  # not listening yet, or still starting
            return False

    def ctrl_c(self):
        os.killpg(self.process.pid, signal.SIGINT)

    def stop(self):
        self.ctrl_c()
        wait_until(lambda: self.process.poll() is not None, 90, 0.2, "warmpool dev to stop")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def child(self, name: str) -> psutil.Process:
        return next(c for c in self.children if name in " ".join(c.cmdline()))

    def left(self) -> list[psutil.Process]:
        return [c for c in self.children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]

    def kill(self):
        for process in [self.process, *self.left()]:
            with_no_error(process.kill)


def with_no_error(call):
    try:
        call()
    except (ProcessLookupError, psutil.NoSuchProcess):
        pass


@pytest.fixture
def dev(tmp_path):
    started = Dev(tmp_path)
    yield started
    started.kill()  # only if a test failed half-way


def test_ctrl_c_stops_every_child_in_order_with_no_traceback(dev):
    assert len(dev.children) >= 7  # redis, simulator, gunicorn and its worker, worker, beat, flower

    dev.ctrl_c()

    assert dev.process.wait(timeout=120) == 0
    output = dev.output()
    assert "Traceback" not in output, output
    assert dev.left() == []
    stops = [line.rpartition(" ")[2] for line in output.splitlines() if line.startswith("warmpool dev: stopping ")]
    assert stops == STOPPED_IN_ORDER, output
    assert "Redis is now ready to exit" in output and "You insist" not in output  # a clean shutdown


def test_a_second_ctrl_c_kills_what_is_left(dev):
    dev.child(" beat ").suspend()  # a child that will not stop by itself

    dev.ctrl_c()
    wait_until(lambda: "warmpool dev: stopping beat" in dev.output(), 30, 0.1, "the stop to reach beat")
    dev.ctrl_c()

    dev.process.wait(timeout=60)
    output = dev.output()
    assert "warmpool dev: stopping now" in output and "Traceback" not in output, output
    assert dev.left() == []
    assert "Redis is now ready to exit" not in output  # killed, not asked


def test_a_restart_looks_like_a_restart_against_vast(tmp_path):
    """Issue 9: Redis (AOF) and the simulator's world (its state file) both live in the data dir, so after
    Ctrl-C and `warmpool dev` again every pool still points at instances that exist, with the same ids.
    Issue 21: the dev key is kept there too, so the key the banner showed still works after the restart."""
    first = Dev(tmp_path)
    key = (tmp_path / "var" / "dev-api-key").read_text().strip()
    headers = {"Authorization": f"Bearer {key}"}
    try:
        # the key commands (list-keys) reach dev's own Redis through the export line's REDIS_URL, and see its key
        wait_until(lambda: "REDIS_URL=" in first.output(), 30, 0.1, "the banner")
        redis_url = re.search(r"export PATH=.* REDIS_URL=(\S+)", first.output())[1]
        assert [k["tenant"] for k in dev_store({"REDIS_URL": redis_url}).api_keys({})] == ["dev"]
        api = f"http://127.0.0.1:{first.port}/api/v1/warmpool"
        host = requests.get(f"{api}/hosts?gpu_name=RTX_4090&min_gpus=2", headers=headers, timeout=30).json()
        rv = requests.post(f"{api}/provision?wait=60", headers=headers, timeout=90, json={
            "machine_id": 7, "host_machine_id": host["hosts"][0]["machine_id"], "gpu_name": "RTX_4090"})
        assert rv.status_code == 200 and rv.json()["success"], rv.text
        before = requests.get(f"{api}/status/7", headers=headers, timeout=10).json()
    finally:
        first.stop()
    output = first.output()
    assert f"/dashboard#key={key}" in output and "export PATH=" in output, output
    # a quiet first hour: no line per routine sweep or relay, no Flower warning about a worker not up yet
    assert "warmpool.webhooks.relay" not in output and "warmpool.health.sweep" not in output, output
    assert "Inspect method" not in output, output
    second = Dev(tmp_path)
    try:
        api = f"http://127.0.0.1:{second.port}/api/v1/warmpool"
        after = requests.get(f"{api}/status/7", headers=headers, timeout=10).json()
        same = ("state", "host_machine_id", "volume_id", "primary_gpu_id", "standby_gpu_id")
        assert {k: after[k] for k in same} == {k: before[k] for k in same}
        rv = requests.post(f"{api}/failover/test/7?wait=60", headers=headers, timeout=90)
        assert rv.status_code == 200 and rv.json()["new_primary_gpu_id"] == before["standby_gpu_id"], rv.text
    finally:
        second.stop()
