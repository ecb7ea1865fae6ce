"""What every step shares: the operation it runs in, its lock, and how it ends.

An operation (provision, failover, cleanup...) is a chain of steps, each about one
provider call (declared in ``app/operations.py``). A ``Context`` travels down the
chain: the machine, the operation record's id, the lock token and fencing epoch,
and the phase timings. While a step runs, a heartbeat keeps its lock alive and
every mutating provider call first checks that the step still holds the current
epoch (rule 12 in docs/architecture.md).
"""

import contextlib
import logging
import random
import threading
import time
from typing import Literal

import redis
from celery import Task
from celery.exceptions import Ignore, Retry
from celery.signals import task_prerun, task_received, task_revoked

from app import vast as provider
from app.operations import Context
from app.pools import now_iso, split_pool_id, to_degraded
from app.runtime import Throttled, fence, on_account, on_tenant_account, settings, store
from app.store import STORE_AWAY, FencedOut, Held
from tasks import celery_app

log = logging.getLogger(__name__)


# the waits' deadlines in the context
DeadlineKey = Literal["primary_deadline", "stop_deadline", "standby_deadline", "volume_deadline", "confirm_deadline"]


class Operation:
    """One operation on one machine, as seen from inside a step."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.pid = ctx["pid"]
        self.tenant, self.machine_id = split_pool_id(self.pid)
        self.held = Held(ctx["token"], ctx["epoch"])
        self.store = store()
        self.settings = settings()
        # None once the pool is gone: a step asks ``current`` first, and runs only on a pool that is there
        self.pool: dict = self.store.get_pool(self.pid)  # type: ignore[assignment]
        self.advanced = False
        self.heartbeat = None

    @property
    def current(self) -> bool:
        """Whether this step is the one the pool waits for (not a duplicate delivery of a done one)."""
        return self.pool is not None and self.pool.get("seq", 0) == self.ctx["seq"]

    def take_over(self) -> None:
        self.held = self.store.take_over(self.pid, self.held, self.settings.lock_ttl)
        self.ctx["token"], self.ctx["epoch"] = self.held.token, self.held.epoch

    def fence(self) -> None:
        """Raise FencedOut unless this step still holds the machine (before every mutating provider call)."""
        if self.heartbeat is not None and self.heartbeat.lost:
            raise FencedOut(self.pid)
        self.store.check_fence(self.pid, self.held)

    def step(self, name: str) -> None:
        """Enter a step: renew the lock (or stop here if it was lost) and show the step."""
        self.store.extend(self.pid, self.held, self.settings.lock_ttl)
        op_id = self.ctx.get("op_id")
        if op_id:
            self.store.update_op(op_id, state="STARTED", step=name)
            if self.pool.get("op_id") != op_id:
                self.save(op_id=op_id)  # so an interrupted operation can be resumed under its id

    def save(self, **fields) -> None:
        self.pool.update(fields)
        self.store.save_pool(self.pool, self.held)

    def advance(self, **fields) -> None:
        """The step's last write: its fields and the pool's step counter, at once and only once."""
        self.pool.update(fields, seq=self.ctx["seq"] + 1)
        self.store.save_pool(self.pool, self.held, expect_seq=self.ctx["seq"])
        self.ctx["seq"] += 1
        self.advanced = True

    def event(self, kind: str, message: str, **data) -> None:
        self.store.event(self.pid, kind, message, **data)

    def phase(self, name: str, since: float) -> float:
        """Record how long a phase took, in seconds; return now."""
        now = time.time()
        self.ctx["phases"][name] = round(now - since, 3)
        return now

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
        if op_id := self.ctx.get("op_id"):
            self.store.update_op(op_id, state="SUCCESS", step="done", result=result)

    def finish(self, result: dict, **fields) -> None:
        """End the operation: the pool gets its last fields, the task record its result, the lock is released."""
        self.advance(**fields)
        self.complete(result)
        self.store.release(self.pid, self.held, self.settings.lock_ttl)

    def fail(self, message: str, **fields) -> None:
        """End the operation as failed; the pool is degraded and the healer will retry it, backing off."""
        attempts = self.pool.get("heal_attempts", 0)
        to_degraded(self.pool, message, _heal_backoff(attempts), heal_attempts=attempts + 1, **fields)
        self.advance()
        operation = self.ctx["operation"]
        if operation == "failover" and not self.ctx.get("promoted"):
            self.event("failover_failed", message, trigger=self.ctx.get("trigger"))
        self.event("degraded", message, operation=operation)
        if op_id := self.ctx.get("op_id"):
            self.store.update_op(op_id, state="FAILURE", step="failed", error=message)
        self.store.release(self.pid, self.held, self.settings.lock_ttl)


def _heal_backoff(attempts: int) -> float:
    return min(600.0, 5.0 * 2 ** attempts) * random.uniform(0.8, 1.2)


MAX_PROVIDER_ERRORS = 8


class NotYet(Exception):
    """What the step waits for has not happened yet: run the step again after the poll interval."""


class OperationFailed(Exception):
    """A step cannot go on; the operation ends (compensating first) with this message."""


class Step(Task):
    """A provider step of an operation.

    Provider outages are retried with backoff (and Celery's retry keeps the rest
    of the chain), and a step that meets Redis away (a restart) runs again; a
    step that lost its lock stops the chain and writes nothing; any other error
    ends the operation as failed, compensated, never stuck.
    """

    abstract = True
    max_retries = None  # polls are retries too; deadlines and MAX_PROVIDER_ERRORS bound them
    acks_late = True

    def __call__(self, ctx: Context, *args, **kwargs):
        try:
            op = Operation(ctx)
            if (self.request.delivery_info or {}).get("redelivered") and op.current:
                op.take_over()
                op = Operation(ctx)  # read again: the first delivery may have moved on meanwhile
            if not op.current:
                raise Ignore()  # a duplicate delivery of a step that is done
            with fenced(op):
                result = self.run(op, *args, **kwargs)
            if result is not None and not op.advanced:
                op.advance()
            return result
        except (Retry, Ignore):
            raise
        except FencedOut:
            log.warning("%s: lock of %s lost to a newer holder; stopping", self.name, ctx["pid"])
            raise Ignore() from None
        except Throttled as exc:
            raise self.later(ctx, exc.retry_in, *args, **kwargs) from None
        except NotYet:
            raise self.later(ctx, settings().poll_interval, *args, **kwargs) from None
        except (provider.ProviderUnavailable, provider.RateLimited) as exc:
            # counted in the context, as polls are retries too
            errors = ctx.get("provider_errors", 0)
            if errors >= MAX_PROVIDER_ERRORS:
                return self.give_up(Operation(ctx), f"provider unavailable: {exc}")
            ctx["provider_errors"] = errors + 1
            countdown = min(30.0, 0.5 * 2 ** errors) * random.uniform(0.5, 1.0)
            raise self.later(ctx, countdown, *args, **kwargs) from None
        except (OperationFailed, provider.RequestRejected) as exc:
            return self.give_up(Operation(ctx), str(exc))
        except STORE_AWAY as exc:
            # Redis restarting longer than redis-py's own retries: nothing is known to have failed, and steps
            # are idempotent, so the step runs again (its lock renewed) instead of failing the operation
            log.warning("%s of %s: the store is away (%s); running the step again", self.name, ctx["pid"], exc)
            raise self.later(ctx, settings().poll_interval, *args, **kwargs) from None
        except Exception as exc:  # a bug or a surprise: the operation fails and the healer takes over
            log.exception("%s of %s failed unexpectedly", self.name, ctx["pid"])
            return self.give_up(Operation(ctx), f"unexpected error in {self.name.rsplit('.', 1)[-1]}: "
                                                f"{type(exc).__name__}")

    def later(self, ctx: Context, countdown: float, *args, **kwargs):
        """This step again in ``countdown`` seconds, its lock held meanwhile: the pause is the operation's, and
        the healer must not take it for one whose worker died."""
        try:
            store().extend(ctx["pid"], Held(ctx["token"], ctx["epoch"]), settings().lock_ttl + countdown)
        except FencedOut:
            return Ignore()  # lost meanwhile: the newer holder goes on
        return self.retry(args=(ctx, *args), kwargs=kwargs, countdown=countdown)

    def give_up(self, op: Operation, message: str):
        """Compensate and end the operation; each operation says how (see COMPENSATIONS)."""
        if not op.current:
            raise Ignore()  # a duplicate delivery: the step that is current decides
        try:
            op.step("compensate")
            with fenced(op):
                compensate = COMPENSATIONS.get(op.ctx["operation"])
                try:
                    if compensate:
                        compensate(op)
                except FencedOut:
                    raise
                except Exception as exc:  # the operation must end all the same; what stays carries our labels
                    log.warning("%s: compensation of %s incomplete: %r", self.name, op.pid, exc)
                    op.event("compensation_incomplete", f"could not undo everything: {type(exc).__name__}: {exc}")
            op.fail(message)
        except FencedOut:
            pass  # a newer holder decides now
        raise Ignore()

    def wait(self, op: Operation, deadline_key: DeadlineKey, timeout: float, interval: float | None = None) -> bool:
        """Poll again after the poll interval, until ``timeout`` seconds from the first poll (then False)."""
        deadline = op.ctx.setdefault(deadline_key, time.time() + timeout)
        if time.time() > deadline:
            return False
        raise self.later(op.ctx, interval or op.settings.poll_interval)


def step_heartbeat(op: Operation):
    """The heartbeat that keeps a step's lock alive while it works, started on entry: a step longer than
    LOCK_TTL keeps its lock, and the healer does not run the operation beside it (rule 12)."""
    return op.store.heartbeat(op.pid, op.held, op.settings.lock_ttl)


@contextlib.contextmanager
def fenced_by(pid: str, held: Held):
    """Mutating provider calls made inside go out only while ``held`` is still the machine's lock (rule 12), to the
    Vast account of the pool's tenant (rule 17)."""
    token = fence.set(lambda: store().check_fence(pid, held))
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
    with step_heartbeat(op) as op.heartbeat, on_account(op.settings.account_of(op.tenant)):
        token = fence.set(op.fence)
        try:
            yield
        finally:
            fence.reset(token)
            op.heartbeat = None


# filled by the operation modules: operation name -> function(op) that undoes a failed attempt
COMPENSATIONS: dict = {}


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

    def received(self, request_id: str, ctx: dict) -> None:
        with self._lock:
            self._held[request_id] = (ctx["pid"], Held(ctx["token"], ctx["epoch"]))
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
        ttl = settings().lock_ttl
        for request_id, (pid, held) in waiting:
            try:
                kept = store().renew_if_held(pid, held, ttl)
            except redis.RedisError:
                continue  # Redis restarting: the next beat tries again
            if not kept:
                self.started(request_id)

    def _renew(self) -> None:
        while True:
            time.sleep(settings().lock_ttl / 3)
            self.renew()


waiting_steps = WaitingSteps()


@task_received.connect
def _step_waits(request=None, **_):
    args = getattr(request, "args", None) or ()
    ctx = args[0] if args else None
    if (isinstance(celery_app.tasks.get(request.name), Step) and isinstance(ctx, dict)
            and {"pid", "token", "epoch"} <= ctx.keys()):
        waiting_steps.received(request.id, ctx)


@task_prerun.connect
def _step_runs(task_id=None, **_):
    waiting_steps.started(task_id)  # its own heartbeat keeps the lock from here (fenced)


@task_revoked.connect
def _step_revoked(request=None, **_):
    waiting_steps.started(request.id)
