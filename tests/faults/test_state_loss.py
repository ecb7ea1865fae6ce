"""Redis loses its data; the provider is the truth (rule 13 in docs/architecture.md).

Each case runs real processes and checks the simulator's ledger: every pool comes
back with the same resources, nothing live is destroyed (even by a reconciler that
destroys orphans at once, with no grace period and no share cap), and a failover
works afterwards.
"""

import shutil
import signal

import pytest

from app.store import keys
from tasks import celery_app
from tests.conftest import LedgerWatch, wait_until
from tests.faults.test_faults import assert_nothing_leaked, free_hosts, provision, provisioned, wait_step

pytestmark = pytest.mark.timeout(90)

# orphans destroyed at the first sight: only adoption can keep a pool's resources alive
DESTROY_AT_ONCE = {"RECONCILE_DESTROY_ORPHANS": "true", "RECONCILE_GRACE": "0", "RECONCILE_MAX_SHARE": "1"}
HASHED_TENANT, HASHED_KEY = "team.x", "team-x-key"  # '.' does not fit a volume name: the name is hashed


@pytest.fixture
def destroying(clean_stack):
    """The stack whose worker destroys orphans at once."""
    stack = clean_stack
    stack.worker.stop()
    stack.worker = stack.new_worker("w-destroy", **DESTROY_AT_ONCE)
    yield stack
    stack.worker.stop()
    stack.worker = stack.new_worker("w1")


def resources(stack, pids: list[str]) -> dict[str, tuple]:
    """What each pool record names: host, volume, primary, standby (None for a pool with no record)."""
    pools = {pid: stack.store.get_pool(pid) for pid in pids}
    return {pid: pool and (pool["state"], pool["host_machine_id"], pool["volume_id"], pool["primary_gpu_id"],
                           pool["standby_gpu_id"]) for pid, pool in pools.items()}


def live_ids(stack) -> set[int]:
    ledger = stack.ledger()
    return {i["id"] for i in ledger["instances"]} | {v["id"] for v in ledger["volumes"]}


def created(stack) -> dict[str, int]:
    stats = stack.sim("GET", "/_sim/stats")
    return {**stats["created_by_label"], **stats["volumes_created_by_name"]}


def provision_three(stack) -> list[str]:
    """Two pools of acme and one of a tenant whose volume name is hashed; all active."""
    provisioned(stack, [61, 62])
    stack.store.add_api_key(HASHED_TENANT, HASHED_KEY)
    rv = stack.client.post("/api/v1/warmpool/provision", headers={"Authorization": f"Bearer {HASHED_KEY}"},
                           json={"machine_id": 63, "host_machine_id": free_hosts(stack, 3)[-1],
                                 "gpu_name": "RTX_4090"})
    assert rv.status_code == 202, rv.json
    assert stack.wait_task(rv.json["task_id"])["state"] == "SUCCESS"
    stack.wait_state(63, "active", tenant=HASHED_TENANT)
    return ["acme:61", "acme:62", f"{HASHED_TENANT}:63"]


def reconciled(stack, times: int = 1) -> None:
    """Wait until the reconciler has run to its end ``times`` more times (it writes the orphan count last)."""
    for _ in range(times):
        stack.redis.delete(keys.ORPHANS)
        wait_until(lambda: stack.redis.exists(keys.ORPHANS), timeout=20, message="a reconcile to end")


def assert_recovered(stack, pids: list[str], before: dict, live_before: set[int], created_before: dict) -> None:
    """Every pool back with the same resources, each saying it was rebuilt; nothing destroyed or created."""
    wait_until(lambda: resources(stack, pids) == before, timeout=20, message="every pool rebuilt as it was")
    for pid in pids:
        assert any(e["event"] == "pool_rebuilt" for e in stack.store.events(pid)), pid
    reconciled(stack, 2)  # the reconciler, which destroys orphans at once, has seen the rebuilt pools
    assert resources(stack, pids) == before
    assert live_ids(stack) >= live_before  # nothing destroyed
    assert created(stack) == created_before  # nothing created again


def test_flushall_with_orphan_destruction_on(destroying):
    stack = destroying
    pids = provision_three(stack)
    before, live_before, created_before = resources(stack, pids), live_ids(stack), created(stack)
    with LedgerWatch(stack) as watch:
        stack.redis.flushall()
        assert_recovered(stack, pids, before, live_before, created_before)
        rv = stack.api("GET", "/api/v1/warmpool/status/61")
        assert rv.status_code == 200 and rv.json["state"] == "active"
        # a failover works on a rebuilt pool
        rv = stack.api("POST", "/api/v1/warmpool/failover/test/61")
        assert rv.status_code == 202, rv.json
        assert stack.wait_task(rv.json["task_id"])["state"] == "SUCCESS"
        pool = stack.wait_state(61, "active")
    assert pool["primary_gpu_id"] == before["acme:61"][4] and pool["failover_count"] == 1
    assert watch.most_running == 1
    assert_nothing_leaked(stack)


def test_redis_restart_without_persistence(destroying):
    stack = destroying
    pids = provision_three(stack)
    before, live_before, created_before = resources(stack, pids), live_ids(stack), created(stack)
    server = stack.redis_server
    server.stop()
    for path in server.dir.iterdir():  # no AOF, no snapshot: it starts empty
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    server.start()
    assert stack.store.tenant_for_key(HASHED_KEY, {}) is None  # nothing came back from disk (keys are not rebuilt)
    assert_recovered(stack, pids, before, live_before, created_before)
    assert_nothing_leaked(stack)


def test_a_step_in_flight_during_a_flushall_is_fenced_out(clean_stack):
    """Epochs start above the server clock in microseconds, so the lock the rebuild takes after a loss outranks
    the one a step took before it. The step, whose create answers after the loss, writes nothing and does not
    destroy what it made: the rebuilt pool adopted it."""
    stack = clean_stack
    task = provision(stack, [91])[91]
    wait_step(stack, [task], "await_primary")
    # the standby's create is carried out, its answer held
    stack.sim("POST", "/_sim/faults", json={"routes": {"PUT /api/v0/asks/{id}/": {"hold_s": 4, "times": 1}}})
    standby = wait_until(lambda: next((i["id"] for i in stack.ledger()["instances"]
                                       if i["label"] == "warmpool-acme-91-standby"), None),
                         timeout=20, message="the standby's create")
    epoch_before = stack.store.epoch("acme:91")
    stack.redis.flushall()
    pool = wait_until(lambda: stack.pool(91), timeout=20, message="the pool to be rebuilt")
    assert (pool["state"], pool["standby_gpu_id"]) == ("active", standby)
    assert stack.store.epoch("acme:91") > epoch_before
    wait_until(lambda: "lock of acme:91 lost to a newer holder" in stack.worker.log.read_text(), timeout=20,
               message="the step to wake up fenced out")
    assert stack.pool(91) == pool  # it wrote nothing
    assert standby in live_ids(stack) and created(stack)["warmpool-acme-91-standby"] == 1
    assert_nothing_leaked(stack)


def test_flushall_during_a_failover_that_retired_the_old_primary(destroying):
    """The old primary is destroyed, the new one not relabelled yet, and Redis loses everything: the rebuild
    keeps the running instance as primary and gives it the primary's label, so no sweep takes it for gone."""
    stack = destroying
    provisioned(stack, [75])
    before = stack.pool(75)
    old, new = before["primary_gpu_id"], before["standby_gpu_id"]
    with LedgerWatch(stack) as watch:
        stack.sim("POST", "/_sim/faults",
                  json={"routes": {"DELETE /api/v0/instances/{id}/": {"hold_s": 3, "times": 1}}})
        assert stack.api("POST", "/api/v1/warmpool/failover/test/75").status_code == 202
        wait_until(lambda: old not in live_ids(stack), timeout=20, message="the old primary's destroy")
        stack.redis.flushall()
        pool = wait_until(lambda: (p := stack.pool(75)) and p["state"] == "active" and p, timeout=30,
                          message="the pool rebuilt and healed")
    assert (pool["primary_gpu_id"], pool["volume_id"]) == (new, before["volume_id"])
    assert label_of(stack, new) == "warmpool-acme-75-primary" and new in live_ids(stack)
    events = [e["event"] for e in stack.store.events("acme:75")]
    assert "pool_rebuilt" in events and "primary_failed" not in events
    assert watch.most_running == 1


def test_reconcile_racing_an_interrupted_failover(clean_stack):
    """A failover stopped after it started the standby: the new primary still carries the standby's label,
    no pool references it as a standby, and the lock has expired. The reconciler must not destroy it."""
    stack = clean_stack
    stack.worker.stop()
    stack.worker = stack.new_worker("w-short-lock", LOCK_TTL="3")  # its lock expires soon once it is frozen
    reconciler = None
    try:
        provisioned(stack, [71])
        before = stack.pool(71)
        old, new = before["primary_gpu_id"], before["standby_gpu_id"]
        stack.beat.stop()  # from here on, only what the test sends runs
        with LedgerWatch(stack) as watch:
            # the destroy of the old primary is carried out, its answer held: the failover hangs right there
            stack.sim("POST", "/_sim/faults",
                      json={"routes": {"DELETE /api/v0/instances/{id}/": {"hold_s": 10, "times": 1}}})
            assert stack.api("POST", "/api/v1/warmpool/failover/test/71").status_code == 202
            wait_until(lambda: old not in live_ids(stack), timeout=20, message="the old primary's destroy")
            stack.worker.signal(signal.SIGSTOP)
            wait_until(lambda: not stack.store.is_locked("acme:71"), timeout=10, message="the lock to expire")
            assert stack.pool(71)["primary_gpu_id"] == new and stack.pool(71)["standby_gpu_id"] is None
            assert label_of(stack, new) == "warmpool-acme-71-standby"
            reconciler = stack.new_worker("w-reconcile", **DESTROY_AT_ONCE)
            for _ in range(3):
                celery_app.send_task("warmpool.health.sweep")
                celery_app.send_task("warmpool.reconcile.reconcile")
                reconciled(stack)
            assert new in live_ids(stack) and label_of(stack, new) == "warmpool-acme-71-standby"
            # the healer finishes the failover: the new primary gets its label, a new standby is made
            stack.worker.signal(signal.SIGCONT)
            stack.beat.start()
            pool = wait_until(lambda: (p := stack.pool(71)) and p["state"] == "active" and p, timeout=30,
                              message="the healer to finish the failover")
        assert pool["primary_gpu_id"] == new and pool["failover_count"] == 1
        assert label_of(stack, new) == "warmpool-acme-71-primary"
        assert watch.most_running == 1
    finally:
        stack.sim("POST", "/_sim/faults", json={})
        stack.worker.signal(signal.SIGCONT)
        for worker in (reconciler, stack.worker):
            if worker:
                worker.stop()
        stack.worker = stack.new_worker("w1")


def label_of(stack, instance_id: int) -> str | None:
    return next((i["label"] for i in stack.ledger()["instances"] if i["id"] == instance_id), None)
