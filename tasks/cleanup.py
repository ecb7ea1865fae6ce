"""Cleanup steps: destroy every instance, then the volume.

Cleanup destroys every instance and the volume that carry the pool's labels, so
even what an interrupted attempt made is gone; the record stays, disabled, with
its history.
"""

from celery import shared_task

from app import vast as provider
from app.operations import DONE, NEXT, WAIT, StepOutcome
from app.pools import instance_labels, known_ids, primary_fields, standby_gone, to_disabled, volume_name
from tasks.base import Operation, OperationFailed, Step


@shared_task(bind=True, base=Step, name="warmpool.cleanup.destroy_instances")
def destroy_instances(self, op: Operation) -> StepOutcome:
    op.step("destroy_instances")
    # disabled first, so no health sweep fails over what is being destroyed
    # and marked, so that a cleanup that fails is tried again by the healer until the volume is gone
    to_disabled(op.pool, fallback=None)
    op.save(cleanup_pending=True)
    ids = known_ids(op.pool["primary_gpu_id"], op.pool["standby_gpu_id"])
    ids |= {row["id"] for row in op.vast.labelled(*instance_labels(op.tenant, op.machine_id))}
    for instance_id in sorted(ids):
        op.vast.destroy_instance(instance_id)
    standby_gone(op.pool)
    op.save(primary_gpu_id=None, **primary_fields(None))
    op.event("instances_destroyed", f"destroyed {sorted(ids)}")
    return NEXT


@shared_task(bind=True, base=Step, name="warmpool.cleanup.delete_volume")
def delete_volume(self, op: Operation) -> StepOutcome:
    op.step("delete_volume")
    # the pool's volume and its replica on another host (after a host failover the volume is a former replica)
    names = {volume_name(op.tenant, op.machine_id), volume_name(op.tenant, op.machine_id, "replica")}
    ids = known_ids(op.pool["volume_id"], op.pool.get("replica_volume_id")) | {
        v["id"] for v in op.vast.show_volumes() if v.get("label") in names}
    try:
        for volume_id in sorted(ids):
            op.vast.delete_volume(volume_id)
    except provider.RequestRejected as exc:
        # destroyed instances can hold the volume for a moment
        if op.within("volume_deadline", 120.0):
            return WAIT
        raise OperationFailed(f"volume still in use: {exc}") from exc
    op.event("cleaned_up", f"volume(s) {sorted(ids)} deleted; nothing left on the provider")
    op.finish({"success": True, "message": f"Warm pool for machine {op.machine_id} cleaned up"},
              volume_id=None, host_machine_id=None, error_message=None, cleanup_pending=False,
              replica_host_machine_id=None, replica_volume_id=None, replica_data_at=None, replica_copy_started=None)
    return DONE
