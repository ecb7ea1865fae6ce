"""Every operation, declared as data in one place: its steps in order, its queue, its compensation, its branches.

An operation (provision, failover, cleanup...) is a state machine over its steps. Each step is a Celery task
(``tasks/``) that ends with an explicit outcome (``NEXT``, ``WAIT``, ``DONE`` or a ``Branch``); on ``NEXT`` the
worker (``tasks/base.py: Step``) reads the step that follows from the declaration here and sends it. Adding a
step is one line in a declaration plus the step's function.

The operation's ``Context`` lives in its op record (``Store.get_op``), not in Celery messages: a message carries
only what identifies the step (``Message``), a step loads the context, and what it writes there is saved with the
step's advance of the pool's ``seq``, in one Redis transaction (``Store.save_pool``).

Each starter takes a machine lock that its caller holds (``Held``), writes what the operation decides on the
pool and in its op record, and sends the first step; from then on the steps hold the lock and release it when
the operation ends. The steps are named here, not imported: the web process starts operations too, and never
loads the workers' modules (``app/queue.py``).
"""

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import TypedDict, cast

from app import runtime
from app.pools import Pool, State, split_pool_id, to_disabled, to_failover
from app.queue import enqueue
from app.store import Held


class Context(TypedDict, total=False):
    """What an operation knows beyond its pool record, kept in its op record (JSON) and typed here."""
    operation: str              # the declaration it runs (DECLARED)
    started: float
    phases: dict[str, float]    # failover phases, seconds
    provider_errors: int        # provider outages met so far (retries are bounded)
    # provision
    search: bool                # find a host first
    # failover
    trigger: str                # manual, health, notification, heal, expiry, switchover
    replica: bool               # the pool has a replica volume: a lost host may be left for it (check_host)
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


class Message(TypedDict):
    """What a step's Celery message carries: only what identifies the step (the rest is in the op record)."""
    pid: str                    # "tenant:machine_id"
    op_id: str | None           # the op record (None only for the healer's postponement, which runs no step)
    token: str                  # the machine lock's token ...
    epoch: int                  # ... and fencing epoch
    seq: int                    # the pool's step counter this step expects


class Outcome(Enum):
    """How a step ended, besides ``Wait`` and ``Branch``."""
    NEXT = "next"   # done: the pool's seq advances and the declared next step is sent
    DONE = "done"   # the step ended the operation itself (``Operation.finish``): nothing follows


@dataclass(frozen=True)
class Wait:
    """Run this step again after ``after`` seconds (None: the poll interval), the lock held meanwhile."""
    after: float | None = None


@dataclass(frozen=True)
class Branch:
    """Go on with another declared operation (``to``), under the same op record and lock."""
    to: str


NEXT, DONE, WAIT = Outcome.NEXT, Outcome.DONE, Wait()
StepOutcome = Outcome | Wait | Branch


class Queue(StrEnum):
    """The workers' queues for operation steps (rule 7: failover is never starved by provisioning)."""
    FAILOVER = "failover"
    PROVISION = "provision"


@dataclass(frozen=True)
class StepSpec:
    """One step of a declared operation."""
    task: str                                   # the step's Celery task name
    when: Callable[[Context], bool] | None = None  # run only when this holds (else skipped)
    queue: Queue | None = None                  # its own queue; None: its operation's
    branches: tuple[str, ...] = ()              # the operations it may branch to


@dataclass(frozen=True)
class Declaration:
    name: str
    queue: Queue
    steps: tuple[StepSpec, ...]
    compensation: str | None = None  # "module:function(op)" that undoes a failed attempt, loaded by the worker
    kind: str = ""                   # what events call it, when not its name (an end of a failover is a failover)

    @property
    def called(self) -> str:
        return self.kind or self.name

    def spec(self, task: str) -> StepSpec:
        return next(s for s in self.steps if s.task == task)

    def first(self, ctx: Context) -> str:
        return self.after(None, ctx)

    def after(self, task: str | None, ctx: Context) -> str:
        """The step that runs after ``task`` (None: the first) in this context."""
        names = [s.task for s in self.steps]
        rest = self.steps[names.index(task) + 1:] if task is not None else self.steps
        following = next((s.task for s in rest if s.when is None or s.when(ctx)), None)
        if following is None:
            raise LookupError(f"{self.name}: nothing follows {task}; its last step must end the operation (DONE)")
        return following

    def path(self, ctx: Context) -> list[str]:
        """The steps this operation runs in this context, in order (without branches)."""
        return [s.task for s in self.steps if s.when is None or s.when(ctx)]


PLANNED = ("manual", "switchover", "expiry")  # no failure to confirm, and the host is fine


def unplanned(ctx: Context) -> bool:
    """A failover with a failure to confirm (not a test nor a planned switchover)."""
    return ctx["trigger"] not in PLANNED


def may_move(ctx: Context) -> bool:
    """A failure of a pool with a replica: its host may be lost, and the pool moved to the replica's."""
    return unplanned(ctx) and ctx.get("replica", False)


def searching(ctx: Context) -> bool:
    return ctx.get("search", False)


CREATE_STANDBY = "warmpool.provision.create_standby"
# after the promotion a new standby waits behind other pools' failovers (rule 7)
NEW_STANDBY = StepSpec(CREATE_STANDBY, queue=Queue.PROVISION)

PROVISION = Declaration("provision", Queue.PROVISION, compensation="tasks.provision:undo_provision", steps=(
    StepSpec("warmpool.provision.find_host", when=searching),
    StepSpec("warmpool.provision.create_volume"),
    StepSpec("warmpool.provision.create_primary"),
    StepSpec("warmpool.provision.await_primary"),
    StepSpec(CREATE_STANDBY),
))
FAILOVER = Declaration("failover", Queue.FAILOVER, compensation="tasks.failover:undo_failover", steps=(
    StepSpec("warmpool.failover.confirm_failure", when=unplanned),
    StepSpec("warmpool.failover.check_host", when=may_move, branches=("host_failover",)),
    StepSpec("warmpool.failover.stop_primary"),
    StepSpec("warmpool.failover.await_stopped"),
    StepSpec("warmpool.failover.start_standby"),
    StepSpec("warmpool.failover.await_standby"),
    StepSpec("warmpool.failover.promote"),
    StepSpec("warmpool.failover.retire_old_primary"),
    NEW_STANDBY,
))
# a failover whose host is lost (check_host), moved to the replica's host (tasks/hostfailover.py)
HOST_FAILOVER = Declaration("host_failover", Queue.FAILOVER, compensation="tasks.hostfailover:undo_move", steps=(
    StepSpec("warmpool.failover.fence_old_host"),
    StepSpec("warmpool.failover.rent_on_replica_host"),
    StepSpec("warmpool.failover.await_moved_primary"),
    StepSpec("warmpool.failover.promote_moved"),
    StepSpec("warmpool.failover.retire_old_host"),
    NEW_STANDBY,
))
# the rest of a failover interrupted after its promotion
FINISH_FAILOVER = Declaration("finish_failover", Queue.FAILOVER, compensation="tasks.failover:undo_failover",
                              kind="failover", steps=(
    StepSpec("warmpool.failover.retire_old_primary"),
    NEW_STANDBY,
))
REPLACE_STANDBY = Declaration("replace_standby", Queue.PROVISION, compensation="tasks.provision:undo_provision",
                              kind="provision", steps=(
    StepSpec(CREATE_STANDBY),
))
RENEW_STANDBY = Declaration("renew_standby", Queue.PROVISION, compensation="tasks.renewal:undo_renewal", steps=(
    StepSpec("warmpool.provision.create_renewal"),
    StepSpec("warmpool.provision.retire_expiring_standby"),
))
CLEANUP = Declaration("cleanup", Queue.PROVISION, steps=(
    StepSpec("warmpool.cleanup.destroy_instances"),
    StepSpec("warmpool.cleanup.delete_volume"),
))
DECLARED: dict[str, Declaration] = {d.name: d for d in (
    PROVISION, FAILOVER, HOST_FAILOVER, FINISH_FAILOVER, REPLACE_STANDBY, RENEW_STANDBY, CLEANUP)}

# a disable or cleanup that waits for the running operation to end (tasks/operations.py)
WHEN_UNLOCKED = "warmpool.operations.when_unlocked"


def step_routes() -> dict[str, dict[str, str]]:
    """Each step's queue, from the declarations (``celeryconfig.task_routes``); a step that two declarations
    would send to different queues is a mistake in them."""
    routes: dict[str, dict[str, str]] = {}
    for declared in DECLARED.values():
        for spec in declared.steps:
            queue = {"queue": str(spec.queue or declared.queue)}
            if routes.setdefault(spec.task, queue) != queue:
                raise ValueError(f"step {spec.task} is declared on two queues: {routes[spec.task]} and {queue}")
    return routes


def message(pid: str, held: Held, op_id: str | None, seq: int) -> Message:
    return {"pid": pid, "op_id": op_id, "token": held.token, "epoch": held.epoch, "seq": seq}


def begin(pid: str, operation: str, held: Held, op_id: str | None = None, **extra) -> tuple[Message, Context]:
    """The first step's message and the context of a new ``operation`` that holds ``held``."""
    pool = runtime.store().get_pool(pid)
    ctx = cast(Context, {"operation": operation, "started": time.time(), "phases": {}, **extra})
    return message(pid, held, op_id, pool.get("seq", 0) if pool else 0), ctx


def _held_pool(pid: str) -> Pool:
    """The pool of a machine whose lock the caller holds: such a machine has its record (a cleanup keeps it)."""
    pool = runtime.store().get_pool(pid)
    if pool is None:
        raise LookupError(f"no pool record for {pid}, whose lock is held")
    return pool


def _start(operation: str, pid: str, held: Held, op_id: str | None, **extra) -> str:
    """Give the operation its op record (a new one when it has none) and context; send its first step."""
    s, declared = runtime.store(), DECLARED[operation]
    op_id = op_id or s.new_op(*split_pool_id(pid), declared.name)
    first, ctx = begin(pid, declared.name, held, op_id, **extra)
    s.update_op(op_id, context=ctx)
    enqueue(declared.first(ctx), first)
    return op_id


def provision(pid: str, held: Held, op_id: str | None, search: bool = False) -> None:
    """Find a host (when asked) -> volume -> running primary -> stopped standby."""
    _start(PROVISION.name, pid, held, op_id, search=search)


def failover(pid: str, held: Held, trigger: str, op_id: str | None = None, detected_at: float | None = None,
             healthy_at: float | None = None, triggered_at: float | None = None) -> str:
    """Stop the old primary -> start the standby -> promote it -> retire the old one -> a new standby.

    An automatic failover (not a manual test) first confirms the failure with the provider; the cap per
    minute counts only failures so confirmed (``confirm_failure``), so no trigger is ever deferred here.
    """
    s = runtime.store()
    pool = _held_pool(pid)
    op_id = op_id or s.new_op(*split_pool_id(pid), "failover")
    s.update_op(op_id, trigger=trigger)
    state_before = pool["state"]
    if state_before != State.FAILOVER:  # from now on the healer resumes it if it is interrupted
        to_failover(pool, op_id)
        s.save_pool(pool, held)
    return _start(FAILOVER.name, pid, held, op_id, trigger=trigger, old_primary=pool["primary_gpu_id"],
                  replica=bool(pool.get("replica_volume_id")), detected_at=detected_at, healthy_at=healthy_at,
                  triggered_at=triggered_at, state_before=state_before)


def finish_failover(pid: str, held: Held, op_id: str | None) -> None:
    """The rest of a failover interrupted after its promotion."""
    _start(FINISH_FAILOVER.name, pid, held, op_id, promoted=True)


def replace_standby(pid: str, held: Held, op_id: str | None, reason: str) -> None:
    """A new stopped standby for a pool whose standby is gone (or was given up)."""
    _start(REPLACE_STANDBY.name, pid, held, op_id, reason=reason)


def renew_standby(pid: str, held: Held, op_id: str | None, expiring: int, expiring_end: float) -> None:
    """A fresh stopped standby, then the one whose rental ends (``expiring``, at ``expiring_end``) destroyed."""
    _start(RENEW_STANDBY.name, pid, held, op_id, expiring=expiring, expiring_end=expiring_end)


def cleanup(pid: str, held: Held, op_id: str | None) -> None:
    """Destroy every instance, then the volume; the record stays, disabled."""
    s = runtime.store()
    pool = _held_pool(pid)
    op_id = op_id or s.new_op(*split_pool_id(pid), CLEANUP.name)
    if not pool.get("cleanup_pending") or pool["op_id"] != op_id:  # from now on the healer finishes it if interrupted
        pool.update({"cleanup_pending": True, "op_id": op_id})
        s.save_pool(pool, held)
    _start(CLEANUP.name, pid, held, op_id)


def disable(pid: str, held: Held) -> None:
    """Stop protecting the pool; its resources stay (the seed's CPU standby takes over)."""
    s = runtime.store()
    pool = _held_pool(pid)
    to_disabled(pool)
    s.save_pool(pool, held)
    s.event(pid, "disabled", "warm pool disabled; fallback cpu_standby")
