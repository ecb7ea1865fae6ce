"""The health sweep: beat runs it every HEALTH_CHECK_INTERVAL seconds.

It reads the watched pools, then asks the provider once for the instances that
should run but do not (plus, from the same answer, how many instances carry each
label), so its cost does not grow with the number of healthy pools (rule 8 in
docs/architecture.md). A check is healthy, failed or unknown (rule 9); only a
definitive status is a failure (rule 14): offline, exited or gone triggers a
failover at once (its first step confirms with a direct call), anything else
not running must fail for ``FAILOVER_THRESHOLD`` sweeps and ``FAILOVER_MIN_SECONDS``.
The sweep also guards rule 3 on the provider's side: a standby found starting,
or two instances with one role, is a split brain it resolves. And it watches the
standbys as closely (rule 15): one gone, or that the provider shows as anything
but stopped, is confirmed and replaced before a failover needs it.
"""

import contextlib
import time
from typing import TypeGuard

from celery import shared_task

from app import operations, runtime
from app import vast as provider
from app.hosts import offers_query
from app.pools import (Pool, State, known_ids, label, parse_label, pool_id, required, split_pool_id, to_degraded,
                       to_replacing_standby)
from app.runtime import account, on_account, pools_by_account
from app.store import FencedOut
from tasks import rebuild
from tasks.base import fenced_by
from tasks.failover import TRANSITIONAL
from tasks.provision import is_running
from tasks.splitbrain import guard_split_brain

UNHEALTHY = {"intended_status": {"eq": "running"}, "actual_status": {"neq": "running"}}
DEFINITIVE = {"offline", "exited", "gone", "stopped by someone else"}
# a sweep that would degrade more than this share of the watched pools (and more than a few) acts on none:
# the provider's answer is more likely wrong than half the fleet gone
BRAKE_SHARE, BRAKE_MIN = 0.5, 3
# a stopped instance shows as stopped or exited (Vast's stop ends in either): anything else not on its way is lost
STOPPED = ("exited", "stopped")
LOST_STANDBY = {"intended_status": {"eq": "stopped"}, "actual_status": {"notin": list(STOPPED)}}
# one page of the v1 list every 10 s: a tenth of Vast's list budget, leaving the rest to failovers' polls
AUDIT_PAGE, AUDIT_INTERVAL = 25, 10.0


@shared_task(name="warmpool.health.sweep")
def sweep() -> str:
    s, cfg = runtime.store(), runtime.settings()
    if not s.take_sweep_slot(cfg.health_check_interval):
        return "skipped"
    # a killed sweeper holds the sweep only briefly: detection stays on
    with s.sweep_running(ttl=max(5.0, 3 * cfg.health_check_interval)) as mine:
        return _sweep(s, cfg) if mine else "skipped"


def _sweep(s, cfg) -> str:
    started = time.time()
    # the pools first, then the provider: a pool is never judged on an answer older than its record
    watched = s.watched_pool_ids()
    last_ok = s.last_sweep_time()
    audited = s.audit_primaries(AUDIT_PAGE) if s.due("audit", AUDIT_INTERVAL) else {}
    counts, failures, unknown = {}, 0, 0
    # each Vast account is asked apart, on its own budget (rule 17): one that cannot be asked judges none of its
    # pools, and the others go on
    by_account = pools_by_account(watched)
    for name, pids in by_account.items():
        on_it = set(pids)
        with on_account(name):
            seen = _sweep_account(s, cfg, pids, {i: pid for i, pid in audited.items() if pid in on_it}, last_ok)
        if seen is None:
            unknown += 1
            continue
        failures += seen[0]
        counts.update(seen[1])
    if unknown == len(by_account):
        return "unknown"
    if not unknown:
        s.record_sweep(time.time() - started, counts)
    rebuild.adopt_soon(counts)  # labels of a pool with no record: Redis lost it (rule 13)
    if s.due("capacity", cfg.capacity_check_interval):
        check_capacity.delay()
    return f"{failures} failed of {len(watched)}" + (f" ({unknown} account(s) unknown)" if unknown else "")


def _sweep_account(s, cfg, watched: list[str], audited: dict[int, str], last_ok: float | None) -> tuple[int, dict[str, int]] | None:
    """One account's sweep: its list of what should run but does not, and what that says about its pools;
    (pools failed, label counts), or None when the provider could not be asked."""
    try:
        listing = runtime.vast().list_instances(UNHEALTHY, attempts=1)  # the next sweep is the retry
    except provider.VastError as exc:
        s.record_unknown_sweep(type(exc).__name__)  # unknown, not failed: nothing counts (rule 6)
        return None
    rows = {row["id"]: row for row in listing.instances}
    failed = {pid: (iid, rows[iid].get("actual_status")) for iid, pid in s.primaries(list(rows)).items()
              if rows[iid].get("actual_status") not in TRANSITIONAL}
    failed.update(_audit(audited))
    counts = listing.label_counts
    missing_standby = []
    # labels counted, or an account the provider says is empty: a primary without its label is gone; a
    # provider that does not count labels tells nothing about what vanished (the healer and audit look)
    if counts or listing.total_instances == 0:
        for pid in watched:
            if pid not in failed and not counts.get(label(*split_pool_id(pid), "primary")):
                failed[pid] = (None, "gone")
        with_standby = s.pools_with_standby()  # a pool known to lack one is the healer's already
        missing_standby = [pid for pid in watched if pid in with_standby and pid not in failed
                           and not counts.get(label(*split_pool_id(pid), "standby"))]
    _judge(s, cfg, failed, last_ok)
    # after the judging: the failures the first list found are not held back by this call (which may page)
    missing_standby += [pid for pid in _lost_standbys(s, cfg) if pid not in failed and pid not in missing_standby]
    if len(missing_standby) > max(BRAKE_MIN, BRAKE_SHARE * len(watched)):
        for pid in missing_standby:
            s.event(pid, "sweep_brake", f"the provider lists no live standby for {len(missing_standby)} of "
                                        f"{len(watched)} pools: the sweep acts on none of them")
    else:
        for pid in missing_standby:
            recheck_standby.delay(pid)
    for iid, pid in s.standbys(list(rows)).items():  # a standby starting: someone started it
        guard_split_brain.delay(pid, f"standby {iid} found {rows[iid].get('actual_status')}")
    for name, count in counts.items():
        parsed = parse_label(name)
        if parsed and count > 1 and parsed[0] in watched and not s.is_locked(parsed[0]):
            guard_split_brain.delay(parsed[0], f"{count} instances carry the label {name}")
    return len(failed), counts


def _audit(audited: dict[int, str]) -> dict[str, tuple[int, str]]:
    """Primaries stopped by someone else: the list of failures above shows only instances meant to run, so a
    page of primaries, in rotation, is looked at directly every AUDIT_INTERVAL seconds (one call per account,
    whatever the number of pools: a fleet of N pools is looked through in N / 25 x 10 s)."""
    if not audited:
        return {}
    try:
        rows = runtime.vast().list_instances({"id": {"in": sorted(audited)}}, attempts=1).instances
    except provider.VastError:
        return {}  # unknown: the next sweeps look again
    return {audited[row["id"]]: (row["id"], "stopped by someone else") for row in rows
            if row["id"] in audited and row.get("intended_status") == "stopped"}


def _lost_standbys(s, cfg) -> list[str]:
    """Pools whose standby should be stopped but shows otherwise (offline, unknown...): it could not start when a
    failover needs it. One list call every CAPACITY_CHECK_INTERVAL asks for every such instance of the account,
    whatever the number of pools (rule 8); a status on its way somewhere is not a loss (rule 14)."""
    if not s.due(f"lost_standbys@{account.get()}", cfg.capacity_check_interval):
        return []
    try:
        rows = runtime.vast().list_instances(LOST_STANDBY, attempts=1).instances
    except provider.VastError:
        return []  # unknown: the next check looks again
    lost = [row["id"] for row in rows if row.get("actual_status") not in TRANSITIONAL]
    return sorted(set(s.standbys(lost).values()))


def lost_status(instance: dict | None) -> str | None:
    """Why a standby that should be stopped is lost, or None when it is not (stopped, on its way, or started:
    a standby that runs is a failover's, or a split brain the guard resolves)."""
    if instance is None:
        return "gone"
    status = instance.get("actual_status")
    if instance.get("intended_status") != "stopped" or status in STOPPED or status in TRANSITIONAL:
        return None
    return status


def _judge(s, cfg, failed: dict, last_ok: float | None) -> None:
    """Count failed sweeps per pool; a definitive failure, or enough failed sweeps for long enough, triggers."""
    now = time.time()
    counted = s.count_failures(list(failed), last_ok or now)
    due = [pid for pid, (count, since, _) in counted.items()
           if failed[pid][1] in DEFINITIVE or (count >= cfg.failover_threshold
                                                and now - since >= cfg.failover_min_seconds)]
    if not due:
        return
    s.forget_failures(due)
    pools = {pool_id(p["tenant"], p["machine_id"]): p for p in s.get_pools(due)}
    for pid in due:
        if pid not in pools:
            continue  # its record is gone since the listing: the rebuild decides first
        primary = failed[pid][0] or pools[pid]["primary_gpu_id"]
        _, since, healthy = counted[pid]
        s.event(pid, "primary_failed", f"primary {primary} is {failed[pid][1]} "
                                       f"({counted[pid][0]} sweep(s) in a row)")
        trigger.delay(pid, primary, since, time.time(), healthy)


@shared_task(name="warmpool.failover.trigger", acks_late=True)
def trigger(pid: str, seen_primary: int, detected_at: float, triggered_at: float | None = None,
            healthy_at: float | None = None, source: str = "health") -> str:
    """A health sweep (or a notification from Vast) saw ``seen_primary`` fail: fail over, unless the pool moved
    on or is busy. The failover's first step confirms the failure with the provider."""
    s, cfg = runtime.store(), runtime.settings()
    held = s.acquire(pid, cfg.lock_ttl)
    if held is None:
        return "busy"  # an operation runs on this machine; it is the one that counts
    pool = s.get_pool(pid)
    if (pool is None or not pool["enabled"] or pool["state"] not in (State.ACTIVE, State.DEGRADED)
            or pool["primary_gpu_id"] != seen_primary):
        s.release(pid, held, cfg.lock_ttl)
        s.event(pid, "failover_trigger_stale", f"a failover trigger for primary {seen_primary} came after the pool "
                                               f"moved on: nothing done", primary_gpu_id=seen_primary)
        return "stale"
    operations.failover(pid, held, source, detected_at=detected_at, healthy_at=healthy_at, triggered_at=triggered_at)
    return "failover"


@shared_task(name="warmpool.health.recheck_standby")
def recheck_standby(pid: str) -> str:
    """The sweep found no live standby (none listed, or one not stopped), or Vast said it went offline: ask about
    that one instance; a lost one is replaced on the same host (the provision's last step: degraded if the host
    has no GPU). The provider is asked without the lock, which is taken only to replace the standby, so a
    failover trigger arriving meanwhile is never turned away as busy. A pool whose primary is down too (a host
    failing: Vast tells of both instances) is the failover's: the recheck triggers it, as the sweep would."""
    s, cfg = runtime.store(), runtime.settings()
    pool = s.get_pool(pid)
    if not _standby_kept(pool) or s.is_locked(pid):
        return "moved on"  # an operation runs: it decides
    status = lost_status(runtime.vast(pool["tenant"]).show_instance(required(pool, "standby_gpu_id")))
    if status is None:
        return "there"
    primary = runtime.vast(pool["tenant"]).show_instance(required(pool, "primary_gpu_id"))  # active: it has one
    if not is_running(primary):
        primary_status = (primary or {}).get("actual_status", "gone")
        if primary_status in TRANSITIONAL:
            return "left to the failover"  # on its way (rule 14): the sweep judges it
        now = time.time()
        s.event(pid, "primary_failed", f"primary {pool['primary_gpu_id']} is {primary_status} "
                                       f"(found by the standby recheck)")
        trigger.delay(pid, pool["primary_gpu_id"], now, now)
        return "failover triggered"
    with contextlib.suppress(FencedOut), s.lease_if_free(pid, cfg.lock_ttl) as lease:
        current = lease and s.get_pool(pid)
        if not _standby_kept(current) or (current["primary_gpu_id"], current["standby_gpu_id"]) != (
                pool["primary_gpu_id"], pool["standby_gpu_id"]):
            return "moved on"  # changed since it was read: what was asked about is not this pool's now
        _replace_lost_standby(s, cfg, lease, current, status)
        return "replaced"
    return "moved on"  # fenced out: a newer holder decides


def _standby_kept(pool: Pool | None) -> TypeGuard[Pool]:
    """An active pool with a standby: one whose standby the recheck may replace."""
    return pool is not None and pool["state"] == State.ACTIVE and pool["standby_gpu_id"] is not None


def _replace_lost_standby(s, cfg, lease, pool: Pool, status: str) -> None:
    """Destroy the lost standby (an offline one comes back with its host, beside its replacement), then start
    the replacement under the lock this recheck holds."""
    pid, lost = pool_id(pool["tenant"], pool["machine_id"]), required(pool, "standby_gpu_id")
    with s.heartbeat(pid, lease.held, cfg.lock_ttl), fenced_by(pid, lease.held):
        runtime.vast().destroy_instance(lost)
    to_replacing_standby(pool)
    s.save_pool(pool, lease.held)
    reason = f"standby {lost} is {status}"
    s.event(pid, "standby_lost", f"{reason}: a new one is made on host {pool['host_machine_id']}",
            standby_gpu_id=lost, status=status)
    operations.replace_standby(pid, lease.hand_off(), None, reason)


@shared_task(name="warmpool.health.check_capacity")
def check_capacity() -> int:
    """A stopped standby needs a free GPU on its host to start (rule 10): check the hosts in one search per Vast
    account, each on that account's own search budget (rule 17)."""
    s, cfg = runtime.store(), runtime.settings()
    full: list[Pool] = []
    for name, pids in pools_by_account(s.watched_pool_ids()).items():
        with on_account(name):
            full += _without_free_gpu([p for p in s.get_pools(pids) if p["state"] == State.ACTIVE])
    for listed in full:
        pid = pool_id(listed["tenant"], listed["machine_id"])
        with s.lease_if_free(pid, cfg.lock_ttl) as lease:
            pool = lease and s.get_pool(pid)
            if pool and pool["state"] == State.ACTIVE:
                reason = f"host {pool['host_machine_id']} has no free GPU: the standby could not start"
                to_degraded(pool, reason, cfg.health_check_interval)
                s.save_pool(pool, lease.held)
                s.event(pid, "degraded", reason)
    return len(full)


def _without_free_gpu(pools: list[Pool]) -> list[Pool]:
    """The pools whose host has no free GPU, in one search of the account this thread works on; none when the
    provider cannot be asked (unknown: decide nothing)."""
    hosts = sorted(known_ids(*(p["host_machine_id"] for p in pools)))
    if not hosts:
        return []
    try:
        offers = runtime.vast().search_offers({**offers_query(verified=False), "machine_id": {"in": hosts}})
    except provider.VastError:
        return []
    free = {o["machine_id"] for o in offers}
    return [p for p in pools if p["host_machine_id"] not in free]
