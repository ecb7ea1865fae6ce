"""What an operator can ask of a pool: provision, enable, disable, test a failover, clean up.

Each command takes the machine's lock (that is what refuses a second operation),
decides from the pool record, writes it with the new operation's id, and hands
the lock to the operation's steps (``app/operations.py``). The API's views only
validate, call one of these and shape the answer.
"""

import time
from dataclasses import dataclass

from app import operations, runtime
from app.pools import (Pool, State, has_resources, iso_at, new_pool, pool_id, refuses_provision, schedule_switchover,
                       split_pool_id, to_active, to_provisioning, unschedule_switchover)
from app.queue import enqueue
from app.settings import DEFAULT_ACCOUNT
from app.store import Busy

# the sweep's checks a provider's notification starts (tasks/sweep.py)
TRIGGER, RECHECK_STANDBY = "warmpool.failover.trigger", "warmpool.health.recheck_standby"


class NotFound(Exception):
    """This tenant has no pool for the machine."""


class NotPlanned(Exception):
    """The pool has no switchover planned."""


class Conflict(Exception):
    """The pool's state does not allow what was asked."""


class TooManyPools(Exception):
    """The tenant has WARMPOOL_MAX_POOLS_PER_TENANT pools already."""


def _claim(tenant: str, machine_id: int) -> None:
    """A new machine counts against its tenant's pool limit (a bounded share of Redis and of the provider); asked
    before the machine's lock, so a refused request writes nothing."""
    limit = runtime.settings().max_pools_per_tenant
    if not runtime.store().claim_machine(tenant, machine_id, limit):
        raise TooManyPools(f"Tenant {tenant} has {limit} warm pools, the most WARMPOOL_MAX_POOLS_PER_TENANT allows; "
                           f"provision again on one of its machines instead")


@dataclass
class Started:
    """What a command did: the operation it started (or queued), if any, and the pool as it left it."""
    op_id: str | None
    pool: Pool
    queued: bool = False


def _pool(tenant: str, machine_id: int) -> Pool:
    pool = runtime.store().get_pool(pool_id(tenant, machine_id))
    if pool is None:
        raise NotFound(machine_id)
    return pool


def provision(tenant: str, machine_id: int, spec: dict) -> Started:
    """A volume, a running primary and a stopped standby on ``spec["host_machine_id"]``."""
    s, pid = runtime.store(), pool_id(tenant, machine_id)
    _claim(tenant, machine_id)
    with s.lease(pid, runtime.settings().lock_ttl) as lease:
        pool = s.get_pool(pid)
        if pool is not None and refuses_provision(pool, spec["host_machine_id"]):
            raise Conflict(f"Machine {machine_id} already has a warm pool ({pool['state']} on host "
                           f"{pool['host_machine_id']}); clean it up first")
        op_id = s.new_op(tenant, machine_id, "provision")
        pool = pool or new_pool(tenant, machine_id)
        to_provisioning(pool, search=False, **{**spec, "image": spec.get("image") or runtime.settings().default_image},
                        op_id=op_id)
        s.save_pool(pool, lease.held)
        operations.provision(pid, lease.hand_off(), op_id)
        return Started(op_id, pool)


def kept_pool_changes(pool: Pool, spec: dict) -> dict:
    """What an enable body changes on a pool that keeps its instances: its lifecycle hooks (``onstart`` or
    ``env`` given, not null, replaces the pool's, and ``""`` or ``{}`` clears it) and its ``priority``;
    absent keeps each."""
    changed = {name: spec[name] or None for name in ("onstart", "env") if spec.get(name) is not None}
    if spec.get("priority") is not None:
        changed["priority"] = spec["priority"]
    return {name: value for name, value in changed.items() if pool.get(name) != value}


def enable(tenant: str, machine_id: int, spec: dict) -> Started:
    """Protect the machine again; one without resources gets a host searched (when it has none rented) and
    provisioned. One that keeps its instances takes the body's ``replica``, ``priority`` and hooks
    (``kept_pool_changes``): every instance made from then on (a replacement standby, a failover's new standby,
    a move, a renewal) runs the hooks, while those already made keep the hooks they were made with."""
    s, pid = runtime.store(), pool_id(tenant, machine_id)
    _claim(tenant, machine_id)
    with s.lease(pid, runtime.settings().lock_ttl) as lease:
        pool = s.get_pool(pid)
        if pool and (has_resources(pool) or pool["state"] in (State.SEARCHING, State.PROVISIONING, State.FAILOVER)):
            if changes := kept_pool_changes(pool, spec):
                pool.update(changes)  # type: ignore[typeddict-item]
                s.save_pool(pool, lease.held)
            if spec.get("replica") is not None and pool.get("replica") != spec["replica"]:
                pool["replica"] = spec["replica"]  # the replica upkeep makes (or deletes) it
                s.save_pool(pool, lease.held)
            if pool["state"] == State.DISABLED:
                to_active(pool)
                s.save_pool(pool, lease.held)
                s.event(pid, "enabled", "warm pool enabled")
            return Started(None, pool)
        # nothing rented yet: the host it had may be gone, so search again
        search = not (pool and pool["host_machine_id"] and pool["volume_id"])
        op_id = s.new_op(tenant, machine_id, "provision")
        pool = pool or new_pool(tenant, machine_id)
        spec = {k: v for k, v in spec.items() if v is not None}
        spec.update({name: spec[name] or None for name in ("onstart", "env") if name in spec})  # "" and {}: none
        spec.setdefault("image", pool.get("image") or runtime.settings().default_image)
        if search:
            spec["host_machine_id"] = None
        to_provisioning(pool, search, **spec, op_id=op_id)
        s.save_pool(pool, lease.held)
        s.event(pid, "enabled", "warm pool enabled; " + ("searching a host" if search else "provisioning"))
        operations.provision(pid, lease.hand_off(), op_id, search)
        return Started(op_id, pool)


def disable(tenant: str, machine_id: int) -> Started:
    """Stop protecting the machine; resources stay. Never refused: it waits for a running operation."""
    s, pid = runtime.store(), pool_id(tenant, machine_id)
    pool = _pool(tenant, machine_id)
    try:
        with s.lease(pid, runtime.settings().lock_ttl) as lease:
            operations.disable(pid, lease.held)
            return Started(None, _pool(tenant, machine_id))
    except Busy:
        op_id = s.new_op(tenant, machine_id, "disable")
        enqueue(operations.WHEN_UNLOCKED, pid, "disable", op_id, pool["op_id"])
        return Started(op_id, pool, queued=True)


def test_failover(tenant: str, machine_id: int) -> Started:
    s, pid = runtime.store(), pool_id(tenant, machine_id)
    _pool(tenant, machine_id)
    with s.lease(pid, runtime.settings().lock_ttl) as lease:
        pool = _pool(tenant, machine_id)
        if pool["state"] != State.ACTIVE:
            raise Conflict(f"Cannot test failover in state {pool['state']}")
        op_id = s.new_op(tenant, machine_id, "failover")
        operations.failover(pid, lease.hand_off(), "manual", op_id=op_id)
        return Started(op_id, _pool(tenant, machine_id))


def plan_switchover(tenant: str, machine_id: int, at: float) -> Pool:
    """Plan a switchover to the standby at ``at`` (epoch s; now or earlier: at the next check). The pool keeps the
    plan (``scheduled_switchover``) and ``tasks/switchover.py`` starts it when due."""
    s, pid = runtime.store(), pool_id(tenant, machine_id)
    _pool(tenant, machine_id)
    with s.lease(pid, runtime.settings().lock_ttl) as lease:
        pool = _pool(tenant, machine_id)
        if not pool["enabled"] or pool["primary_gpu_id"] is None:
            raise Conflict(f"Cannot schedule a switchover in state {pool['state']}: the pool has no primary to move")
        schedule_switchover(pool, at)
        s.save_pool(pool, lease.held)
        s.event(pid, "switchover_scheduled", f"switchover to the standby planned for {iso_at(at)}", scheduled_for=iso_at(at))
        return pool


def cancel_switchover(tenant: str, machine_id: int) -> Pool:
    s, pid = runtime.store(), pool_id(tenant, machine_id)
    if not _pool(tenant, machine_id).get("scheduled_switchover"):
        raise NotPlanned(machine_id)  # before the lock: a refusal changes nothing
    with s.lease(pid, runtime.settings().lock_ttl) as lease:
        pool = _pool(tenant, machine_id)
        planned = pool.get("scheduled_switchover")
        if not planned:  # it started meanwhile
            raise NotPlanned(machine_id)
        unschedule_switchover(pool)
        s.save_pool(pool, lease.held)
        s.event(pid, "switchover_cancelled", f"the switchover planned for {planned['at']} is cancelled",
                scheduled_for=planned["at"])
        return pool


def cleanup(tenant: str, machine_id: int) -> Started:
    """Destroy the primary, the standby and the volume. Never refused: it waits for a running operation."""
    s, pid = runtime.store(), pool_id(tenant, machine_id)
    pool = _pool(tenant, machine_id)
    op_id = s.new_op(tenant, machine_id, "cleanup")
    try:
        with s.lease(pid, runtime.settings().lock_ttl) as lease:
            operations.cleanup(pid, lease.hand_off(), op_id)
            return Started(op_id, _pool(tenant, machine_id))
    except Busy:
        enqueue(operations.WHEN_UNLOCKED, pid, "cleanup", op_id, pool["op_id"])
        return Started(op_id, pool, queued=True)


def provider_notice(event: str, instance_id: int | None, body_digest: str, account: str = DEFAULT_ACCOUNT) -> str:
    """A verified notification from Vast: an offline primary gets the failover path's direct check at once, an
    offline standby the sweep's lost-standby recheck (a direct call under the lock; a lost one is replaced).

    A signature never expires, so a captured notification can be sent again at will: an identical body within
    NOTIFICATION_REPLAY_WINDOW is dropped (Vast's own redeliveries too), and notifications trigger at most one
    check of a pool's primary and one of its standby per NOTIFICATION_CHECK_INTERVAL (apart, so that a host
    failing, which Vast tells of for both, still gets its failover check at once). Neither can delay a real
    failure: the sweep watches every primary and standby anyway, the failover cap counts only failures the
    provider confirms, and the standby's recheck leaves a pool whose primary is down to its failover.
    """
    s, cfg = runtime.store(), runtime.settings()
    if not s.first_notification(body_digest, cfg.notification_replay_window):
        return "dropped: the same notification came before"
    watched = _watched_instance(instance_id, account)
    if watched is None:
        return "ignored: not an instance warmpool watches"
    role, pid = watched
    checks = event == "instance_offline"
    if checks and not s.notification_check_due(pid, role, cfg.notification_check_interval):
        return "dropped: this pool was checked on a notification lately"
    s.event(pid, "provider_notice", f"Vast says {role} {instance_id}: {event}", notice=event, role=role)
    if not checks:
        return "recorded"
    if role == "standby":
        enqueue(RECHECK_STANDBY, pid)
        return "standby check"
    now = time.time()
    enqueue(TRIGGER, pid, instance_id, now, now, s.last_sweep_time(), source="notification")
    return "failover check"


def _watched_instance(instance_id: int | None, account: str) -> tuple[str, str] | None:
    """``(role, pool id)`` of the watched pool of the Vast ``account`` whose primary or standby this is; None if
    none (another account's pool too: a notification signed for one account never acts on another's)."""
    if instance_id is None:
        return None
    s = runtime.store()
    for role, found in (("primary", s.primaries), ("standby", s.standbys)):
        pid = found([instance_id]).get(instance_id)
        if pid and runtime.settings().account_of(split_pool_id(pid)[0]) == account:
            return role, pid
    return None
