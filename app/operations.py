"""Every operation, declared in one place: which steps it chains, and how it starts.

Each starter takes a machine lock that its caller holds (``Held``), writes what the
operation decides on the pool, builds the operation's context and enqueues its chain;
from then on the steps hold the lock and release it when the operation ends. The
steps are named here, not imported: the web process starts operations too, and never
loads the workers' modules (``app/queue.py``). They live in ``tasks/provision.py``,
``tasks/failover.py``, ``tasks/hostfailover.py``, ``tasks/renewal.py`` and ``tasks/cleanup.py``.
"""

import time
from typing import TypedDict, cast

from celery import chain

from app.pools import State, split_pool_id, to_disabled, to_failover
from app.queue import step
from app.runtime import store
from app.store import Held


class Context(TypedDict, total=False):
    """What travels down an operation's chain (JSON: Celery carries it between steps)."""
    pid: str                    # "tenant:machine_id"
    operation: str              # provision, failover, cleanup
    op_id: str | None           # the API's task id
    token: str                  # the machine lock's token ...
    epoch: int                  # ... and fencing epoch
    seq: int                    # the pool's step counter this step expects
    started: float
    phases: dict[str, float]    # failover phases, seconds
    provider_errors: int        # provider outages met so far (retries are bounded)
    # failover
    trigger: str                # manual, health, notification, heal, expiry
    old_primary: int
    detected_at: float | None   # the failure first seen ...
    healthy_at: float | None    # ... and the last check that saw the primary healthy
    state_before: str           # the pool's state when the failover was decided (a cancel goes back to it)
    triggered_at: float | None
    confirm_since: float        # the confirmation reads only poll rounds that started after it asked ...
    confirm_deadline: float     # ... until then
    primary_labelled: bool      # the confirmation saw the old primary carry the primary's label
    fence_ids: list[int]        # instances the fence waits to see stopped ...
    fence_since: float          # ... in poll rounds that started after this
    standby_since: float        # the standby started: poll rounds after it
    fenced_at: float
    ready_at: float
    replace_started: float
    fresh: bool                 # a fresh instance replaced a standby that would not start
    announced: bool             # failover_started was said
    promoted: bool              # the standby is the primary now
    # waits (deadlines, epoch seconds) and offers found by a search (searches are rate limited)
    primary_deadline: float
    stop_deadline: float
    standby_deadline: float
    volume_deadline: float
    gpu_offer: int
    volume_offer: int
    # a replacement standby, a renewal
    reason: str
    expiring: int
    expiring_end: float


CREATE_STANDBY = "warmpool.provision.create_standby"
PROVISION_STEPS = ("warmpool.provision.create_volume", "warmpool.provision.create_primary",
                   "warmpool.provision.await_primary", CREATE_STANDBY)
FIND_HOST = "warmpool.provision.find_host"
CONFIRM_FAILURE = "warmpool.failover.confirm_failure"
CHECK_HOST = "warmpool.failover.check_host"
RETIRE_OLD_PRIMARY = "warmpool.failover.retire_old_primary"
FAILOVER_STEPS = (
    "warmpool.failover.stop_primary", "warmpool.failover.await_stopped",
    "warmpool.failover.start_standby", "warmpool.failover.await_standby",
    "warmpool.failover.promote", RETIRE_OLD_PRIMARY, CREATE_STANDBY,
)
MOVE_TO_REPLICA_STEPS = ("warmpool.failover.fence_old_host", "warmpool.failover.rent_on_replica_host",
                         "warmpool.failover.await_moved_primary", "warmpool.failover.promote_moved",
                         "warmpool.failover.retire_old_host", CREATE_STANDBY)
RENEW_STANDBY_STEPS = ("warmpool.provision.create_renewal", "warmpool.provision.retire_expiring_standby")
CLEANUP_STEPS = ("warmpool.cleanup.destroy_instances", "warmpool.cleanup.delete_volume")
# a disable or cleanup that waits for the running operation to end (tasks/operations.py)
WHEN_UNLOCKED = "warmpool.operations.when_unlocked"

PLANNED = ("manual", "switchover", "expiry")  # no failure to confirm, and the host is fine


def begin(pid: str, operation: str, held: Held, op_id: str | None = None, **extra) -> Context:
    """The context of a new operation that holds ``held``."""
    pool = store().get_pool(pid) or {}
    return cast(Context, {"pid": pid, "operation": operation, "op_id": op_id, "token": held.token,
                          "epoch": held.epoch, "seq": pool.get("seq", 0), "started": time.time(), "phases": {},
                          **extra})


def _held_pool(pid: str) -> dict:
    """The pool of a machine whose lock the caller holds: such a machine has its record (a cleanup keeps it)."""
    pool = store().get_pool(pid)
    if pool is None:
        raise LookupError(f"no pool record for {pid}, whose lock is held")
    return pool


def _send(names, ctx: Context) -> None:
    chain(*(step(name) for name in names)).delay(ctx)


def provision(pid: str, held: Held, op_id: str | None, search: bool = False) -> None:
    """Find a host (when asked) -> volume -> running primary -> stopped standby."""
    _send(((FIND_HOST,) if search else ()) + PROVISION_STEPS, begin(pid, "provision", held, op_id))


def failover(pid: str, held: Held, trigger: str, op_id: str | None = None, detected_at: float | None = None,
             healthy_at: float | None = None, triggered_at: float | None = None) -> str:
    """Stop the old primary -> start the standby -> promote it -> retire the old one -> a new standby.

    An automatic failover (not a manual test) first confirms the failure with the provider; the cap per
    minute counts only failures so confirmed (``confirm_failure``), so no trigger is ever deferred here.
    """
    s = store()
    pool = _held_pool(pid)
    op_id = op_id or s.new_op(*split_pool_id(pid), "failover")
    s.update_op(op_id, trigger=trigger)
    state_before = pool["state"]
    if state_before != State.FAILOVER:  # from now on the healer resumes it if it is interrupted
        to_failover(pool, op_id)
        s.save_pool(pool, held)
    ctx = begin(pid, "failover", held, op_id, trigger=trigger, old_primary=pool["primary_gpu_id"],
                detected_at=detected_at, healthy_at=healthy_at, triggered_at=triggered_at, state_before=state_before)
    # a test, or a planned switchover (asked for, or before a rental ends), has no failure to confirm
    first: tuple[str, ...] = () if trigger in PLANNED else (CONFIRM_FAILURE,)
    if pool.get("replica_volume_id") and trigger not in PLANNED:  # a lost host: move to the replica's instead
        first += (CHECK_HOST,)
    _send(first + FAILOVER_STEPS, ctx)
    return op_id


def move_to_replica(ctx: Context) -> None:
    """A failover whose host is lost (``check_host``), on: fence the old host -> rent on the replica's host with
    the replica volume -> promote it -> retire the old host -> a new standby (tasks/hostfailover.py)."""
    _send(MOVE_TO_REPLICA_STEPS, ctx)


def finish_failover(pid: str, held: Held, op_id: str | None) -> None:
    """The rest of a failover interrupted after its promotion."""
    _send((RETIRE_OLD_PRIMARY, CREATE_STANDBY), begin(pid, "failover", held, op_id, promoted=True))


def replace_standby(pid: str, held: Held, op_id: str | None, reason: str) -> None:
    """A new stopped standby for a pool whose standby is gone (or was given up)."""
    _send((CREATE_STANDBY,), begin(pid, "provision", held, op_id, reason=reason))


def renew_standby(pid: str, held: Held, op_id: str | None, expiring: int, expiring_end: float) -> None:
    """A fresh stopped standby, then the one whose rental ends (``expiring``, at ``expiring_end``) destroyed."""
    _send(RENEW_STANDBY_STEPS,
          begin(pid, "renew_standby", held, op_id, expiring=expiring, expiring_end=expiring_end))


def cleanup(pid: str, held: Held, op_id: str | None) -> None:
    """Destroy every instance, then the volume; the record stays, disabled."""
    s = store()
    pool = _held_pool(pid)
    if not pool.get("cleanup_pending") or pool["op_id"] != op_id:  # from now on the healer finishes it if interrupted
        pool.update(cleanup_pending=True, op_id=op_id)
        s.save_pool(pool, held)
    _send(CLEANUP_STEPS, begin(pid, "cleanup", held, op_id))


def disable(pid: str, held: Held) -> None:
    """Stop protecting the pool; its resources stay (the seed's CPU standby takes over)."""
    s = store()
    pool = _held_pool(pid)
    to_disabled(pool)
    s.save_pool(pool, held)
    s.event(pid, "disabled", "warm pool disabled; fallback cpu_standby")
