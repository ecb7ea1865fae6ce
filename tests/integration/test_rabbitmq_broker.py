"""RabbitMQ as the Celery broker (CELERY_BROKER_URL), the production choice: the seed's flow on it.

Pool state and locks stay in Redis (REDIS_URL); only the task messages go through RabbitMQ. Uses the
local RabbitMQ when it answers, else skips.
"""

import sys

import pytest
import requests
from kombu import Connection

from tests.conftest import API_KEYS, Worker, _answers, wait_until, worker_args

AMQP = "amqp://guest:guest@127.0.0.1:5672//"
QUEUES = ("provision", "failover", "health", "webhooks")


def rabbitmq() -> Connection | None:
    connection = Connection(AMQP, connect_timeout=2)
    try:
        connection.ensure_connection(max_retries=1)
    except Exception:  # refused, timed out, wrong credentials: no usable RabbitMQ here
        return None
    return connection


@pytest.fixture
def amqp_stack(clean_stack, tmp_path):
    """gunicorn and a worker whose broker is RabbitMQ (queues emptied first), beside the Redis-brokered stack."""
    connection = rabbitmq()
    if connection is None:
        pytest.skip("no RabbitMQ answers at 127.0.0.1:5672 (guest/guest): the optional broker is not installed here")
    with connection.channel() as channel:
        for queue in QUEUES:
            channel.queue_declare(queue=queue, durable=True, auto_delete=False)
            channel.queue_purge(queue=queue)
    connection.release()
    from app.processes import free_port

    port = free_port()
    web = Worker("--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "8", "--worker-class", "gthread",
                 "app:create_app()", log=tmp_path / "web.log", program=(sys.executable, "-m", "gunicorn"),
                 CELERY_BROKER_URL=AMQP).start()
    worker = Worker(*worker_args("amqp"), log=tmp_path / "worker.log", CELERY_BROKER_URL=AMQP).start()
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: _answers(url + "/healthz"), timeout=30, message="gunicorn to answer")
    wait_until(lambda: "ready" in (tmp_path / "worker.log").read_text(), timeout=60,
               message="the RabbitMQ worker to be ready")
    yield clean_stack, url, tmp_path / "worker.log"
    worker.stop()
    web.stop()


def test_the_seed_flow_with_rabbitmq_as_the_broker(amqp_stack):
    stack, url, worker_log = amqp_stack
    headers = {"Authorization": f"Bearer {API_KEYS['acme']}"}
    host = requests.get(f"{url}/api/v1/warmpool/hosts?gpu_name=RTX_4090&min_gpus=3", headers=headers,
                        timeout=30).json()["hosts"][0]["machine_id"]
    rv = requests.post(f"{url}/api/v1/warmpool/provision", headers=headers, timeout=30,
                       json={"machine_id": 51, "host_machine_id": host, "gpu_name": "RTX_4090"})
    assert rv.status_code == 202, rv.text
    assert stack.wait_task(rv.json()["task_id"], timeout=60)["state"] == "SUCCESS"
    standby = stack.wait_state(51, "active")["standby_gpu_id"]
    rv = requests.post(f"{url}/api/v1/warmpool/failover/test/51?wait=60", headers=headers, timeout=90)
    assert rv.status_code == 200 and rv.json()["new_primary_gpu_id"] == standby, rv.text
    assert stack.wait_state(51, "active")["failover_count"] == 1
    # the steps reached the worker that consumes RabbitMQ alone
    assert "warmpool.failover.stop_primary[" in worker_log.read_text()
