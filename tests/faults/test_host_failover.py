"""A whole host failing under a pool with a replica on another host, on real processes.

The pool is provisioned with ``"replica": true``; the simulator fails its host
(``POST /_sim/hosts/<id>/fail``: instances and volume offline, copies from it lost). Each case
checks the ledger: the data the new primary's volume holds (``data_version``), what runs where,
nothing leaked, and never two instances up on one volume. REPLICA_COPY_INTERVAL is 1 s in tests.
"""

import time
from datetime import datetime

import pytest

from tests.conftest import LedgerWatch, wait_until
from tests.faults.test_faults import assert_nothing_leaked, free_hosts

pytestmark = pytest.mark.timeout(150)


# -- helpers ---------------------------------------------------------------------------------


def replicated(stack, machine: int, volume_size: int = 1, by_enable: bool = False) -> dict:
    """A pool with a replica that holds data (its first copy landed), asked for in the provision body or, with
    ``by_enable``, by an enable of the provisioned pool."""
    host = free_hosts(stack, 1)[0]
    rv = stack.api("POST", "/api/v1/warmpool/provision", json={
        "machine_id": machine, "host_machine_id": host, "gpu_name": "RTX_4090", "volume_size": volume_size,
        "replica": not by_enable})
    assert rv.status_code == 202, rv.json
    assert stack.wait_task(rv.json["task_id"])["state"] == "SUCCESS"
    if by_enable:
        assert stack.pool(machine)["replica_volume_id"] is None
        rv = stack.api("POST", f"/api/v1/warmpool/enable/{machine}", json={"replica": True})
        assert rv.status_code == 200 and stack.pool(machine)["replica"] is True, rv.json
    pool = wait_until(lambda: (p := stack.pool(machine))["replica_data_at"] and p, timeout=30,
                      message="the replica's first copy to land")
    assert pool["replica_host_machine_id"] not in (None, host)
    status = stack.api("GET", f"/api/v1/warmpool/status/{machine}").json
    assert {k: status[k] for k in ("replica", "replica_host_machine_id", "replica_volume_id", "replica_data_at")} == {
        "replica": True, **{k: pool[k] for k in ("replica_host_machine_id", "replica_volume_id", "replica_data_at")}}
    return pool


def write(stack, volume_id: int) -> tuple[int, float]:
    """Something writes to the volume: its data version goes up. Returns (version, when)."""
    return stack.sim("POST", f"/_sim/volumes/{volume_id}/write")["data_version"], time.time()


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def copied_since(stack, machine: int, since: float) -> dict:
    """The pool once its replica holds data from after ``since``."""
    return wait_until(lambda: (p := stack.pool(machine))["replica_data_at"] and epoch(p["replica_data_at"]) > since
                      and p, timeout=30, message="a copy started after the write to land")


def moved(stack, machine: int, host: int, timeout: float = 60.0) -> dict:
    """The pool once it runs on ``host`` with a standby, and no operation holds it."""
    return wait_until(lambda: (p := stack.pool(machine))["host_machine_id"] == host and p["state"] == "active"
                      and p["standby_gpu_id"] is not None and not stack.store.is_locked(f"acme:{machine}") and p,
                      timeout=timeout, message=f"machine {machine}'s pool to run on host {host}")


def volumes(stack) -> dict[int, dict]:
    return {v["id"]: v for v in stack.ledger()["volumes"]}


def instances(stack) -> dict[int, dict]:
    return {i["id"]: i for i in stack.ledger()["instances"]}


def events(stack, machine: int, kind: str) -> list[dict]:
    return [e for e in stack.store.events(f"acme:{machine}", limit=200) if e["event"] == kind]


def with_new_replica(stack, machine: int, old_hosts: set[int]) -> dict:
    """The pool once it has a replica holding data on a host that is none of ``old_hosts``."""
    return wait_until(lambda: (p := stack.pool(machine))["replica_data_at"]
                      and p["replica_host_machine_id"] not in old_hosts and p, timeout=30,
                      message="a new replica on a third host")


# -- cases -----------------------------------------------------------------------------------


def test_a_whole_host_failure_moves_the_pool_to_its_replica(clean_stack):
    stack, machine = clean_stack, 51
    first = replicated(stack, machine)
    # a failover whose host is fine stays on it
    rv = stack.api("POST", f"/api/v1/warmpool/failover/test/{machine}?wait=30")
    assert rv.status_code == 200 and rv.json["success"], rv.json
    before = stack.wait_state(machine, "active")
    assert (before["host_machine_id"], before["volume_id"], before["failover_count"]) == (
        first["host_machine_id"], first["volume_id"], 1)
    version, written = write(stack, before["volume_id"])
    before = copied_since(stack, machine, written)
    host, replica_host = before["host_machine_id"], before["replica_host_machine_id"]
    old = {before["primary_gpu_id"], before["standby_gpu_id"]}
    with LedgerWatch(stack) as watch:
        stack.sim("POST", f"/_sim/hosts/{host}/fail")
        pool = moved(stack, machine, replica_host)
        pool = with_new_replica(stack, machine, {host, replica_host})
    # the primary runs on the replica's host, on the replica volume, with the data written before the last copy
    assert pool["volume_id"] == before["replica_volume_id"] and pool["failover_count"] == 2
    rows = instances(stack)
    primary, standby = rows[pool["primary_gpu_id"]], rows[pool["standby_gpu_id"]]
    assert (primary["machine_id"], primary["volume_id"], primary["actual_status"]) == (
        replica_host, pool["volume_id"], "running")
    assert (standby["machine_id"], standby["volume_id"], standby["intended_status"]) == (
        replica_host, pool["volume_id"], "stopped")
    assert volumes(stack)[pool["volume_id"]]["data_version"] == version
    completed = events(stack, machine, "host_failover_completed")[0]
    assert epoch(completed["data_at"]) >= epoch(before["replica_data_at"]) and completed["data_age_seconds"] >= 0
    assert (completed["from_host_machine_id"], completed["to_host_machine_id"]) == (host, replica_host)
    # the event says where the moved primary is reached: the replica host's address and the primary's port map
    assert (completed["primary_public_ipaddr"], completed["primary_ports"], completed["primary_ssh_port"]) == (
        pool["primary_public_ipaddr"], pool["primary_ports"], pool["primary_ssh_port"])
    assert "22/tcp" in pool["primary_ports"]
    assert completed["primary_public_ipaddr"] != before["primary_public_ipaddr"]
    assert pool["last_failover"]["host_failover"] and "replace_standby" in pool["last_failover"]["phases"]
    # the old host's instances and volume are gone; the new replica got the data too
    assert not old & set(rows) and before["volume_id"] not in volumes(stack)
    assert volumes(stack)[pool["replica_volume_id"]]["data_version"] == version
    assert_nothing_leaked(stack)
    assert watch.most_running <= 1
    # turned off: the replica is deleted
    replica = pool["replica_volume_id"]
    assert stack.api("POST", f"/api/v1/warmpool/enable/{machine}", json={"replica": False}).status_code == 200
    wait_until(lambda: stack.pool(machine)["replica_volume_id"] is None and replica not in volumes(stack),
               timeout=30, message="the replica to be deleted")
    assert events(stack, machine, "replica_removed") and stack.pool(machine)["replica_host_machine_id"] is None
    assert_nothing_leaked(stack)


def test_a_host_failing_during_a_copy(clean_stack):
    stack, machine = clean_stack, 52
    before = replicated(stack, machine, volume_size=50)  # a copy takes about 2 s
    first, written = write(stack, before["volume_id"])
    copied_since(stack, machine, written)
    second, rewritten = write(stack, before["volume_id"])
    before = wait_until(lambda: (p := stack.pool(machine))["replica_copy_started"]
                        and p["replica_copy_started"] > rewritten and p, timeout=30,
                        message="a copy of the second write under way")
    assert epoch(before["replica_data_at"]) < rewritten  # the replica still holds the first write only
    with LedgerWatch(stack) as watch:
        stack.sim("POST", f"/_sim/hosts/{before['host_machine_id']}/fail")
        pool = moved(stack, machine, before["replica_host_machine_id"])
    # the copy in flight was lost with the host: the pool runs on the data of the last copy that landed
    volume = volumes(stack)[pool["volume_id"]]
    assert (volume["data_version"], volume["copy"]["state"]) == (first, "cancelled") and second == first + 1
    completed = events(stack, machine, "host_failover_completed")[0]
    assert completed["data_at"] == before["replica_data_at"]
    assert completed["data_age_seconds"] >= rewritten - epoch(before["replica_data_at"])  # the lost write counts
    with_new_replica(stack, machine, {before["host_machine_id"], before["replica_host_machine_id"]})
    assert_nothing_leaked(stack)
    assert watch.most_running <= 1


def test_the_old_host_coming_back_after_a_move(clean_stack):
    stack, machine = clean_stack, 53
    before = replicated(stack, machine, by_enable=True)
    host, replica_host = before["host_machine_id"], before["replica_host_machine_id"]
    old = {before["primary_gpu_id"], before["standby_gpu_id"]}
    with LedgerWatch(stack) as watch:
        stack.sim("POST", f"/_sim/hosts/{host}/fail")
        # the old instances are fenced (stopped) and the new primary is on its way: the old host comes back now
        wait_until(lambda: ((p := stack.pool(machine)).get("moving") or {}).get("old_instance_ids"),
                   timeout=30, interval=0.01, message="the old host to be fenced")
        stack.sim("POST", f"/_sim/hosts/{host}/restore")
        assert not [i for i in instances(stack).values() if i["id"] in old and i["intended_status"] == "running"]
        pool = moved(stack, machine, replica_host)
        stack.wait_sweeps(5)  # sweeps pass: nothing moves back, nothing of the old host runs
    assert stack.pool(machine)["primary_gpu_id"] == pool["primary_gpu_id"] and pool["failover_count"] == 1
    assert not old & set(instances(stack)) and before["volume_id"] not in volumes(stack)
    assert [i["machine_id"] for i in stack.running(f"warmpool-acme-{machine}-")] == [replica_host]
    assert_nothing_leaked(stack)
    assert watch.most_running <= 1


def test_a_replica_host_with_no_free_gpu(clean_stack):
    stack, machine = clean_stack, 54
    before = replicated(stack, machine)
    host, replica_host = before["host_machine_id"], before["replica_host_machine_id"]
    stack.sim("POST", f"/_sim/hosts/{replica_host}/rent_out")  # other renters take every GPU there
    with LedgerWatch(stack) as watch:
        stack.sim("POST", f"/_sim/hosts/{host}/fail")
        failed = wait_until(lambda: [e for e in events(stack, machine, "failover_failed") if e.get("host_failover")],
                            timeout=60, message="the move to fail")
        pool = stack.wait_state(machine, "degraded")
        # the pool stays on its lost host, degraded: nothing it rented is left, nothing runs
        assert (pool["host_machine_id"], pool["fallback"], pool.get("moving")) == (host, "cpu_standby", None)
        assert f"host {replica_host}" in failed[-1]["message"] and "no rentable GPU" in pool["error_message"]
        assert not stack.running(f"warmpool-acme-{machine}-")
        assert_nothing_leaked(stack)
        # the replica's host gets its GPUs back: the healer moves the pool there
        stack.sim("POST", f"/_sim/hosts/{replica_host}/restore")
        pool = moved(stack, machine, replica_host, timeout=90)
    assert pool["volume_id"] == before["replica_volume_id"] and pool["failover_count"] == 1
    assert_nothing_leaked(stack)
    assert watch.most_running <= 1
