"""The production stack as the Procfile starts it, with JSON logs, a metrics token and Flower behind a
password: gunicorn, a Celery worker, beat and Flower, on a Redis database and a simulator of their own.

Shared by the tests of metrics, logs and Flower: one pool is provisioned and failed over twice (once by
hand, once by the health sweep) and each test checks what its tool shows of that.
"""

import sys
from pathlib import Path

import pytest
import redis
import requests

from app.processes import free_port, wait_until
from tests.conftest import REDIS_PORT, TIME_SCALE, Worker, worker_args

TENANT, API_KEY = "ops", "ops-key"
METRICS_TOKEN = "metrics-token"
FLOWER_USER = ("ops", "flower-password")
MACHINE_ID = 501
ENV = {
    "REDIS_URL": f"redis://127.0.0.1:{REDIS_PORT}/5",
    "WARMPOOL_API_KEYS": f"{TENANT}:{API_KEY}",
    "WARMPOOL_LOG_FORMAT": "json",
    "WARMPOOL_METRICS_TOKEN": METRICS_TOKEN,
    "FLOWER_BASIC_AUTH": ":".join(FLOWER_USER),
}
CELERY = (sys.executable, "-m", "celery", "-A", "tasks", "--quiet")


def answers(url: str, **kwargs) -> bool:
    """Whether ``url`` answers below 500; not yet when it refuses or is too slow (a loaded machine)."""
    try:
        return requests.get(url, timeout=2, **kwargs).status_code < 500
    except (requests.ConnectionError, requests.Timeout):
        return False


class OpsStack:
    def __init__(self, logs: Path):
        self.logs = logs
        web_port, flower_port, sim_port = free_port(), free_port(), free_port()
        self.url, self.flower_url = f"http://127.0.0.1:{web_port}", f"http://127.0.0.1:{flower_port}"
        self.sim_url = f"http://127.0.0.1:{sim_port}"
        env = {**ENV, "VAST_API_URL": self.sim_url}
        # a fresh database: pytest may tear this package's stack down between its modules and make it again
        redis.Redis.from_url(ENV["REDIS_URL"]).flushdb()
        self.processes = {
            "sim": Worker("sim", "--port", str(sim_port), "--time-scale", str(TIME_SCALE), log=logs / "sim.log",
                          program=(sys.executable, "-m", "app.cli")),
            "web": Worker("--bind", f"127.0.0.1:{web_port}", "--worker-class", "gthread", "--threads", "8",
                          "app:create_app()", log=logs / "web.log", program=(sys.executable, "-m", "gunicorn"),
                          **env),
            "worker": Worker(*worker_args("ops"), log=logs / "worker.log", program=CELERY, **env),
            "beat": Worker("beat", "-l", "INFO", "-s", str(logs / "celerybeat-schedule"), log=logs / "beat.log",
                           program=CELERY, **env),
            "flower": Worker("flower", f"--port={flower_port}", log=logs / "flower.log", program=CELERY, **env),
        }
        for process in self.processes.values():
            process.start()
        try:
            wait_until(lambda: answers(self.sim_url + "/_sim/stats"), 30, message="the simulator to answer")
            wait_until(lambda: answers(self.url + "/healthz"), 30, message="gunicorn to answer")
            wait_until(lambda: answers(self.flower_url + "/healthcheck"), 30, message="Flower to answer")
            wait_until(lambda: answers(self.url + "/readyz"), 30, message="the worker to be seen")  # 503 until then
        except BaseException:
            # a stack that never came up must not stay behind: its worker would take the next one's tasks
            self.stop()
            raise

    def api(self, method: str, path: str, **kwargs) -> requests.Response:
        return requests.request(method, self.url + "/api/v1" + path, timeout=30,
                                headers={"Authorization": f"Bearer {API_KEY}"}, **kwargs)

    def run(self, method: str, path: str, **kwargs) -> str:
        """Start an operation, wait for its success; return its task_id."""
        accepted = self.api(method, path, **kwargs)
        assert accepted.status_code == 202, accepted.text
        task = accepted.headers["Location"]

        def succeeded():
            op = requests.get(self.url + task, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=5).json()
            assert op["state"] != "FAILURE", op
            return op["state"] == "SUCCESS" and op
        return wait_until(succeeded, 60, 0.1, f"{method} {path} to succeed")["task_id"]

    def status(self) -> dict:
        return self.api("GET", f"/warmpool/status/{MACHINE_ID}").json()

    def stop(self):
        for process in self.processes.values():
            process.stop()


@pytest.fixture(scope="package")
def ops_stack(redis_server, tmp_path_factory):
    stack = OpsStack(tmp_path_factory.mktemp("ops"))
    yield stack
    stack.stop()


@pytest.fixture(scope="package")
def failed_over(ops_stack):
    """A pool provisioned on a host the hosts call offers, then failed over by hand and by the health sweep.
    Returns the task_id of each operation."""
    hosts = ops_stack.api("GET", "/warmpool/hosts", params={"min_gpus": 3}).json()["hosts"]
    host = hosts[0]
    tasks = {"provision": ops_stack.run("POST", "/warmpool/provision", json={
        "machine_id": MACHINE_ID, "host_machine_id": host["machine_id"], "gpu_name": host["gpu_name"]})}
    tasks["manual"] = ops_stack.run("POST", f"/warmpool/failover/test/{MACHINE_ID}")
    active = wait_until(lambda: (s := ops_stack.status())["state"] == "active" and s["standby_gpu_id"] and s,
                        60, 0.1, "a new standby after the manual failover")
    requests.post(f"{ops_stack.sim_url}/_sim/instances/{active['primary_gpu_id']}/fail", timeout=5).raise_for_status()
    wait_until(lambda: (s := ops_stack.status())["failover_count"] == 2 and s["state"] == "active", 60, 0.1,
               "the health sweep's failover")
    return tasks
