"""Failover steps: stop the old primary, start the standby, promote it, replace the standby.

Every instance labelled as the pool's primary is confirmed stopped before the
standby starts, so a pool never has two running instances on its volume
(rule 3 in docs/architecture.md). A standby that will not start in time is given
up for a fresh instance on the same host and volume (rule 10).
"""

import time

from celery import shared_task
from celery.exceptions import Ignore

from app import vast as provider
from app.pools import State, address_of, label, primary_fields
from app.runtime import vast
from tasks.base import COMPENSATIONS, Operation, OperationFailed, Step
from tasks.provision import NOT_RUNNING, create_instance, is_running

# statuses on the way to running (or back to it): never a failure by themselves (rule 14)
TRANSITIONAL = {"loading", "created", "scheduling", "rebooting", None}


def failed_status(instance: dict | None) -> str | None:
    """Why the provider says this primary failed, or None when it does not (running or on its way)."""
    if instance is None:
        return "gone"
    if instance.get("intended_status") == "stopped":
        return "stopped by someone else"
    status = instance.get("actual_status")
    if is_running(instance) or status in TRANSITIONAL:
        return None
    return status


@shared_task(bind=True, base=Step, name="warmpool.failover.confirm_failure")
def confirm_failure(self, op: Operation):
    """Ask the provider about the primary once more; only a clear failure goes on."""
    op.step("confirm_failure")
    try:
        instance = vast().show_instance(op.ctx["old_primary"])
    except provider.VastError as exc:
        if op.ctx.get("state_before") == State.FAILOVER:
            raise  # resumed: the stop may be sent already, so ask again (retried) rather than go back to active
        verdict = f"provider unavailable ({exc})"
    else:
        if failed_status(instance):
            return op.ctx
        verdict = f"the primary is {instance.get('actual_status')}"
    op.event("failover_cancelled", f"no failover: {verdict}", trigger=op.ctx["trigger"])
    before = op.ctx.get("state_before")
    op.finish({"success": False, "message": f"Failover cancelled: {verdict}"},
              state=State.ACTIVE if before in (None, State.FAILOVER) else before)
    raise Ignore()  # ends the chain


@shared_task(bind=True, base=Step, name="warmpool.failover.stop_primary")
def stop_primary(self, op: Operation):
    op.step("stop_primary")
    if not op.ctx.get("announced"):  # once, though the step may be retried
        op.event("failover_started", f"failover of primary {op.ctx['old_primary']} ({op.ctx['trigger']})",
                 trigger=op.ctx["trigger"])
        op.ctx["announced"] = True
    try:
        vast().stop_instance(op.ctx["old_primary"])
    except provider.NotFound:
        pass  # gone already: nothing can run there
    return op.ctx


@shared_task(bind=True, base=Step, name="warmpool.failover.await_stopped")
def await_stopped(self, op: Operation):
    op.step("await_stopped")
    # every instance carrying the primary's label, not only the one we know: a leaked one must not run either,
    # nor come back later (one offline but meant to run would, with its host)
    rows = vast().list_instances({"label": {"eq": label(op.tenant, op.machine_id, "primary")}}).instances
    for row in rows:
        if row["id"] != op.ctx["old_primary"] and row.get("intended_status") != "stopped":
            vast().stop_instance(row["id"])
            op.event("split_brain_resolved", f"instance {row['id']} also carried the primary's label: stopped",
                     instance_id=row["id"])
    if not [row for row in rows if row.get("actual_status") not in NOT_RUNNING]:
        op.ctx["fenced_at"] = time.time()
        return op.ctx
    if not self.wait(op, "stop_deadline", op.settings.standby_start_timeout, interval=_fast_poll(op)):
        raise OperationFailed(f"old primary {op.ctx['old_primary']} did not stop; standby not started")


@shared_task(bind=True, base=Step, name="warmpool.failover.start_standby")
def start_standby(self, op: Operation):
    op.step("start_standby")
    standby = op.pool["standby_gpu_id"]
    try:
        if standby is None:
            raise provider.NotFound("no standby")
        vast().start_instance(standby)
    except provider.NotFound:
        standby = fresh_standby(op)
    op.save(standby_gpu_id=standby, standby_state="starting", creating=None)
    return op.ctx


def fresh_standby(op: Operation) -> int:
    """A new instance on any free GPU of the host, on the same volume (once per failover)."""
    if op.ctx.get("fresh"):
        raise OperationFailed("the standby could not start and no fresh instance ran: no free GPU on the host")
    op.ctx.pop("standby_deadline", None)
    instance_id = create_instance(op, "standby", "running")
    op.ctx["fresh"] = True  # only once made: a create retried (an outage, a lost answer) is still the first
    op.event("fresh_standby", f"fresh instance {instance_id} created on the same host and volume")
    return instance_id


@shared_task(bind=True, base=Step, name="warmpool.failover.await_standby")
def await_standby(self, op: Operation):
    op.step("await_standby")
    standby = op.pool["standby_gpu_id"]
    rows = vast().list_instances({"id": {"eq": standby}}).instances  # the list is rate limited least
    instance = rows[0] if rows else None
    if is_running(instance):
        op.ctx["ready_at"] = time.time()
        op.save(**primary_fields(instance))
        return op.ctx
    if instance is not None:
        self.wait(op, "standby_deadline", op.settings.standby_start_timeout, interval=_fast_poll(op))
        # given up: destroy it so it can never start beside the replacement
        vast().destroy_instance(standby)
        op.event("standby_given_up", f"standby {standby} not running after "
                                     f"{op.settings.standby_start_timeout:.0f} s ({instance.get('actual_status')})")
    op.save(standby_gpu_id=fresh_standby(op), creating=None)
    raise self.later(op.ctx, op.settings.poll_interval)


@shared_task(bind=True, base=Step, name="warmpool.failover.promote")
def promote(self, op: Operation):
    op.step("promote")
    ctx, pool = op.ctx, op.pool
    times = op.failover_times("fence_old_primary", "start_standby")
    times.pop("lost_at")  # the detection time, kept in the phases
    recovery, from_healthy, phases = (times["recovery_time_seconds"], times["recovery_from_last_healthy_seconds"],
                                      times["phases"])
    new_primary = pool["standby_gpu_id"]
    last = {**times, "trigger": ctx["trigger"], "old_primary_gpu_id": ctx["old_primary"],
            "new_primary_gpu_id": new_primary}
    op.advance(primary_gpu_id=new_primary, standby_gpu_id=None, standby_state="none", state=State.PROVISIONING,
               retire_gpu_id=ctx["old_primary"],
               failover_count=pool["failover_count"] + 1, last_failover_at=last["at"], last_failover=last,
               error_message=None)
    op.event("failover_completed", f"standby {new_primary} promoted in {recovery:.1f} s", **last,
             **address_of(op.pool))
    ctx["promoted"] = True  # what fails from here on is the standby's replacement, not the failover
    message = "Failover test completed" if ctx["trigger"] == "manual" else "Failover completed"
    op.complete({"success": True, "message": message, "recovery_time_seconds": round(recovery, 1),
                 "recovery_from_last_healthy_seconds": round(from_healthy, 1),
                 "new_primary_gpu_id": new_primary, "phases": phases})
    return ctx


@shared_task(bind=True, base=Step, name="warmpool.failover.retire_old_primary")
def retire_old_primary(self, op: Operation):
    """Destroy the old primary, then give the new one the primary label."""
    op.step("retire_old_primary")
    op.ctx.setdefault("replace_started", time.time())
    if op.pool["retire_gpu_id"] is not None:
        vast().destroy_instance(op.pool["retire_gpu_id"])
        vast().label_instance(op.pool["primary_gpu_id"], label(op.tenant, op.machine_id, "primary"))
        op.save(retire_gpu_id=None)
    return op.ctx


def undo_failover(op: Operation) -> None:
    """Leave a standby that did not start stopped, so it cannot start later beside anything."""
    standby = op.pool["standby_gpu_id"]
    if standby is not None and standby != op.pool["primary_gpu_id"]:
        try:
            vast().stop_instance(standby)
        except provider.NotFound:
            op.save(standby_gpu_id=None)
    op.save(standby_state="stopped" if op.pool["standby_gpu_id"] else "none", fallback="cpu_standby")


def _fast_poll(op: Operation) -> float:
    """A failover polls at the list call's pace (Vast allows one a second), not the provisions' pace."""
    return min(op.settings.poll_interval, 1.0)


COMPENSATIONS["failover"] = undo_failover
