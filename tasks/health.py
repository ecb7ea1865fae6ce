"""Beat-scheduled work: the health sweep, the healer and the reconciler.

The sweep asks the provider once per interval for the instances that should run
but do not (plus, from the same answer, how many instances carry each label), so
its cost does not grow with the number of healthy pools (design rule 8). A check
is healthy, failed or unknown; only failed, ``FAILOVER_THRESHOLD`` sweeps in a
row, triggers a failover (rule 9).
"""

import contextlib
import json
import time

from celery import chain, shared_task
from redis.exceptions import LockError

from app import vast as provider
from app.hosts import offers_query
from app.runtime import settings, store, vast
from app.store import ACTIVE, DEGRADED, SEARCHING, label, now_iso, split_pool_id
from tasks import failover
from tasks.base import Operation
from tasks.failover import retire_old_primary
from tasks.provision import create_standby, is_running, provision_chain

UNHEALTHY = {"intended_status": {"eq": "running"}, "actual_status": {"neq": "running"}}


def _role_label(pid: str, role: str) -> str:
    return label(*split_pool_id(pid), role)


@shared_task(name="warmpool.health.sweep")
def sweep() -> str:
    s, cfg = store(), settings()
    started = time.time()
    # one sweep per interval, and never two at once: a second beat (an operator mistake) or a
    # slow provider must not count a failure twice
    slot = f"wp:sweep:slot:{int(started / cfg.health_check_interval)}"
    if not s.r.set(slot, "1", nx=True, px=max(1000, int(cfg.health_check_interval * 2000))):
        return "skipped"
    running = s.r.lock("wp:sweep:running", timeout=120)
    if not running.acquire(blocking=False):
        return "skipped"
    try:
        return _sweep(s, cfg, started)
    finally:
        with contextlib.suppress(LockError):
            running.release()


def _sweep(s, cfg, started: float) -> str:
    try:
        listing = vast().list_instances(UNHEALTHY, attempts=1)  # the next sweep is the retry
    except provider.VastError as exc:
        # unknown, not failed: nothing is counted and nothing fails over (rule 6)
        s.r.incr("wp:metrics:unknown_sweeps")
        s.r.set("wp:health:provider", json.dumps({"ok": False, "at": now_iso(), "error": type(exc).__name__}))
        return "unknown"
    active = s.watched_pool_ids()
    failed = {pid: iid for iid, pid in s.primaries([row["id"] for row in listing.instances]).items()}
    if listing.label_counts or not listing.total_instances:
        for pid in active:
            if pid not in failed and not listing.label_counts.get(_role_label(pid, "primary")):
                failed[pid] = None  # vanished: its id comes from the record below
        missing_standby = [pid for pid in active if pid not in failed
                           and not listing.label_counts.get(_role_label(pid, "standby"))]
    else:
        missing_standby = []  # this provider does not count labels: vanished ones are left to the healer
    _count_failures(failed)
    for pid in missing_standby:
        degrade(pid, "the standby no longer exists", standby_gpu_id=None, standby_state="none")
    s.r.set("wp:label_counts", json.dumps(listing.label_counts))
    s.r.set("wp:health:provider", json.dumps({"ok": True, "at": now_iso()}))
    s.r.set("wp:sweep:last", now_iso())
    s.r.set("wp:metrics:sweep_seconds", time.time() - started)
    if time.time() - float(s.r.get("wp:capacity:at") or 0) > cfg.capacity_check_interval:
        s.r.set("wp:capacity:at", time.time())
        check_capacity.delay()
    return f"{len(failed)} failed of {len(active)}"


def _count_failures(failed: dict) -> None:
    """Count failed sweeps in a row per pool; at the threshold, trigger a failover."""
    s, cfg = store(), settings()
    now = time.time()
    with s.r.pipeline() as pipe:
        for pid in failed:
            pipe.hincrby("wp:health:fails", pid, 1)
            pipe.hsetnx("wp:health:since", pid, now)
        counts = pipe.execute()[::2]
    recovered = set(s.r.hkeys("wp:health:fails")) - set(failed)
    if recovered:
        s.r.hdel("wp:health:fails", *recovered)
        s.r.hdel("wp:health:since", *recovered)
    due = [pid for pid, count in zip(failed, counts) if count >= cfg.failover_threshold]
    if not due:
        return
    since = s.r.hmget("wp:health:since", due)
    s.r.hdel("wp:health:fails", *due)
    s.r.hdel("wp:health:since", *due)
    pools = {f"{p['tenant']}:{p['machine_id']}": p for p in s.get_pools(due)}
    for pid, first_seen in zip(due, since):
        primary = failed[pid] or pools[pid]["primary_gpu_id"]
        s.event(pid, "primary_failed", f"primary {primary} failed {cfg.failover_threshold} sweeps in a row")
        failover.trigger.delay(pid, primary, float(first_seen or now), time.time())


def degrade(pid: str, reason: str, **fields) -> bool:
    """Mark an active pool degraded, unless an operation holds it (it decides the state then)."""
    s, cfg = store(), settings()
    held = s.acquire(pid, cfg.lock_ttl)
    if held is None:
        return False
    try:
        pool = s.get_pool(pid)
        if pool and pool["state"] == ACTIVE:
            pool.update(state=DEGRADED, error_message=reason, next_heal_at=time.time() + cfg.health_check_interval,
                        **fields)
            s.save_pool(pool, held)
            s.event(pid, "degraded", reason)
    finally:
        s.release(pid, held, cfg.lock_ttl)
    return True


@shared_task(name="warmpool.health.check_capacity")
def check_capacity() -> int:
    """A stopped standby needs a free GPU on its host to start (rule 10): check the hosts in one search."""
    s = store()
    pools = [p for p in s.get_pools(s.watched_pool_ids()) if p["state"] == ACTIVE]
    hosts = sorted({p["host_machine_id"] for p in pools})
    if not hosts:
        return 0
    try:
        offers = vast().search_offers({**offers_query(verified=False), "machine_id": {"in": hosts}})
    except provider.VastError:
        return 0  # unknown: decide nothing
    free = {o["machine_id"] for o in offers}
    full = [p for p in pools if p["host_machine_id"] not in free]
    for pool in full:
        degrade(f"{pool['tenant']}:{pool['machine_id']}",
                f"host {pool['host_machine_id']} has no free GPU: the standby could not start")
    return len(full)


@shared_task(name="warmpool.health.heal")
def heal() -> int:
    """Find degraded pools that are due, and pools whose operation was interrupted; repair them."""
    s = store()
    now = time.time()
    due = [f"{p['tenant']}:{p['machine_id']}" for p in s.get_pools(s.unsettled_pool_ids())
           if p["state"] != DEGRADED or p["next_heal_at"] <= now]
    for pid in due:
        if not s.is_locked(pid):  # a running operation is not interrupted
            repair.delay(pid)
    return len(due)


@shared_task(name="warmpool.health.repair")
def repair(pid: str) -> str:
    """Bring one pool back to active with what it lacks; an interrupted operation goes on under its id."""
    s, cfg = store(), settings()
    held = s.acquire(pid, cfg.lock_ttl)
    if held is None:
        return "busy"
    pool = s.get_pool(pid)
    if pool is None or not pool["enabled"] or pool["state"] == ACTIVE:
        s.release(pid, held, cfg.lock_ttl)
        return "nothing to do"
    op = pool["op_id"] and s.get_op(pool["op_id"])
    op_id = op["task_id"] if op and op["state"] not in ("SUCCESS", "FAILURE") else None
    try:
        if pool["retire_gpu_id"] is not None:  # a failover stopped after its promotion
            chain(retire_old_primary.s(), create_standby.s()).delay(
                Operation.begin(pid, "failover", held, op_id))
            return "finish failover"
        primary = pool["primary_gpu_id"] and vast().show_instance(pool["primary_gpu_id"])
        if pool["primary_ssh_host"] and not is_running(primary):
            return "failover" if failover.launch(s, pid, held, "heal", op_id=op_id) else "capped"
        if pool["host_machine_id"] and pool["standby_gpu_id"] and is_running(primary):
            if vast().search_offers(offers_query(verified=False, machine_id=pool["host_machine_id"])):
                pool.update(state=ACTIVE, error_message=None, heal_attempts=0)
                s.save_pool(pool, held)
                s.event(pid, "healed", "the host has a free GPU again")
                s.release(pid, held, cfg.lock_ttl)
                return "active"
            return _retry_later(pid, held, f"host {pool['host_machine_id']} still has no free GPU")
    except provider.VastError as exc:
        return _retry_later(pid, held, f"provider unavailable ({exc})")
    search = pool["host_machine_id"] is None
    if search:
        pool.update(state=SEARCHING)
        s.save_pool(pool, held)
    provision_chain(search).delay(Operation.begin(pid, "provision", held, op_id))
    return "provision"


def _retry_later(pid: str, held, reason: str) -> str:
    Operation(Operation.begin(pid, "heal", held)).fail(f"heal postponed: {reason}")
    return "retry later"


@shared_task(name="warmpool.health.reconcile")
def reconcile() -> list:
    """Report (and, with RECONCILE_DESTROY_ORPHANS, destroy) labelled resources no pool references."""
    s, cfg = store(), settings()
    counts = json.loads(s.r.get("wp:label_counts") or "{}")
    pools = {f"{p['tenant']}:{p['machine_id']}": p for p in s.get_pools(s.all_pool_ids())}
    orphans = []
    try:
        for name, count in counts.items():
            parsed = _parse_label(name)
            if not parsed or parsed[1] == "volume":
                continue
            pid, role = parsed
            ours = pools.get(pid, {}).get(f"{role}_gpu_id")
            # more instances carry the label than the pool references; an operation in flight may own them
            if count > (1 if ours else 0) and not s.is_locked(pid):
                rows = vast().list_instances({"label": {"eq": name}}).instances
                orphans += [("instance", row["id"], pid) for row in rows if row["id"] != ours]
        for volume in vast().show_volumes():
            parsed = _parse_label(volume.get("label") or "")
            if parsed and parsed[1] == "volume" and pools.get(parsed[0], {}).get("volume_id") != volume["id"] \
                    and not s.is_locked(parsed[0]):
                orphans.append(("volume", volume["id"], parsed[0]))
        for kind, resource_id, pid in orphans:
            destroyed = cfg.reconcile_destroy_orphans
            if destroyed and kind == "instance":
                vast().destroy_instance(resource_id)
            elif destroyed:
                vast().delete_volume(resource_id)
            s.event(pid, "orphan", f"{kind} {resource_id} carries our label but no pool references it"
                                   + ("; destroyed" if destroyed else ""), resource=kind, resource_id=resource_id)
    except provider.VastError:
        return []  # try again next time
    s.r.set("wp:metrics:orphans", len(orphans))
    return orphans


def _parse_label(name: str) -> tuple[str, str] | None:
    """``warmpool-<tenant>-<machine>-<role>`` -> (pool id, role)."""
    if not name.startswith("warmpool-"):
        return None
    tenant_machine, _, role = name[len("warmpool-"):].rpartition("-")
    tenant, _, machine = tenant_machine.rpartition("-")
    if role not in ("primary", "standby", "volume") or not tenant or not machine.isdigit():
        return None
    return f"{tenant}:{machine}", role
