"""The split-brain guard (rule 14): two instances up on one pool's volume, seen by the health sweep or left by
a rebuild of a lost record, are resolved by stopping every one the pool record does not name as its primary."""

import contextlib

from celery import shared_task

from app import runtime
from app.pools import State, instance_labels, split_pool_id
from app.store import FencedOut
from tasks.base import fenced_by


@shared_task(name="warmpool.health.guard_split_brain")
def guard_split_brain(pid: str, reason: str) -> list[int]:
    """Two instances up on one pool's volume (rule 14): stop every one that the pool record does not name as
    its primary. A busy pool is left to its operation, which checks the same thing before it starts anything."""
    s, cfg = runtime.store(), runtime.settings()
    stopped: list[int] = []
    with contextlib.suppress(FencedOut), s.lease_if_free(pid, cfg.lock_ttl) as lease:
        pool = lease and s.get_pool(pid)
        if not pool or pool["state"] not in (State.ACTIVE, State.DEGRADED):
            return stopped
        tenant, machine_id = split_pool_id(pid)
        # the lock kept alive, and each stop sent only while it is still ours (rule 12)
        with s.heartbeat(pid, lease.held, cfg.lock_ttl), fenced_by(pid, lease.held):
            for row in runtime.vast().labelled(*instance_labels(tenant, machine_id)):
                if row["id"] != pool["primary_gpu_id"] and row.get("intended_status") == "running":
                    runtime.vast().stop_instance(row["id"])
                    stopped.append(row["id"])
        if stopped:
            s.event(pid, "split_brain_resolved", f"{reason}: stopped {stopped}, kept primary {pool['primary_gpu_id']}",
                    stopped=stopped)
    return stopped
