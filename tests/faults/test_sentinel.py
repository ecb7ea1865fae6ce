"""Redis Sentinel: the Redis master dies (kill -9) in the middle of a failover, and the service follows its replica.

A master redis-server, one replica, three ``redis-server --sentinel`` processes, and the service's workers, beat
and API pointed at the sentinels (``REDIS_URL=sentinel://...``), the simulator over HTTP with the rate budget on.
The test reads Redis through redis-py's own ``Sentinel``, never through the service's connection code, so that a
service that does not follow the master fails the test rather than the test's own reads.
"""

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import requests
from redis.sentinel import Sentinel

from app.devstack import redis_server_command
from app.processes import free_port
from app.store import Store
from tests.conftest import API_KEYS, SIM_RATE_LIMITS, LedgerWatch, Stack, start_simulator, wait_until
from tests.faults.test_faults import assert_nothing_leaked, fail_primary, provision, provisioned, wait_step

pytestmark = pytest.mark.timeout(150)

MASTER = "warmpool"
QUORUM = 2


class SentinelDeployment:
    """One master, one replica and three sentinels on this machine, each sentinel with a writable config file."""

    def __init__(self, root: Path):
        self.master_port, self.replica_port = free_port(), free_port()
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.master = self._server(root / "master", self.master_port)
        self.replica = self._server(root / "replica", self.replica_port,
                                    "--replicaof", "127.0.0.1", str(self.master_port))
        binary = redis_server_command(0, root)[0]
        self.sentinels = []
        for port in self.sentinel_ports:
            config = root / f"sentinel-{port}.conf"
            config.write_text(f"port {port}\nbind 127.0.0.1\ndir {root}\n"
                              f"sentinel monitor {MASTER} 127.0.0.1 {self.master_port} {QUORUM}\n"
                              f"sentinel down-after-milliseconds {MASTER} 1000\n"
                              f"sentinel failover-timeout {MASTER} 5000\n")
            self.sentinels.append(subprocess.Popen([binary, str(config), "--sentinel"], stdout=subprocess.DEVNULL))
        self.url = ";".join(f"sentinel://127.0.0.1:{port}/0" for port in self.sentinel_ports)
        self.sentinel = Sentinel([("127.0.0.1", port) for port in self.sentinel_ports], socket_timeout=1)
        # a failover needs the replica known and a quorum of sentinels that know each other (hellos every 2 s)
        wait_until(self._ready, timeout=30, message="the sentinels to know the replica and each other")

    @staticmethod
    def _server(data_dir: Path, port: int, *extra: str) -> subprocess.Popen:
        data_dir.mkdir()
        return subprocess.Popen([*redis_server_command(port, data_dir), *extra], stdout=subprocess.DEVNULL)

    def _ready(self) -> bool:
        try:
            return all(len(node.sentinel_sentinels(MASTER)) == len(self.sentinels) - 1
                       and any(r["master-link-status"] == "ok" for r in node.sentinel_slaves(MASTER))
                       for node in (redis.Redis(port=port, decode_responses=True) for port in self.sentinel_ports))
        except redis.RedisError:
            return False

    def master_port_now(self) -> int | None:
        """The port of the server the sentinels call master now."""
        try:
            return self.sentinel.discover_master(MASTER)[1]
        except redis.RedisError:
            return None

    def client(self) -> redis.Redis:
        return self.sentinel.master_for(MASTER, decode_responses=True, socket_timeout=2)

    def stop(self) -> None:
        for process in (*self.sentinels, self.replica, self.master):
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)


@dataclass
class Answer:
    """An HTTP answer in the shape of Flask's test client (``.status_code``, ``.json``) for the shared helpers."""
    status_code: int
    json: dict


class SentinelStack(Stack):
    """The Procfile's workers, beat and API pointed at the sentinels, and their own simulator (the session's
    stack, if any, keeps running beside it)."""

    def __init__(self, deployment: SentinelDeployment, sim_url: str, logs: Path):
        self.env = {"REDIS_URL": deployment.url, "REDIS_SENTINEL_MASTER": MASTER, "VAST_API_URL": sim_url}
        self.redis_server, self.sim_url, self.logs = deployment, sim_url, logs
        self.redis = deployment.client()
        self.store = Store(self.redis)
        self.sim("POST", "/_sim/rate_limits", json=SIM_RATE_LIMITS)
        self.start()

    def api(self, method: str, path: str, tenant: str = "acme", **kwargs) -> Answer:
        response = requests.request(method, self.http() + path, headers={"Authorization": f"Bearer {API_KEYS[tenant]}"},
                                    timeout=10, **kwargs)
        return Answer(response.status_code, response.json())


@pytest.fixture(scope="module")
def sentinel_stack(tmp_path_factory):
    deployment = SentinelDeployment(tmp_path_factory.mktemp("sentinel"))
    sim_port = free_port()
    simulator = start_simulator(sim_port)
    stack = None
    try:
        stack = SentinelStack(deployment, f"http://127.0.0.1:{sim_port}", tmp_path_factory.mktemp("sentinel-stack"))
        yield stack
    finally:
        if stack:
            stack.stop()
        simulator.terminate()
        simulator.wait(timeout=10)
        deployment.stop()


def test_the_redis_master_killed_mid_failover_is_followed_to_its_replica(sentinel_stack):
    stack, deployment = sentinel_stack, sentinel_stack.redis_server
    provisioned(stack, [181, 182])
    standby = stack.pool(181)["standby_gpu_id"]
    stack.sim("POST", "/_sim/faults", json={"latency_ms": 150})  # steps long enough to be caught
    with LedgerWatch(stack) as watch:
        task = stack.api("POST", "/api/v1/warmpool/failover/test/181").json["task_id"]
        wait_step(stack, [task], "await_standby")
        deployment.master.kill()  # kill -9: no goodbye to the replica, the clients or the sentinels (celery#6348)
        wait_until(lambda: deployment.master_port_now() == deployment.replica_port, timeout=30,
                   message="the sentinels to promote the replica")
        stack.sim("POST", "/_sim/faults", json={})
        # the interrupted failover ends: resumed to its end, or failed and then healed
        op = stack.wait_task(task, timeout=30)
        pool = stack.wait_state(181, "active", timeout=60)
        if op["state"] == "SUCCESS":  # the healer resumed it (its step failed on the dead master)
            assert pool["primary_gpu_id"] == standby and pool["failover_count"] == 1
        assert [i["id"] for i in stack.running("warmpool-acme-181-")] == [pool["primary_gpu_id"]]
        # later failovers and provisions work, through the new master
        fail_primary(stack, 182)
        wait_until(lambda: stack.pool(182)["failover_count"] == 1 and stack.pool(182)["state"] == "active",
                   timeout=30, message="the failover after the promotion")
        provisioned(stack, [183])
    assert stack.wait_state(183, "active")["standby_state"] == "stopped"
    assert_nothing_leaked(stack)  # the simulator's exact check: never two instances up on one volume
    assert watch.most_running <= 1
