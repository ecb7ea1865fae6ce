"""Failover: stop the old primary, start the standby, promote it, replace the standby.

The old primary is confirmed stopped before the standby starts, so a pool never
has two running instances (design rule 3). A standby that will not start in time
is given up for a fresh instance on the same host and volume (rule 10).
"""

import time

from celery import chain, shared_task
from celery.exceptions import Ignore

from app import vast as provider
from app.runtime import settings, store, vast
from app.store import ACTIVE, DEGRADED, FAILOVER, PROVISIONING, Store, label, now_iso, split_pool_id
from tasks.base import COMPENSATIONS, Operation, OperationFailed, Step
from tasks.provision import NOT_RUNNING, create_instance, create_standby, is_running


def launch(s: Store, pid: str, held, trigger: str, detected_at: float | None = None,
           triggered_at: float | None = None, op_id: str | None = None) -> str | None:
    """Start (or, given ``op_id``, go on with) the failover of a pool whose lock ``held`` is ours.

    An automatic failover beyond the cap per minute is not started (None): the lock is released.
    """
    cap = settings().failovers_per_minute
    if trigger != "manual" and not s.take_failover_slot(cap):
        if s.r.set(f"wp:deferred:{pid}", 1, nx=True, ex=60):  # said once a minute, not every sweep
            s.event(pid, "failover_deferred", f"{cap} failovers started in the last minute: the cap")
        s.release(pid, held, settings().lock_ttl)
        return None
    tenant, machine_id = split_pool_id(pid)
    pool = s.get_pool(pid)
    op_id = op_id or s.new_op(tenant, machine_id, "failover")
    ctx = Operation.begin(pid, "failover", held, op_id, trigger=trigger, old_primary=pool["primary_gpu_id"],
                          detected_at=detected_at, triggered_at=triggered_at)
    steps = [confirm_failure.s()] if trigger == "health" else []
    chain(*steps, stop_primary.s(), await_stopped.s(), start_standby.s(), await_standby.s(), promote.s(),
          retire_old_primary.s(), create_standby.s()).delay(ctx)
    return op_id


@shared_task(name="warmpool.failover.trigger", acks_late=True)
def trigger(pid: str, seen_primary: int, detected_at: float, triggered_at: float | None = None) -> str:
    """A health sweep saw ``seen_primary`` fail: fail over, unless the pool moved on or is busy."""
    s, cfg = store(), settings()
    held = s.acquire(pid, cfg.lock_ttl)
    if held is None:
        return "busy"  # an operation runs on this machine; it is the one that counts
    pool = s.get_pool(pid)
    if (pool is None or not pool["enabled"] or pool["state"] not in (ACTIVE, DEGRADED)
            or pool["primary_gpu_id"] != seen_primary):
        s.release(pid, held, cfg.lock_ttl)
        return "stale"
    return launch(s, pid, held, "health", detected_at, triggered_at) or "capped"


@shared_task(bind=True, base=Step, name="warmpool.failover.confirm_failure")
def confirm_failure(self, op: Operation):
    """Ask the provider about the primary once more; only a clear failure goes on."""
    op.step("confirm_failure")
    try:
        instance = vast().show_instance(op.ctx["old_primary"])
    except provider.VastError as exc:
        verdict = f"provider unavailable ({exc})"
    else:
        if not is_running(instance):
            return op.ctx
        verdict = "primary is running"
    op.event("failover_cancelled", f"no failover: {verdict}")
    op.finish({"success": False, "message": f"Failover cancelled: {verdict}"})
    raise Ignore()  # ends the chain


@shared_task(bind=True, base=Step, name="warmpool.failover.stop_primary")
def stop_primary(self, op: Operation):
    op.step("stop_primary")
    if op.pool["state"] != FAILOVER:
        op.save(state=FAILOVER)
        op.event("failover_started", f"failover of primary {op.ctx['old_primary']} ({op.ctx['trigger']})")
    try:
        vast().stop_instance(op.ctx["old_primary"])
    except provider.NotFound:
        pass  # gone already: nothing can run there
    return op.ctx


@shared_task(bind=True, base=Step, name="warmpool.failover.await_stopped")
def await_stopped(self, op: Operation):
    op.step("await_stopped")
    instance = vast().show_instance(op.ctx["old_primary"])
    if instance is None or instance.get("actual_status") in NOT_RUNNING:
        op.ctx["fenced_at"] = time.time()
        return op.ctx
    if not self.wait(op, "stop_deadline", op.settings.standby_start_timeout):
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
    op.ctx["fresh"] = True
    op.ctx.pop("standby_deadline", None)
    instance_id = create_instance(op, "standby", "running")
    op.event("fresh_standby", f"fresh instance {instance_id} created on the same host and volume")
    return instance_id


@shared_task(bind=True, base=Step, name="warmpool.failover.await_standby")
def await_standby(self, op: Operation):
    op.step("await_standby")
    standby = op.pool["standby_gpu_id"]
    instance = vast().show_instance(standby)
    if is_running(instance):
        op.ctx["ready_at"] = time.time()
        op.save(primary_ssh_host=instance["ssh_host"], primary_ssh_port=instance["ssh_port"])
        return op.ctx
    if instance is not None:
        self.wait(op, "standby_deadline", op.settings.standby_start_timeout)  # retries until the deadline
        # given up: destroy it so it can never start beside the replacement
        vast().destroy_instance(standby)
        op.event("standby_given_up", f"standby {standby} not running after "
                                     f"{op.settings.standby_start_timeout:.0f} s ({instance.get('actual_status')})")
    op.save(standby_gpu_id=fresh_standby(op), creating=None)
    raise self.retry(args=(op.ctx,), countdown=op.settings.poll_interval)


@shared_task(bind=True, base=Step, name="warmpool.failover.promote")
def promote(self, op: Operation):
    op.step("promote")
    ctx, pool = op.ctx, op.pool
    started = ctx["detected_at"] or ctx["started"]
    phases = ctx["phases"]
    if ctx["detected_at"] and ctx.get("triggered_at"):
        # first failed sweep -> the threshold reached -> the machine's lock taken
        phases["detect"] = round(ctx["triggered_at"] - ctx["detected_at"], 3)
        phases["lock"] = round(ctx["started"] - ctx["triggered_at"], 3)
    phases["fence_old_primary"] = round(ctx["fenced_at"] - ctx["started"], 3)
    phases["start_standby"] = round(ctx["ready_at"] - ctx["fenced_at"], 3)
    now = op.phase("promote", ctx["ready_at"])
    recovery = round(now - started, 3)
    new_primary = pool["standby_gpu_id"]
    last = {"at": now_iso(), "trigger": ctx["trigger"], "old_primary_gpu_id": ctx["old_primary"],
            "new_primary_gpu_id": new_primary, "recovery_time_seconds": recovery, "phases": phases}
    op.advance(primary_gpu_id=new_primary, standby_gpu_id=None, standby_state="none", state=PROVISIONING,
               retire_gpu_id=ctx["old_primary"],
               failover_count=pool["failover_count"] + 1, last_failover_at=last["at"], last_failover=last,
               error_message=None)
    op.event("failover_completed", f"standby {new_primary} promoted in {recovery:.1f} s", **last)
    message = "Failover test completed" if ctx["trigger"] == "manual" else "Failover completed"
    op.complete({"success": True, "message": message, "recovery_time_seconds": round(recovery, 1),
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


COMPENSATIONS["failover"] = undo_failover
