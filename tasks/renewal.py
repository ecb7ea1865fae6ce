"""Renewing a standby whose rental ends: a fresh stopped standby first, then the old one destroyed.

Every Vast instance has an ``end_date``; then it stops and can never start again (see
``tasks/expiry.py``, which decides when). The old standby stays the pool's until the fresh one
exists on the same host and volume, so the pool is never without a standby it could start.
"""

import time

from celery import shared_task

from app import runtime
from app.operations import DONE, NEXT, StepOutcome
from app.pools import iso_at, required, standby_stopped, to_active
from tasks.base import Operation, Step
from tasks.provision import adopt, create_instance

# ids asked about in one list call (the filter travels in the URL): two full pages of 25 rows
IDS_PER_CALL = 50
REASON = "rental ends"


def end_dates(instance_ids: list[int]) -> dict[int, float]:
    """The end date of each instance the provider lists (epoch seconds); one paged list call per 50 ids."""
    ends = {}
    for i in range(0, len(instance_ids), IDS_PER_CALL):
        rows = runtime.vast().list_instances({"id": {"in": instance_ids[i:i + IDS_PER_CALL]}}, attempts=1).instances
        ends.update({row["id"]: float(row["end_date"]) for row in rows if row.get("end_date")})
    return ends


def ends_within_margin(end: float | None, margin: float) -> bool:
    """Whether a rental ending at ``end`` (epoch seconds; None: no end known) ends within ``margin`` seconds: a
    fresh standby that does too is no renewal, and the old one is kept."""
    return end is not None and end < time.time() + margin


@shared_task(bind=True, base=Step, name="warmpool.provision.create_renewal")
def create_renewal(self, op: Operation) -> StepOutcome:
    """A fresh stopped standby beside the one whose rental ends, which stays the pool's until this exists."""
    op.step("create_renewal")
    if op.pool["standby_gpu_id"] == op.ctx["expiring"]:
        standby = create_instance(op, "standby", "stopped")
        op.save(standby_gpu_id=standby, creating=None)
        op.event("standby_created", f"standby {standby} created stopped, to replace {op.ctx['expiring']}",
                 standby_gpu_id=standby)
    return NEXT


@shared_task(bind=True, base=Step, name="warmpool.provision.retire_expiring_standby")
def retire_expiring_standby(self, op: Operation) -> StepOutcome:
    """Destroy the standby whose rental ends, unless the fresh one ends within the margin as well."""
    op.step("retire_expiring_standby")
    old, new = op.ctx["expiring"], required(op.pool, "standby_gpu_id")  # the fresh one (create_renewal)
    ends = iso_at(op.ctx["expiring_end"])
    if ends_within_margin(end_dates([new]).get(new), op.settings.expiry_margin):
        # the host rents nothing that lasts longer: keep the old one, and look again later
        op.vast.destroy_instance(new)
        later = time.time() + op.settings.expiry_margin / 24
        op.event("rental_end_unavoidable", f"host {op.pool['host_machine_id']} rents no GPU whose rental outlasts "
                                           f"the margin: standby {old} (ending at {ends}) kept; next look at "
                                           f"{iso_at(later)}", instance_id=old)
        op.finish({"success": False, "message": f"no longer rental on host {op.pool['host_machine_id']}"},
                  standby_gpu_id=old, renew_after=later)
        return DONE
    op.vast.destroy_instance(old)
    op.event("standby_replaced", f"standby {new} replaces {old}, whose rental ends at {ends}",
             standby_gpu_id=new, old_standby_gpu_id=old, reason=REASON)
    standby_stopped(op.pool, new)
    to_active(op.pool, renew_after=0)
    op.finish({"success": True, "message": f"standby {old} replaced by {new} before its rental ends",
               "standby_gpu_id": new})
    return DONE


def undo_renewal(op: Operation) -> None:
    """A renewal that failed keeps the old standby; a fresh one it made is destroyed."""
    old = op.ctx["expiring"]
    made = op.pool["standby_gpu_id"] if op.pool["standby_gpu_id"] != old else adopt(op, "standby")
    if made is not None:
        op.vast.destroy_instance(made)
    op.save(standby_gpu_id=old, creating=None)
