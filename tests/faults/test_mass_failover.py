"""A correlated failure on real processes, Vast's rate limits on: every pool's primary fails at once.

Every pool recovers, none is deferred by the cap, and never two instances run on one volume
(``clean_stack``). The order of the provider calls by priority is checked where it is decided
(tests/unit/test_budget.py: ranked slots and ``put_turn``).
"""

import pytest

from tests.conftest import wait_until
from tests.faults.test_faults import free_hosts

pytestmark = pytest.mark.timeout(300)

PRIORITIES = {301: 2, 302: 0, 303: 1, 304: 2, 305: 0, 306: 1}


def test_every_pool_of_a_correlated_failure_recovers_none_deferred(clean_stack):
    stack = clean_stack
    tasks = {}
    for (machine, priority), host in zip(PRIORITIES.items(), free_hosts(stack, len(PRIORITIES))):
        rv = stack.api("POST", "/api/v1/warmpool/provision", json={
            "machine_id": machine, "host_machine_id": host, "gpu_name": "RTX_4090", "priority": priority})
        assert rv.status_code == 202, rv.json
        tasks[machine] = rv.json["task_id"]
    standbys = {}
    for machine, task in tasks.items():
        assert stack.wait_task(task, timeout=60)["state"] == "SUCCESS"
        pool = stack.wait_state(machine, "active")
        assert stack.api("GET", f"/api/v1/warmpool/status/{machine}").json["priority"] == PRIORITIES[machine]
        standbys[machine] = pool["standby_gpu_id"]
    for machine in PRIORITIES:
        stack.sim("POST", f"/_sim/instances/{stack.pool(machine)['primary_gpu_id']}/fail")

    def recovered():
        return all((p := stack.pool(m))["primary_gpu_id"] == standbys[m] and p["state"] == "active"
                   and not stack.store.is_locked(f"acme:{m}") for m in PRIORITIES)

    wait_until(recovered, timeout=120, interval=0.2, message="every pool failed over and back to active")
    for machine in PRIORITIES:
        events = [e["event"] for e in stack.store.events(f"acme:{machine}", limit=100)]
        assert "failover_cancelled" not in events, events
        assert stack.pool(machine)["failover_count"] == 1
        assert len(stack.running(f"warmpool-acme-{machine}-")) == 1
