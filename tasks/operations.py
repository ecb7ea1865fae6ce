"""A disable or cleanup queued behind a running operation; the operations themselves are declared in
``app/operations.py``."""

from celery import shared_task

from app import operations, runtime
from app.store import OP_ENDED


@shared_task(bind=True, name=operations.WHEN_UNLOCKED, acks_late=True, max_retries=None)
def when_unlocked(self, pid: str, operation: str, op_id: str, behind: str | None):
    """Disable or clean up once the running operation (``behind``) ends; nothing if the pool moved on since."""
    s, cfg = runtime.store(), runtime.settings()
    op = s.get_op(op_id)
    if op is None or op["state"] in OP_ENDED:
        return  # a redelivery of one that ran
    running = behind and s.get_op(behind)
    held = None if running and running["state"] not in OP_ENDED else s.acquire(pid, cfg.lock_ttl)
    if held is None:  # the operation runs still (its lock may lapse between two of its steps): wait for its end
        raise self.retry(countdown=cfg.poll_interval)
    pool = s.get_pool(pid)
    if pool is None or pool["op_id"] not in (behind, op_id):
        s.release(pid, held, cfg.lock_ttl)
        s.update_op(op_id, state="FAILURE", step="skipped",
                    error=f"the pool moved on (operation {pool and pool['op_id']}) before this {operation} ran")
        return
    if operation == "disable":
        operations.disable(pid, held)
        s.update_op(op_id, state="SUCCESS", step="done", result={"status": "disabled", "fallback": "cpu_standby"})
        s.release(pid, held, cfg.lock_ttl)
    else:
        operations.cleanup(pid, held, op_id)
