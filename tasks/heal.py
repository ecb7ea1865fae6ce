"""The healer: beat runs it every HEAL_INTERVAL seconds.

It visits only unsettled pools (an index kept with every pool write): degraded
ones that are due, and ones whose operation was interrupted (a killed worker: its
lock expired). ``repair`` brings one pool back with what it lacks; an interrupted
operation goes on under its original task id.
"""

import time

from celery import shared_task

from app import operations, runtime
from app import vast as provider
from app.hosts import offers_query
from app.pools import State, epoch_seconds, never_held, pool_id, to_active, to_given_up, to_searching
from app.store import OP_ENDED
from tasks.base import Operation
from tasks.provision import is_running

# a pool that never held anything stops being healed after this many failed provisions: its spec cannot be met
# (a GPU name no host has), and each retry spends the shared rate budget
NEVER_HELD_ATTEMPTS = 3


@shared_task(name="warmpool.heal.heal")
def heal() -> int:
    """Find the unsettled pools that are due and not held by a running operation; repair them."""
    s, cfg = runtime.store(), runtime.settings()
    now = time.time()
    due = []
    for pool in s.get_pools(s.unsettled_pool_ids()):
        pid = pool_id(pool["tenant"], pool["machine_id"])
        op = pool["op_id"] and s.get_op(pool["op_id"])
        if pool["state"] == State.DEGRADED and pool["next_heal_at"] > now:
            continue
        if op and op["state"] not in OP_ENDED and now - epoch_seconds(op["updated_at"]) < cfg.lock_ttl:
            continue  # its next step may just be on its way
        if not s.is_locked(pid):
            due.append(pid)
            repair.delay(pid)
    return len(due)


@shared_task(name="warmpool.heal.repair")
def repair(pid: str) -> str:
    """Bring one pool back to active with what it lacks; an interrupted operation goes on under its id."""
    s, cfg = runtime.store(), runtime.settings()
    with s.lease_if_free(pid, cfg.lock_ttl) as lease:
        pool = lease and s.get_pool(pid)
        if not pool or not (pool.get("cleanup_pending") or pool["enabled"] and pool["state"] != State.ACTIVE):
            return "nothing to do"
        op = pool["op_id"] and s.get_op(pool["op_id"])
        op_id = op["task_id"] if op and op["state"] not in OP_ENDED else None
        if pool.get("cleanup_pending"):  # asked for, maybe before any step ran: finish it
            operations.cleanup(pid, lease.hand_off(), op_id)
            return "cleanup"
        if pool["retire_gpu_id"] is not None:  # a failover stopped after its promotion
            operations.finish_failover(pid, lease.hand_off(), op_id)
            return "finish failover"
        if pool["state"] == State.FAILOVER:  # a failover decided, then interrupted
            trigger = (op or {}).get("trigger") or "heal"
            operations.failover(pid, lease.hand_off(), trigger, op_id=op_id)
            return "resume failover"
        try:
            primary_id = pool["primary_gpu_id"]
            primary = runtime.vast(pool["tenant"]).show_instance(primary_id) if primary_id else None
            if pool["primary_ssh_host"] and not is_running(primary):
                operations.failover(pid, lease.hand_off(), "heal", op_id=op_id)
                return "failover"
            if pool["host_machine_id"] and pool["standby_gpu_id"] and is_running(primary):
                if not runtime.vast(pool["tenant"]).search_offers(
                        offers_query(verified=False, machine_id=pool["host_machine_id"])):
                    return _retry_later(pid, lease, f"host {pool['host_machine_id']} still has no free GPU")
                to_active(pool)
                s.save_pool(pool, lease.held)
                s.event(pid, "healed", "the host has a free GPU again")
                return "active"
        except provider.VastError as exc:
            return _retry_later(pid, lease, f"provider unavailable ({exc})")
        if never_held(pool) and pool["heal_attempts"] >= NEVER_HELD_ATTEMPTS:
            reason = (f"healing stopped: it never held an instance and {pool['heal_attempts']} provisions failed "
                      f"(last: {pool['error_message']}); enable it again to retry")
            to_given_up(pool, reason)
            s.save_pool(pool, lease.held)
            s.event(pid, "heal_given_up", reason)
            return "given up"
        search = pool["host_machine_id"] is None
        if search and pool["state"] != State.SEARCHING:
            to_searching(pool)
            s.save_pool(pool, lease.held)
        operations.provision(pid, lease.hand_off(), op_id, search)
        return "provision"


def _retry_later(pid: str, lease, reason: str) -> str:
    Operation(*operations.begin(pid, "heal", lease.hand_off())).fail(f"heal postponed: {reason}")
    return "retry later"
