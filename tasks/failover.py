"""Failover steps: stop the old primary, start the standby, promote it, replace the standby.

Every instance labelled as the pool's primary is confirmed stopped before the
standby starts, so a pool never has two running instances on its volume
(rule 3 in docs/architecture.md). A standby that will not start in time is given
up for a fresh instance on the same host and volume (rule 10).
"""

import contextlib
import time

from celery import shared_task

from app import vast as provider
from app.operations import DONE, NEXT, WAIT, StepOutcome, Wait
from app.pools import (State, address_of, label, primary_fields, required, standby_gone, standby_starting,
                       standby_stopped, to_failover_cancelled, to_promoted)
from app.runtime import Throttled, ranked_calls, without_waiting
from app.store import UNSEEN
from tasks.base import Operation, OperationFailed, Step
from tasks.provision import NOT_RUNNING, create_instance, is_running, observe

# statuses on the way to running (or back to it): never a failure by themselves (rule 14)
TRANSITIONAL = {"loading", "created", "scheduling", "rebooting", None}
# no poll round answered a confirmation for this long: the provider counts as unavailable
CONFIRM_TIMEOUT = 30.0
# the order of a failover's PUTs when many pools fail at once: a standby whose old primary is fenced finishes
# its pool, so its start goes before any stop; what can wait until every pool runs again goes last
FINISH, FENCE, AFTER = 0, 1, 2
PRIORITY_SPAN = 2001  # a pool's priority lies in [-1000, 1000] (app/api/schemas.py)


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


def unconfirmed(step: Step, op: Operation) -> str | None:
    """Why the primary's failure is not confirmed (the failover is cancelled), or None when it is.

    A provider that does not answer confirms nothing (rule 6): one offline reading and a blip must not stop a
    healthy primary."""
    resumed = op.ctx.get("state_before") == State.FAILOVER
    try:
        instance = confirming_reading(step, op)
        if failed_status(instance) and not within_failover_cap(op):
            instance = confirmed_directly(op)
    except provider.VastError as exc:
        if resumed:
            raise  # resumed: the stop may be sent already, so ask again (retried) rather than go back to active
        return f"provider unavailable ({exc})"
    if instance is not None and not failed_status(instance):
        return f"the primary is {instance.get('actual_status')}"
    op.ctx["primary_labelled"] = instance is not None and instance.get("label") == primary_label(op)
    return None


def confirming_reading(step: Step, op: Operation) -> dict | None:
    """The primary as the provider shows it after the question: its own direct call when the show budget has a
    slot free at once (a lone failure: no wait for the list budget, which the sweep and the fence share), else
    the shared poll round that starts after the question, so one list call confirms every pending failure of a
    correlated one (rule 16)."""
    with contextlib.suppress(Throttled), without_waiting():
        return op.vast.show_instance(op.ctx["old_primary"])
    instance = observe(op.ctx["old_primary"], _fast_poll(op), op.ctx.setdefault("confirm_since", time.time()))
    if instance is UNSEEN and not step.wait(op, "confirm_deadline", CONFIRM_TIMEOUT, _retry(op)):
        raise provider.ProviderUnavailable(f"no poll round answered in {CONFIRM_TIMEOUT:.0f} s")
    return instance


def put_turn(op: Operation, stage: int):
    """This step's provider calls take their turns in the rate budget by ``stage``, then by the pool's priority
    (higher first), then by when its failure was seen (rule 7)."""
    rank = stage * PRIORITY_SPAN + (1000 - op.pool.get("priority", 0))
    failed_at = op.ctx.get("detected_at") or op.ctx["started"]
    return ranked_calls(rank, f"{failed_at:017.6f}:{op.pid}:{op.op_id}:{stage}")


def confirmed_directly(op: Operation) -> dict | None:
    """Past the cap: the provider's answer about the primary from its own direct call, once more.

    The call takes a ranked turn of the account's show budget (one a 2 s), by the pool's priority and when its
    failure was seen: a step whose turn is more than a few seconds away gives its thread back and keeps its place,
    so thirty pools past the cap never hold the failover worker's threads that pools within the cap need."""
    with put_turn(op, FENCE):
        return op.vast.show_instance(op.ctx["old_primary"])


@shared_task(bind=True, base=Step, name="warmpool.failover.confirm_failure")
def confirm_failure(self, op: Operation) -> StepOutcome:
    """Ask the provider about the primary once more; only a clear failure goes on. The answer comes from a
    shared poll round that started after the question: one list call confirms every pending failure."""
    op.step("confirm_failure")
    verdict = unconfirmed(self, op)
    if verdict is None:
        return NEXT
    op.event("failover_cancelled", f"no failover: {verdict}", trigger=op.ctx["trigger"])
    to_failover_cancelled(op.pool, op.ctx.get("state_before"))
    op.finish({"success": False, "message": f"Failover cancelled: {verdict}"})
    return DONE


def within_failover_cap(op: Operation) -> bool:
    """Count a failure the provider confirmed against FAILOVERS_PER_MINUTE of its Vast account (rules 9, 17);
    False past the cap.

    Only confirmed failures count, so a stream of false triggers (replayed notifications, a list answering
    garbage) never uses up the cap for a real failure. Past the cap - most of the fleet failing at once - a
    failure is never deferred: ``confirm_failure`` asks about it once more with its own direct call and goes on,
    as the sweep's standby brake checks each missing standby directly rather than acting on one answer. The cap is
    each account's: that second look spends the account's own show budget (one call a 2 s), so failures on another
    account never make this one's wait for it.
    """
    cap = op.settings.failovers_per_minute
    if op.store.take_failover_slot(cap, op.account):
        return True
    if op.store.first_cap_notice(op.pid):
        op.event("failover_cap_exceeded", f"more than {cap} confirmed failures on this Vast account in the last "
                                          f"minute: this one is confirmed once more, directly, before the failover "
                                          f"goes on")
    return False


@shared_task(bind=True, base=Step, name="warmpool.failover.stop_primary")
def stop_primary(self, op: Operation) -> StepOutcome:
    op.step("stop_primary")
    if not op.ctx.get("announced"):  # once, though the step may be retried
        op.event("failover_started", f"failover of primary {op.ctx['old_primary']} ({op.ctx['trigger']})",
                 trigger=op.ctx["trigger"])
        op.ctx["announced"] = True
    try:
        with put_turn(op, FENCE):
            op.vast.stop_instance(op.ctx["old_primary"])
    except provider.NotFound:
        pass  # gone already: nothing can run there
    return NEXT


@shared_task(bind=True, base=Step, name="warmpool.failover.await_stopped")
def await_stopped(self, op: Operation) -> StepOutcome:
    op.step("await_stopped")
    if "fence_ids" not in op.ctx and not others_labelled_primary(op):
        op.ctx["fence_ids"], op.ctx["fence_since"] = [op.ctx["old_primary"]], time.time()
    elif "fence_ids" not in op.ctx:
        # asked once: under the lock nothing else makes one; the waits after are served by the shared poll rounds
        rows = primary_labelled(op)
        for row in rows:
            if row["id"] != op.ctx["old_primary"] and row.get("intended_status") != "stopped":
                with put_turn(op, FENCE):
                    op.vast.stop_instance(row["id"])
                op.event("split_brain_resolved", f"instance {row['id']} also carried the primary's label: stopped",
                         instance_id=row["id"])
        op.ctx["fence_ids"] = [row["id"] for row in rows if row.get("actual_status") not in NOT_RUNNING]
        op.ctx["fence_since"] = time.time()
    else:
        op.ctx["fence_ids"] = [i for i in op.ctx["fence_ids"]
                               if not _stopped(observe(i, _fast_poll(op), op.ctx["fence_since"]))]
    if not op.ctx["fence_ids"]:
        op.ctx["fenced_at"] = time.time()
        return NEXT
    if op.within("stop_deadline", op.settings.standby_start_timeout):
        return Wait(_retry(op))
    raise OperationFailed(f"old primary {op.ctx['old_primary']} did not stop; standby not started")


def primary_labelled(op: Operation) -> list[dict]:
    """Every instance carrying the pool's primary label, not only the old primary we know: a leaked or duplicate
    one must not run beside the standby either, nor come back later (one offline but meant to run would, with
    its host). Rule 3."""
    return op.vast.labelled(primary_label(op))


def primary_label(op: Operation) -> str:
    return label(op.tenant, op.machine_id, "primary")


def others_labelled_primary(op: Operation) -> bool:
    """Whether an instance other than the old primary may carry the primary's label. No when a sweep that started
    after this failover took the lock counted no other (only the lock holder makes one): the fence then needs no
    list call of its own, which a correlated failure would pay once per pool."""
    counts = op.store.label_counts_since(op.ctx["started"])
    if counts is None or "primary_labelled" not in op.ctx:
        return True
    return counts.get(primary_label(op), 0) > (1 if op.ctx["primary_labelled"] else 0)


@shared_task(bind=True, base=Step, name="warmpool.failover.start_standby")
def start_standby(self, op: Operation) -> StepOutcome:
    op.step("start_standby")
    standby = op.pool["standby_gpu_id"]
    try:
        if standby is None:
            raise provider.NotFound("no standby")
        with put_turn(op, FINISH):
            op.vast.start_instance(standby)
    except provider.NotFound:
        standby = fresh_standby(op)
    standby_starting(op.pool, standby)
    op.save(creating=None)
    return NEXT


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
def await_standby(self, op: Operation) -> StepOutcome:
    op.step("await_standby")
    standby = required(op.pool, "standby_gpu_id")  # started (or made) by start_standby
    instance = observe(standby, _fast_poll(op), op.ctx.setdefault("standby_since", time.time()))
    if instance is UNSEEN:
        instance = {}  # not in a poll round since it was started
    if is_running(instance):
        op.ctx["ready_at"] = time.time()
        op.save(**primary_fields(instance))
        return NEXT
    if instance is not None:
        if op.within("standby_deadline", op.settings.standby_start_timeout):
            return Wait(_retry(op))
        give_up_standby(op, standby, instance.get("actual_status"))
    op.save(standby_gpu_id=fresh_standby(op), creating=None)
    return WAIT


def give_up_standby(op: Operation, standby: int, status: str | None) -> None:
    """A standby that did not start in time is destroyed, not left meant-to-run: it could start beside the new
    primary once a GPU frees (rules 3 and 10)."""
    op.vast.destroy_instance(standby)
    op.event("standby_given_up", f"standby {standby} not running after "
                                 f"{op.settings.standby_start_timeout:.0f} s ({status})")


@shared_task(bind=True, base=Step, name="warmpool.failover.promote")
def promote(self, op: Operation) -> StepOutcome:
    op.step("promote")
    ctx, pool = op.ctx, op.pool
    times = op.failover_times("fence_old_primary", "start_standby")
    times.pop("lost_at")  # the detection time, kept in the phases
    recovery, from_healthy, phases = (times["recovery_time_seconds"], times["recovery_from_last_healthy_seconds"],
                                      times["phases"])
    new_primary = required(pool, "standby_gpu_id")
    last = {**times, "trigger": ctx["trigger"], "old_primary_gpu_id": ctx["old_primary"],
            "new_primary_gpu_id": new_primary}
    to_promoted(pool, new_primary, retire_gpu_id=ctx["old_primary"], failover_count=pool["failover_count"] + 1,
                last_failover_at=last["at"], last_failover=last)
    ctx["promoted"] = True  # what fails from here on is the standby's replacement, not the failover
    op.advance()
    op.event("failover_completed", f"standby {new_primary} promoted in {recovery:.1f} s", **last,
             **address_of(op.pool))
    message = "Failover test completed" if ctx["trigger"] == "manual" else "Failover completed"
    op.complete({"success": True, "message": message, "recovery_time_seconds": round(recovery, 1),
                 "recovery_from_last_healthy_seconds": round(from_healthy, 1),
                 "new_primary_gpu_id": new_primary, "phases": phases})
    return NEXT


@shared_task(bind=True, base=Step, name="warmpool.failover.retire_old_primary")
def retire_old_primary(self, op: Operation) -> StepOutcome:
    """Destroy the old primary, then give the new one the primary label."""
    op.step("retire_old_primary")
    op.ctx.setdefault("replace_started", time.time())
    if op.pool["retire_gpu_id"] is not None:
        op.vast.destroy_instance(op.pool["retire_gpu_id"])
        with put_turn(op, AFTER):
            op.vast.label_instance(required(op.pool, "primary_gpu_id"), label(op.tenant, op.machine_id, "primary"))
        op.save(retire_gpu_id=None)
    return NEXT


def undo_failover(op: Operation) -> None:
    """Leave a standby that did not start stopped, so it cannot start later beside anything."""
    standby = op.pool["standby_gpu_id"]
    if standby is not None and standby != op.pool["primary_gpu_id"]:
        try:
            op.vast.stop_instance(standby)
        except provider.NotFound:
            op.save(standby_gpu_id=None)
    if op.pool["standby_gpu_id"]:
        standby_stopped(op.pool, op.pool["standby_gpu_id"])
    else:
        standby_gone(op.pool)
    op.save(fallback="cpu_standby")


def _fast_poll(op: Operation) -> float:
    """A failover's poll rounds come at the list call's pace (Vast allows one a second), not the provisions'."""
    return min(op.settings.poll_interval, 1.0)


def _retry(op: Operation) -> float:
    """A failover's step waiting on a poll round looks again once a round: each look is a task through the
    broker, and a correlated failure has one waiting step per pool."""
    return _fast_poll(op)


def _stopped(instance) -> bool:
    """Seen stopped (or gone) in a poll round; not yet seen counts as still up."""
    return instance is None or (instance is not UNSEEN and instance.get("actual_status") in NOT_RUNNING)
