"""What every step shares: the operation it runs in, its lock, and how it ends.

An operation (provision, failover, cleanup...) is a state machine of steps, each about one provider call,
declared in ``app/operations.py``. A step's message carries only what identifies it (``Message``: the machine,
the op record's id, the lock token and fencing epoch, the pool's step counter); the operation's ``Context`` (the
phase timings, deadlines, what the steps learnt) lives in its op record, read when the step starts and written
with the step's advance. A step ends with an outcome (``app.operations``: NEXT, WAIT, DONE or a Branch) that
``Step`` acts on. While a step runs, a heartbeat keeps its lock alive and every mutating provider call first checks
that the step still holds the current epoch (rule 12 in docs/architecture.md).
"""

import contextlib
import copy
import logging
import random
import threading
import time
from typing import Literal, Unpack, cast

import redis
from celery import Task
from celery.exceptions import Ignore, Retry
from celery.signals import task_prerun, task_received, task_revoked
from kombu.utils.imports import symbol_by_name

from app import runtime
from app import vast as provider
from app.operations import DECLARED, NEXT, Branch, Context, Declaration, Message, Outcome, StepOutcome, Wait
from app.pools import Pool, now_iso, split_pool_id, to_degraded
from app.queue import enqueue
from app.runtime import Throttled, fence, on_account, on_tenant_account
from app.store import STORE_AWAY, FencedOut, Held
from tasks import celery_app

log = logging.getLogger(__name__)


# the waits' deadlines in the context
DeadlineKey = Literal["primary_deadline", "stop_deadline", "standby_deadline", "volume_deadline", "confirm_deadline"]


class Operation:
    """One operation on one machine, as seen from inside a step: its message, pool and context, and the store,
    settings and provider client it works with (a step reaches them here, not through ``app.runtime``)."""

    def __init__(self, message: Message, ctx: Context):
        self.message = message  # the step's own: a take-over renews its lock in it
        self.ctx = ctx
        self.saved_ctx = copy.deepcopy(ctx)  # as in the op record
        self.pid, self.op_id, self.seq = message["pid"], message["op_id"], message["seq"]
        self.tenant, self.machine_id = split_pool_id(self.pid)
        self.held = Held(message["token"], message["epoch"])
        self.store = runtime.store()
        self.settings = runtime.settings()
        self._pool = self.store.get_pool(self.pid)  # None once the pool is gone
        self.advanced = False
        self.heartbeat = None

    @property
    def pool(self) -> Pool:
        """The pool's record, as this step changes it. A step asks ``current`` first, and runs only on a pool
        that is there."""
        if self._pool is None:
            raise LookupError(f"no pool record for {self.pid}")
        return self._pool

    @property
    def account(self) -> str:
        """The Vast account of the pool's tenant (rule 17): its calls, rate budget and failover cap."""
        return self.settings.account_of(self.tenant)

    @property
    def vast(self) -> provider.VastClient:
        """The provider client of the pool's tenant's Vast account (rule 17): the one ``runtime.vast()`` gives
        inside ``fenced``."""
        return runtime.vast(self.tenant)

    @classmethod
    def load(cls, message: Message) -> "Operation":
        """The operation of a step's message, its context read from its op record (an empty one when the record
        is gone: the operation is then not ``current``)."""
        record = message["op_id"] and runtime.store().get_op(message["op_id"])
        return cls(message, cast(Context, (record or {}).get("context") or {}))

    @property
    def declared(self) -> Declaration | None:
        return DECLARED.get(self.ctx.get("operation", ""))

    @property
    def kind(self) -> str:
        """What events call the operation (a failover's end is a failover)."""
        return self.declared.called if self.declared else self.ctx["operation"]

    @property
    def current(self) -> bool:
        """Whether this step is the one the pool waits for (not a duplicate delivery of a done one)."""
        return self._pool is not None and self._pool.get("seq", 0) == self.seq and "operation" in self.ctx

    def take_over(self) -> None:
        self.held = self.store.take_over(self.pid, self.held, self.settings.lock_ttl)
        self.message["token"], self.message["epoch"] = self.held.token, self.held.epoch

    def fence(self) -> None:
        """Raise FencedOut unless this step still holds the machine (before every mutating provider call)."""
        if self.heartbeat is not None and self.heartbeat.lost:
            raise FencedOut(self.pid)
        self.store.check_fence(self.pid, self.held)

    def step(self, name: str) -> None:
        """Enter a step: renew the lock (or stop here if it was lost) and show the step."""
        self.store.extend(self.pid, self.held, self.settings.lock_ttl)
        if self.op_id:
            self.store.update_op(self.op_id, state="STARTED", step=name)
            if self.pool.get("op_id") != self.op_id:
                self.save(op_id=self.op_id)  # so an interrupted operation can be resumed under its id

    def save(self, **fields: Unpack[Pool]) -> None:
        self.pool.update(fields)
        self.store.save_pool(self.pool, self.held)

    def _context_written(self) -> tuple[str, dict] | None:
        """The context to write with the next pool write, if the step changed it."""
        return (self.op_id, dict(self.ctx)) if self.op_id and self.ctx != self.saved_ctx else None

    def advance(self, **fields: Unpack[Pool]) -> None:
        """The step's last write: its fields, what it wrote in the context and the pool's step counter, at once
        and only once."""
        self.pool.update({**fields, "seq": self.seq + 1})
        self.store.save_pool(self.pool, self.held, expect_seq=self.seq, context=self._context_written())
        self.saved_ctx = copy.deepcopy(self.ctx)
        self.seq = self.message["seq"] = self.seq + 1
        self.advanced = True

    def save_context(self) -> None:
        """What a step that waits wrote in the context (deadlines, offers, counts), fenced and at the step's seq;
        the pool as stored, not as the interrupted step may have left it in memory."""
        written = self._context_written()
        if written is None:
            return
        stored = self.store.get_pool(self.pid)
        if stored is None:
            raise FencedOut(self.pid)
        self.store.save_pool(stored, self.held, expect_seq=self.seq, context=written)
        self.saved_ctx = copy.deepcopy(self.ctx)

    def event(self, kind: str, message: str, **data) -> None:
        self.store.event(self.pid, kind, message, **data)

    def phase(self, name: str, since: float) -> float:
        """Record how long a phase took, in seconds; return now."""
        now = time.time()
        self.ctx["phases"][name] = round(now - since, 3)
        return now

    def within(self, deadline_key: DeadlineKey, timeout: float) -> bool:
        """Whether a wait begun at its first poll is still within ``timeout`` seconds (the deadline is kept in
        the context)."""
        return time.time() <= self.ctx.setdefault(deadline_key, time.time() + timeout)

    def failover_times(self, fence: str, start: str) -> dict:
        """A failover's phases up to its promotion (``fence``: the old side stopped, ``start``: the new primary
        running) and its recovery times: from the failure's detection (the seed's), and from the last check that
        saw the primary healthy (the outage a user sees)."""
        ctx = self.ctx
        phases, lost_at = ctx["phases"], ctx.get("detected_at") or ctx["started"]
        detected_at, triggered_at = ctx.get("detected_at"), ctx.get("triggered_at")
        if detected_at and triggered_at:
            # first failed sweep -> the failure confirmed -> the machine's lock taken
            phases.update(detect=round(triggered_at - detected_at, 3), lock=round(ctx["started"] - triggered_at, 3))
        phases[fence] = round(ctx["fenced_at"] - ctx["started"], 3)
        phases[start] = round(ctx["ready_at"] - ctx["fenced_at"], 3)
        now = self.phase("promote", ctx["ready_at"])
        return {"at": now_iso(), "lost_at": lost_at, "recovery_time_seconds": round(now - lost_at, 3),
                "recovery_from_last_healthy_seconds": round(now - (ctx.get("healthy_at") or lost_at), 3),
                "phases": phases}

    def complete(self, result: dict) -> None:
        """Give the task record its result; the lock stays held for the steps still to come."""
        if self.op_id:
            self.store.update_op(self.op_id, state="SUCCESS", step="done", result=result)

    def finish(self, result: dict, **fields: Unpack[Pool]) -> None:
        """End the operation: the pool gets its last fields, the task record its result, the lock is released."""
        self.advance(**fields)
        self.complete(result)
        self.store.release(self.pid, self.held, self.settings.lock_ttl)

    def fail(self, message: str) -> None:
        """End the operation as failed; the pool is degraded and the healer will retry it, backing off."""
        attempts = self.pool.get("heal_attempts", 0)
        to_degraded(self.pool, message, _heal_backoff(attempts), heal_attempts=attempts + 1)
        self.advance()
        if self.kind == "failover" and not self.ctx.get("promoted"):
            self.event("failover_failed", message, trigger=self.ctx.get("trigger"))
        self.event("degraded", message, operation=self.kind)
        if self.op_id:
            self.store.update_op(self.op_id, state="FAILURE", step="failed", error=message)
        self.store.release(self.pid, self.held, self.settings.lock_ttl)


def _heal_backoff(attempts: int) -> float:
    return min(600.0, 5.0 * 2 ** attempts) * random.uniform(0.8, 1.2)


MAX_PROVIDER_ERRORS = 8


class NotYet(Exception):
    """What the step waits for has not happened yet, found deep in a helper (``create_once``, a confirmation's
    poll): the step's outcome is WAIT, after ``after`` seconds (None: the poll interval)."""

    def __init__(self, reason: str = "", after: float | None = None):
        super().__init__(reason)
        self.after = after


class OperationFailed(Exception):
    """A step cannot go on; the operation ends (compensating first) with this message."""


class Step(Task):
    """A provider step of an operation, acting on the outcome the step returns.

    NEXT advances the pool's step counter (with what the step wrote in the context) and sends the step its
    operation's declaration names next; WAIT runs the step again later; DONE leaves the operation as the step
    ended it; a Branch goes on with the declared operation it names. Provider outages are retried with backoff,
    and a step that meets Redis away (a restart) runs again; a step that lost its lock stops the operation's
    flow here and writes nothing; any other error ends the operation as failed, compensated, never stuck.
    """

    abstract = True
    max_retries = None  # polls are retries too; deadlines and MAX_PROVIDER_ERRORS bound them
    acks_late = True

    def __call__(self, message: Message, *args, **kwargs):
        op: Operation | None = None
        try:
            op = Operation.load(message)
            if (self.request.delivery_info or {}).get("redelivered") and op.current:
                op.take_over()
                op = Operation.load(message)  # read again: the first delivery may have moved on meanwhile
            if not op.current:
                raise Ignore()  # a duplicate delivery of a step that is done
            with fenced(op):
                outcome = self.run(op, *args, **kwargs)
            return self.act(op, outcome)
        except (Retry, Ignore):
            raise
        except FencedOut:
            log.warning("%s: lock of %s lost to a newer holder; stopping", self.name, message["pid"])
            raise Ignore() from None
        except Throttled as exc:
            raise self.later(message, exc.retry_in, op) from None
        except NotYet as exc:
            raise self.later(message, exc.after or runtime.settings().poll_interval, op) from None
        except (provider.ProviderUnavailable, provider.RateLimited) as exc:
            # counted in the context, as polls are retries too
            assert op is not None  # raised by the step's provider calls
            errors = op.ctx.get("provider_errors", 0)
            if errors >= MAX_PROVIDER_ERRORS:
                return self.give_up(message, f"provider unavailable: {exc}")
            op.ctx["provider_errors"] = errors + 1
            countdown = min(30.0, 0.5 * 2 ** errors) * random.uniform(0.5, 1.0)
            raise self.later(message, countdown, op) from None
        except (OperationFailed, provider.RequestRejected) as exc:
            return self.give_up(message, str(exc))
        except STORE_AWAY as exc:
            # Redis restarting longer than redis-py's own retries: nothing is known to have failed, and steps
            # are idempotent, so the step runs again (its lock renewed) instead of failing the operation
            log.warning("%s of %s: the store is away (%s); running the step again", self.name, message["pid"], exc)
            raise self.later(message, runtime.settings().poll_interval) from None
        except Exception as exc:  # a bug or a surprise: the operation fails and the healer takes over
            log.exception("%s of %s failed unexpectedly", self.name, message["pid"])
            return self.give_up(message, f"unexpected error in {self.name.rsplit('.', 1)[-1]}: "
                                         f"{type(exc).__name__}")

    def act(self, op: Operation, outcome: StepOutcome) -> StepOutcome:
        """Do what the step's outcome says (see the class)."""
        declared = op.declared
        assert declared is not None  # a current operation is a declared one
        if isinstance(outcome, Wait):
            if op.advanced:  # run again, it would run past its advance
                raise LookupError(f"{self.name} said WAIT after its advance")
            raise self.later(op.message, outcome.after or op.settings.poll_interval, op)
        if isinstance(outcome, Branch):
            if outcome.to not in declared.spec(self.name).branches:
                raise LookupError(f"{declared.name}: {self.name} may not branch to {outcome.to}")
            op.ctx["operation"] = outcome.to
            op.advance()
            self.send_next(op, DECLARED[outcome.to].first(op.ctx))
        elif outcome is NEXT:
            if not op.advanced:
                op.advance()
            self.send_next(op, declared.after(self.name, op.ctx))
        elif not op.advanced:  # DONE: the step ended the operation (finish, cancel) with its last write
            raise LookupError(f"{self.name} said DONE without ending {declared.name}")
        return outcome

    def send_next(self, op: Operation, name: str) -> None:
        """Send the step that follows, once this one advanced. If the broker cannot take it, this step must not
        run again (it is done): the operation stops here, and the healer resumes it once its lock lapses, as
        after a killed worker."""
        try:
            enqueue(name, op.message)
        except Exception:
            log.exception("%s of %s: the next step (%s) could not be sent", self.name, op.pid, name)
            raise Ignore() from None

    def later(self, message: Message, countdown: float, op: Operation | None = None):
        """This step again in ``countdown`` seconds, what it wrote in the context saved and its lock held
        meanwhile: the pause is the operation's, and the healer must not take it for one whose worker died."""
        try:
            if op is not None:
                op.save_context()
            runtime.store().extend(message["pid"], Held(message["token"], message["epoch"]),
                                   runtime.settings().lock_ttl + countdown)
        except FencedOut:
            return Ignore()  # lost meanwhile: the newer holder goes on
        return self.retry(args=(message,), countdown=countdown)

    def give_up(self, message: Message, reason: str):
        """Compensate and end the operation; each operation's declaration says how."""
        op = Operation.load(message)  # as stored: what the failed step held in memory may be half done
        if not op.current:
            raise Ignore()  # a duplicate delivery: the step that is current decides
        try:
            op.step("compensate")
            with fenced(op):
                try:
                    if op.declared and op.declared.compensation:
                        symbol_by_name(op.declared.compensation)(op)
                except FencedOut:
                    raise
                except Exception as exc:  # the operation must end all the same; what stays carries our labels
                    log.warning("%s: compensation of %s incomplete: %r", self.name, op.pid, exc)
                    op.event("compensation_incomplete", f"could not undo everything: {type(exc).__name__}: {exc}")
            op.fail(reason)
        except FencedOut:
            pass  # a newer holder decides now
        raise Ignore()

    def wait(self, op: Operation, deadline_key: DeadlineKey, timeout: float, interval: float | None = None) -> bool:
        """For a helper deep in a step: poll again after ``interval`` (NotYet), until ``timeout`` seconds from the
        first poll (then False)."""
        if not op.within(deadline_key, timeout):
            return False
        raise NotYet(f"waiting ({deadline_key})", interval)


def step_heartbeat(op: Operation):
    """The heartbeat that keeps a step's lock alive while it works, started on entry: a step longer than
    LOCK_TTL keeps its lock, and the healer does not run the operation beside it (rule 12)."""
    return op.store.heartbeat(op.pid, op.held, op.settings.lock_ttl)


@contextlib.contextmanager
def fenced_by(pid: str, held: Held):
    """Mutating provider calls made inside go out only while ``held`` is still the machine's lock (rule 12), to the
    Vast account of the pool's tenant (rule 17)."""
    token = fence.set(lambda: runtime.store().check_fence(pid, held))
    try:
        with on_tenant_account(split_pool_id(pid)[0]):
            yield
    finally:
        fence.reset(token)


@contextlib.contextmanager
def fenced(op: Operation):
    """While a step works: a heartbeat keeps its lock alive, its provider calls go to its tenant's Vast account
    (rule 17), and its mutating ones are fenced (``app.runtime.fence`` is checked right before each request
    leaves)."""
    with step_heartbeat(op) as op.heartbeat, on_account(op.account):
        token = fence.set(op.fence)
        try:
            yield
        finally:
            fence.reset(token)
            op.heartbeat = None


class WaitingSteps:
    """The locks of the steps this worker has received but not yet started, kept alive as a running step's
    heartbeat keeps its own (rule 12).

    A step waits in the worker after its retry's countdown is over, or when every thread is busy (40 failovers
    polling once a second on 16 threads): without this, its lock expired meanwhile and the healer started the
    operation again beside it. The worker holds them, so a killed worker's locks still expire within
    ``LOCK_TTL``. One thread renews them all every third of ``LOCK_TTL``; a lock no longer held under the step's
    epoch (released, taken over) is dropped, never taken back. Hand-written: Celery keeps no lock alive for a
    task it has not started.
    """

    def __init__(self) -> None:
        self._held: dict[str, tuple[str, Held]] = {}  # request id -> (pool id, lock)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def received(self, request_id: str, message: Message) -> None:
        with self._lock:
            self._held[request_id] = (message["pid"], Held(message["token"], message["epoch"]))
            if self._thread is None:
                self._thread = threading.Thread(target=self._renew, daemon=True, name="waiting steps' locks")
                self._thread.start()

    def started(self, request_id: str) -> None:
        with self._lock:
            self._held.pop(request_id, None)

    def renew(self) -> None:
        """Renew every waiting step's lock once (the thread does it every third of LOCK_TTL)."""
        with self._lock:
            waiting = list(self._held.items())
        ttl = runtime.settings().lock_ttl
        for request_id, (pid, held) in waiting:
            try:
                kept = runtime.store().renew_if_held(pid, held, ttl)
            except redis.RedisError:
                continue  # Redis restarting: the next beat tries again
            if not kept:
                self.started(request_id)

    def _renew(self) -> None:
        while True:
            time.sleep(runtime.settings().lock_ttl / 3)
            self.renew()


waiting_steps = WaitingSteps()


@task_received.connect
def _step_waits(request=None, **_):
    args = getattr(request, "args", None) or ()
    message = args[0] if args else None
    if (isinstance(celery_app.tasks.get(request.name), Step) and isinstance(message, dict)
            and {"pid", "token", "epoch"} <= message.keys()):
        waiting_steps.received(request.id, cast(Message, message))


@task_prerun.connect
def _step_runs(task_id=None, **_):
    waiting_steps.started(task_id)  # its own heartbeat keeps the lock from here (fenced)


@task_revoked.connect
def _step_revoked(request=None, **_):
    waiting_steps.started(request.id)
