"""Cleanup and disable: never refused, they queue behind a running operation.

Cleanup destroys every instance and the volume that carry the pool's labels, so
even what an interrupted attempt made is gone; the record stays, disabled, with
its history.
"""

from celery import chain, shared_task

from app import vast as provider
from app.runtime import settings, store, vast
from app.store import DISABLED, Store, label
from tasks.base import Operation, OperationFailed, Step


def disable_pool(s: Store, pid: str, held) -> None:
    """Stop protecting the pool; its resources stay (the seed's CPU standby takes over)."""
    pool = s.get_pool(pid)
    pool.update(state=DISABLED, enabled=False, fallback="cpu_standby", error_message=None)
    s.save_pool(pool, held)
    s.event(pid, "disabled", "warm pool disabled; fallback cpu_standby")


def start_cleanup(ctx: dict) -> None:
    chain(destroy_instances.s(), delete_volume.s()).delay(ctx)


@shared_task(bind=True, name="warmpool.cleanup.when_unlocked", acks_late=True, max_retries=None)
def when_unlocked(self, pid: str, operation: str, op_id: str | None):
    """Wait for the machine's lock (another operation holds it), then disable or clean up."""
    s, cfg = store(), settings()
    held = s.acquire(pid, cfg.lock_ttl)
    if held is None:
        raise self.retry(countdown=cfg.poll_interval)
    if operation == "disable":
        disable_pool(s, pid, held)
        s.update_op(op_id, state="SUCCESS", step="done", result={"status": "disabled", "fallback": "cpu_standby"})
        s.release(pid, held, cfg.lock_ttl)
    else:
        start_cleanup(Operation.begin(pid, "cleanup", held, op_id))


@shared_task(bind=True, base=Step, name="warmpool.cleanup.destroy_instances")
def destroy_instances(self, op: Operation):
    op.step("destroy_instances")
    # disabled first, so no health sweep fails over what is being destroyed
    op.save(state=DISABLED, enabled=False, fallback=None)
    ids = {op.pool["primary_gpu_id"], op.pool["standby_gpu_id"]} - {None}
    for role in ("primary", "standby"):
        ids |= {row["id"] for row in
                vast().list_instances({"label": {"eq": label(op.tenant, op.machine_id, role)}}).instances}
    for instance_id in sorted(ids):
        vast().destroy_instance(instance_id)
    op.save(primary_gpu_id=None, standby_gpu_id=None, standby_state="none",
            primary_ssh_host=None, primary_ssh_port=None)
    op.event("instances_destroyed", f"destroyed {sorted(ids)}")
    return op.ctx


@shared_task(bind=True, base=Step, name="warmpool.cleanup.delete_volume")
def delete_volume(self, op: Operation):
    op.step("delete_volume")
    name = label(op.tenant, op.machine_id, "volume")
    ids = ({op.pool["volume_id"]} - {None}) | {v["id"] for v in vast().show_volumes() if v.get("label") == name}
    try:
        for volume_id in sorted(ids):
            vast().delete_volume(volume_id)
    except provider.RequestRejected as exc:
        # destroyed instances can hold the volume for a moment
        if not self.wait(op, "volume_deadline", 120.0):
            raise OperationFailed(f"volume still in use: {exc}") from exc
    op.event("cleaned_up", f"volume(s) {sorted(ids)} deleted; nothing left on the provider")
    op.finish({"success": True, "message": f"Warm pool for machine {op.machine_id} cleaned up"},
              volume_id=None, host_machine_id=None, error_message=None)
