"""Moving a pool to its replica's host when its own host fails (pools with a replica: ``tasks/replica.py``).

A host failure loses the primary, the standby and the volume at once: a failover on the same host
cannot help. In the failover of a pool with a replica, ``check_host`` asks for the primary and the
standby (one list call); when both are offline or gone, at least one offline, and the replica
holds data, the failover branches to the move (``app/operations.py: HOST_FAILOVER``):

1. ``fence_old_host``: stop every instance of the pool on the old host (the host may come back,
   and its instances must not run beside the new primary), and cancel a copy into the replica
   (it would land on the new primary's volume later);
2. ``rent_on_replica_host``: rent a GPU on the replica's host, linked to the replica volume,
   labelled primary (a lost create is adopted, rule 12);
3. ``await_moved_primary``: wait until it runs;
4. ``promote_moved``: the pool lives on the replica's host now, its volume the replica; event
   ``host_failover_completed`` with ``data_age_seconds`` (how old the data is at the failure);
5. ``retire_old_host``: destroy the old instances and delete the old volume; what the provider
   refuses while the old host is offline, the replica upkeep tries again later;
6. ``create_standby``: a standby on the new host, as after any failover. The replica upkeep then
   makes a new replica on a third host.

Every step is fenced like any failover step. Until ``promote_moved`` the pool record still names
the old host, so a move that fails (the replica's host has no free GPU) leaves the pool degraded
as it was, with fallback cpu_standby; the healer fails it over again with backoff, and the move is
tried again from the start.
"""

import time

from celery import shared_task

from app import vast as provider
from app.operations import HOST_FAILOVER, NEXT, Branch, StepOutcome, Wait
from app.pools import (FieldMissing, Pool, address_of, epoch_seconds, instance_labels, known_ids, label, primary_fields,
                       required, to_promoted)
from tasks.base import Operation, OperationFailed, Step
from tasks.provision import NOT_RUNNING, create_once, is_running, rent
from tasks.replica import NO_REPLICA, retire_host

def host_lost(rows: dict[int, dict], ids: list[int]) -> bool:
    """Whether the primary and the standby were lost with their host: each offline or gone, one offline."""
    statuses = [rows[i].get("actual_status") if i in rows else "gone" for i in ids]
    return "offline" in statuses and set(statuses) <= {"offline", "gone"}


def has_replica_data(pool: Pool) -> bool:
    """Whether the pool's replica holds data: a replica that never completed a copy has nothing to move to, so
    the failover stays on the pool's own host."""
    return bool(pool.get("replica_volume_id") and pool.get("replica_data_at"))


@shared_task(bind=True, base=Step, name="warmpool.failover.check_host")
def check_host(self, op: Operation) -> StepOutcome:
    """In the failover of a pool with a replica: when the host is lost, move to the replica's host instead."""
    op.step("check_host")
    pool = op.pool
    if pool.get("moving") is None:  # a move decided before (and interrupted) goes on
        if not has_replica_data(pool):
            return NEXT  # no replica holding data yet: the failover on the same host is all there is
        ids = [i for i in (pool["primary_gpu_id"], pool["standby_gpu_id"]) if i is not None]
        rows = {row["id"]: row for row in op.vast.list_instances({"id": {"in": ids}}).instances}
        if not host_lost(rows, ids):
            return NEXT
        op.save(moving={"host_machine_id": required(pool, "replica_host_machine_id"),
                        "volume_id": required(pool, "replica_volume_id"),
                        "data_at": required(pool, "replica_data_at"), "primary_gpu_id": None})
    return Branch(HOST_FAILOVER.name)  # the move goes on with this failover's op record and lock


@shared_task(bind=True, base=Step, name="warmpool.failover.fence_old_host")
def fence_old_host(self, op: Operation) -> StepOutcome:
    op.step("fence_old_host")
    pool, moving = op.pool, required(op.pool, "moving")
    if not op.ctx.get("announced"):
        op.event("failover_started", f"failover of primary {pool['primary_gpu_id']} ({op.ctx['trigger']}): host "
                                     f"{pool['host_machine_id']} is lost with its primary and standby; moving to the "
                                     f"replica's host {moving['host_machine_id']}", trigger=op.ctx["trigger"],
                 host_failover=True)
        op.ctx["announced"] = True
    rows = op.vast.labelled(*instance_labels(op.tenant, op.machine_id))
    old = sorted({row["id"] for row in rows if row.get("machine_id") == pool["host_machine_id"]}
                 | known_ids(pool["primary_gpu_id"], pool["standby_gpu_id"]))
    for instance_id in old:
        try:
            op.vast.stop_instance(instance_id)
        except provider.NotFound:
            pass
        except provider.RequestRejected as exc:  # destroyed when the old host is retired
            op.event("stop_refused", f"instance {instance_id} on the lost host: {exc}", instance_id=instance_id)
    try:
        op.vast.cancel_copy(moving["volume_id"])
    except provider.NotFound:
        pass
    op.ctx.pop("gpu_offer", None)  # an offer found on the old host
    op.ctx["fenced_at"] = time.time()
    op.save(moving={**moving, "old_instance_ids": old})
    return NEXT


@shared_task(bind=True, base=Step, name="warmpool.failover.rent_on_replica_host")
def rent_on_replica_host(self, op: Operation) -> StepOutcome:
    op.step("rent_on_replica_host")
    moving = required(op.pool, "moving")
    if moving["primary_gpu_id"] is None:
        place = {"host_machine_id": moving["host_machine_id"], "volume_id": moving["volume_id"]}
        made = create_once(op, "primary", lambda: rent(op, "primary", "running", place=place),
                           lambda: _adopt_on(op, moving["host_machine_id"]), op.vast.destroy_instance)
        op.save(moving={**moving, "primary_gpu_id": made}, creating=None)
        op.event("primary_created", f"primary {made} created on host {moving['host_machine_id']} with the replica "
                                    f"volume {moving['volume_id']}", primary_gpu_id=made)
    return NEXT


def _adopt_on(op: Operation, machine_id: int) -> int | None:
    """A primary an interrupted attempt rented on the replica's host."""
    rows = op.vast.labelled(label(op.tenant, op.machine_id, "primary"))
    return next((row["id"] for row in rows if row.get("machine_id") == machine_id), None)


@shared_task(bind=True, base=Step, name="warmpool.failover.await_moved_primary")
def await_moved_primary(self, op: Operation) -> StepOutcome:
    op.step("await_moved_primary")
    moving = required(op.pool, "moving")
    rows = op.vast.list_instances({"id": {"eq": moving["primary_gpu_id"]}}).instances
    instance = rows[0] if rows else None
    if is_running(instance):
        op.ctx["ready_at"] = time.time()
        op.save(moving={**moving, "address": primary_fields(instance)})
        return NEXT
    if instance is None or instance.get("actual_status") in NOT_RUNNING:
        raise OperationFailed(f"the primary rented on the replica's host is "
                              f"{instance and instance.get('actual_status') or 'gone'} instead of running")
    if op.within("primary_deadline", op.settings.instance_ready_timeout):
        return Wait(min(op.settings.poll_interval, 1.0))
    raise OperationFailed(f"the primary rented on the replica's host is not running after "
                          f"{op.settings.instance_ready_timeout:.0f} s")


@shared_task(bind=True, base=Step, name="warmpool.failover.promote_moved")
def promote_moved(self, op: Operation) -> StepOutcome:
    op.step("promote_moved")
    ctx, pool, moving = op.ctx, op.pool, required(op.pool, "moving")
    times = op.failover_times("fence_old_host", "start_primary")
    data_age = round(max(0.0, times.pop("lost_at") - epoch_seconds(moving["data_at"])), 3)
    phases = times["phases"]
    new_primary = moving["primary_gpu_id"]
    if new_primary is None:  # rent_on_replica_host rented it
        raise FieldMissing(op.pid, "moving.primary_gpu_id")
    last = {**times, "trigger": ctx["trigger"], "host_failover": True,
            "old_primary_gpu_id": pool["primary_gpu_id"], "new_primary_gpu_id": new_primary,
            "from_host_machine_id": pool["host_machine_id"], "to_host_machine_id": moving["host_machine_id"],
            "data_at": moving["data_at"], "data_age_seconds": data_age}
    to_promoted(pool, new_primary, **NO_REPLICA, host_machine_id=moving["host_machine_id"],
                volume_id=moving["volume_id"], **moving["address"], moving=None,
                retire_host={"host_machine_id": pool["host_machine_id"], "volume_id": pool["volume_id"],
                             "instance_ids": moving["old_instance_ids"]},
                failover_count=pool["failover_count"] + 1, last_failover_at=last["at"], last_failover=last,
                fallback=None)
    ctx["promoted"] = True
    op.advance()
    op.event("host_failover_completed", f"primary {new_primary} runs on host {moving['host_machine_id']} from the "
                                        f"replica (data of {moving['data_at']}, {data_age:.1f} s before the failure)",
             **last, **address_of(op.pool))
    op.complete({"success": True, "message": "Failover completed on the replica's host",
                 "recovery_time_seconds": round(last["recovery_time_seconds"], 1),
                 "new_primary_gpu_id": new_primary, "host_machine_id": moving["host_machine_id"],
                 "data_age_seconds": data_age, "phases": phases})
    return NEXT


@shared_task(bind=True, base=Step, name="warmpool.failover.retire_old_host")
def retire_old_host(self, op: Operation) -> StepOutcome:
    op.step("retire_old_host")
    op.ctx.setdefault("replace_started", time.time())
    if op.pool.get("retire_host"):
        op.save(**retire_host(op.pid, op.pool))
    return NEXT


def undo_move(op: Operation) -> None:
    """A move that failed before its promotion: the primary it rented is destroyed, the pool names the old host
    as before (degraded; the healer tries again). After it, the new standby is what failed: the healer makes it."""
    moving = op.pool.get("moving")
    if op.ctx.get("promoted") or moving is None:
        return
    made = moving["primary_gpu_id"] or _adopt_on(op, moving["host_machine_id"])
    if made is not None:
        op.vast.destroy_instance(made)
    op.save(moving=None, creating=None, fallback="cpu_standby")
    op.event("failover_failed", f"the move to the replica's host {moving['host_machine_id']} failed; the pool "
                                f"stays on host {op.pool['host_machine_id']}", trigger=op.ctx.get("trigger"),
             host_failover=True)
