"""The seed's flow end to end, on real Redis, the simulator over HTTP and a real Celery worker."""

import pytest

from tests.conftest import LedgerWatch, wait_until

MACHINE = 123
PREFIX = f"warmpool-acme-{MACHINE}-"
VOLUME = f"warmpool_acme_{MACHINE}_volume"


def pool_resources(stack):
    ledger = stack.ledger()
    return ([i for i in ledger["instances"] if i["label"].startswith(PREFIX)],
            [v for v in ledger["volumes"] if v["name"] == VOLUME])


@pytest.mark.timeout(120)
def test_seed_flow(clean_stack):
    stack = clean_stack
    with LedgerWatch(stack) as watch:
        # hosts
        rv = stack.api("GET", "/api/v1/warmpool/hosts?gpu_name=RTX_4090&min_gpus=3")
        assert rv.status_code == 200, rv.json
        host = rv.json["hosts"][0]
        assert rv.json["count"] == len(rv.json["hosts"]) and host["available_gpus"] >= 3
        assert host["gpu_name"] == "RTX_4090" and host["can_create_warm_pool"]

        # provision
        rv = stack.api("POST", "/api/v1/warmpool/provision",
                       json={"machine_id": MACHINE, "host_machine_id": host["machine_id"], "gpu_name": "RTX_4090"})
        assert rv.status_code == 202, rv.json
        assert rv.headers["Location"] == f"/api/v1/tasks/{rv.json['task_id']}"
        assert stack.api("POST", "/api/v1/warmpool/provision", json={
            "machine_id": MACHINE, "host_machine_id": host["machine_id"]}).status_code == 409
        task = stack.wait_task(rv.json["task_id"])
        assert task["state"] == "SUCCESS", task
        assert stack.api("GET", rv.headers["Location"]).json["result"]["status"]["state"] == "active"
        status = stack.api("GET", f"/api/v1/warmpool/status/{MACHINE}").json
        assert status["state"] == "active" and status["standby_state"] == "stopped"
        assert status["host_machine_id"] == host["machine_id"] and status["primary_ssh_port"]
        expected = {status["primary_gpu_id"]: "running", status["standby_gpu_id"]: "stopped"}
        wait_until(lambda: {i["id"]: i["actual_status"] for i in pool_resources(stack)[0]} == expected,
                   message="the primary running and the standby stopped")
        instances, volumes = pool_resources(stack)
        assert [v["id"] for v in volumes] == [status["volume_id"]]
        assert {i["volume_id"] for i in instances} == {status["volume_id"]}

        # failover test, synchronous with ?wait
        rv = stack.api("POST", f"/api/v1/warmpool/failover/test/{MACHINE}?wait=30")
        assert rv.status_code == 200, rv.json
        assert rv.json["success"] and rv.json["message"] == "Failover test completed"
        assert rv.json["new_primary_gpu_id"] == status["standby_gpu_id"]
        assert 0 < rv.json["recovery_time_seconds"] < 30
        status = stack.wait_state(MACHINE, "active")
        assert status["failover_count"] == 1 and status["primary_gpu_id"] == rv.json["new_primary_gpu_id"]
        assert set(status["last_failover"]["phases"]) >= {"fence_old_primary", "start_standby", "promote",
                                                          "replace_standby"}
        instances, _ = pool_resources(stack)
        assert len(instances) == 2 and status["standby_gpu_id"] in {i["id"] for i in instances}

        # automatic failover after the simulator fails the primary
        failed = status["primary_gpu_id"]
        stack.sim("POST", f"/_sim/instances/{failed}/fail")
        status = wait_until(lambda: (p := stack.pool(MACHINE))["failover_count"] == 2 and p["state"] == "active"
                            and p, message="the automatic failover")
        assert status["primary_gpu_id"] != failed
        assert status["last_failover"]["trigger"] == "health" and "detect" in status["last_failover"]["phases"]
        assert failed not in {i["id"] for i in pool_resources(stack)[0]}

        # disable: resources kept, no health checks
        rv = stack.api("POST", f"/api/v1/warmpool/disable/{MACHINE}")
        assert rv.status_code == 200 and rv.json["fallback"] == "cpu_standby"
        assert stack.pool(MACHINE)["state"] == "disabled"
        stack.sim("POST", f"/_sim/instances/{status['primary_gpu_id']}/fail")
        stack.wait_sweeps(4)  # several sweeps pass without a failover
        assert stack.pool(MACHINE)["failover_count"] == 2 and len(pool_resources(stack)[0]) == 2

        # enable: back to active, and the failed primary is failed over
        rv = stack.api("POST", f"/api/v1/warmpool/enable/{MACHINE}")
        assert rv.status_code == 200 and rv.json["status"] == "enabled"
        wait_until(lambda: (p := stack.pool(MACHINE))["failover_count"] == 3 and p["state"] == "active",
                   message="the failover after enable")

        # cleanup: nothing left on the provider, history kept
        rv = stack.api("DELETE", f"/api/v1/warmpool/cleanup/{MACHINE}?wait=30")
        assert rv.status_code == 200, rv.json
        assert rv.json == {"success": True, "message": f"Warm pool for machine {MACHINE} cleaned up"}
        assert pool_resources(stack) == ([], [])
        status = stack.api("GET", f"/api/v1/warmpool/status/{MACHINE}").json
        assert status["state"] == "disabled" and status["failover_count"] == 3
        assert (status["primary_gpu_id"], status["standby_gpu_id"], status["volume_id"]) == (None, None, None)
    assert watch.most_running <= 1
