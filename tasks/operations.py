"""Every operation, declared in one place: which steps it chains, and how it starts.

Each starter takes a machine lock that its caller holds (``Held``), builds the
operation's context and enqueues its chain; from then on the steps hold the
lock and release it when the operation ends. The steps live beside this file:
``provision.py``, ``failover.py``, ``cleanup.py``.
"""

from celery import chain, shared_task

from app.pools import State, split_pool_id, to_disabled
from app.runtime import settings, store
from app.store import OP_ENDED, Held
from tasks.base import Operation
from tasks.cleanup import delete_volume, destroy_instances
from tasks.failover import (
    await_standby,
    await_stopped,
    confirm_failure,
    promote,
    retire_old_primary,
    start_standby,
    stop_primary,
)
from tasks.hostfailover import (
    await_moved_primary,
    check_host,
    fence_old_host,
    promote_moved,
    rent_on_replica_host,
    retire_old_host,
)
from tasks.provision import await_primary, create_primary, create_standby, create_volume, find_host
from tasks.renewal import create_renewal, retire_expiring_standby


def provision(pid: str, held: Held, op_id: str | None, search: bool = False) -> None:
    """Find a host (when asked) -> volume -> running primary -> stopped standby."""
    steps = [find_host.s()] if search else []
    chain(*steps, create_volume.s(), create_primary.s(), await_primary.s(), create_standby.s()).delay(
        Operation.begin(pid, "provision", held, op_id))


PLANNED = ("manual", "switchover", "expiry")  # no failure to confirm, and the host is fine


def failover(pid: str, held: Held, trigger: str, op_id: str | None = None, detected_at: float | None = None,
             healthy_at: float | None = None, triggered_at: float | None = None) -> str:
    """Stop the old primary -> start the standby -> promote it -> retire the old one -> a new standby.

    An automatic failover (not a manual test) first confirms the failure with the provider; the cap per
    minute counts only failures so confirmed (``confirm_failure``), so no trigger is ever deferred here.
    """
    s = store()
    pool = s.get_pool(pid)
    op_id = op_id or s.new_op(*split_pool_id(pid), "failover")
    s.update_op(op_id, trigger=trigger)
    state_before = pool["state"]
    if state_before != State.FAILOVER:  # from now on the healer resumes it if it is interrupted
        pool.update(state=State.FAILOVER, op_id=op_id)
        s.save_pool(pool, held)
    ctx = Operation.begin(pid, "failover", held, op_id, trigger=trigger, old_primary=pool["primary_gpu_id"],
                          detected_at=detected_at, healthy_at=healthy_at, triggered_at=triggered_at,
                          state_before=state_before)
    # a test, or a planned switchover (asked for, or before a rental ends), has no failure to confirm
    steps = [] if trigger in PLANNED else [confirm_failure.s()]
    if pool.get("replica_volume_id") and trigger not in PLANNED:  # a lost host: move to the replica's instead
        steps.append(check_host.s())
    chain(*steps, stop_primary.s(), await_stopped.s(), start_standby.s(), await_standby.s(), promote.s(),
          retire_old_primary.s(), create_standby.s()).delay(ctx)
    return op_id


def move_to_replica(ctx: dict) -> None:
    """A failover whose host is lost (``check_host``), on: fence the old host -> rent on the replica's host with
    the replica volume -> promote it -> retire the old host -> a new standby (tasks/hostfailover.py)."""
    chain(fence_old_host.s(), rent_on_replica_host.s(), await_moved_primary.s(), promote_moved.s(),
          retire_old_host.s(), create_standby.s()).delay(ctx)


def finish_failover(pid: str, held: Held, op_id: str | None) -> None:
    """The rest of a failover interrupted after its promotion."""
    chain(retire_old_primary.s(), create_standby.s()).delay(Operation.begin(pid, "failover", held, op_id, promoted=True))


def replace_standby(pid: str, held: Held, op_id: str | None, reason: str) -> None:
    """A new stopped standby for a pool whose standby is gone (or was given up)."""
    chain(create_standby.s()).delay(Operation.begin(pid, "provision", held, op_id, reason=reason))


def renew_standby(pid: str, held: Held, op_id: str | None, expiring: int, expiring_end: float) -> None:
    """A fresh stopped standby, then the one whose rental ends (``expiring``, at ``expiring_end``) destroyed."""
    chain(create_renewal.s(), retire_expiring_standby.s()).delay(
        Operation.begin(pid, "renew_standby", held, op_id, expiring=expiring, expiring_end=expiring_end))


def cleanup(pid: str, held: Held, op_id: str | None) -> None:
    """Destroy every instance, then the volume; the record stays, disabled."""
    s = store()
    pool = s.get_pool(pid)
    if not pool.get("cleanup_pending") or pool["op_id"] != op_id:  # from now on the healer finishes it if interrupted
        pool.update(cleanup_pending=True, op_id=op_id)
        s.save_pool(pool, held)
    chain(destroy_instances.s(), delete_volume.s()).delay(Operation.begin(pid, "cleanup", held, op_id))


def disable(pid: str, held: Held) -> None:
    """Stop protecting the pool; its resources stay (the seed's CPU standby takes over)."""
    s = store()
    pool = s.get_pool(pid)
    to_disabled(pool)
    s.save_pool(pool, held)
    s.event(pid, "disabled", "warm pool disabled; fallback cpu_standby")


@shared_task(bind=True, name="warmpool.operations.when_unlocked", acks_late=True, max_retries=None)
def when_unlocked(self, pid: str, operation: str, op_id: str, behind: str | None):
    """Disable or clean up once the running operation (``behind``) ends; nothing if the pool moved on since."""
    s, cfg = store(), settings()
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
        disable(pid, held)
        s.update_op(op_id, state="SUCCESS", step="done", result={"status": "disabled", "fallback": "cpu_standby"})
        s.release(pid, held, cfg.lock_ttl)
    else:
        cleanup(pid, held, op_id)
