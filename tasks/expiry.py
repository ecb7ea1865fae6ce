"""Rentals that end: every Vast instance has an ``end_date``; then it stops and can never start again.

A stopped standby would expire silently, and the pool would have no standby without knowing it.
Beat runs ``check_expiry`` 144 times per EXPIRY_MARGIN (``celeryconfig.py``), on the provision queue
so that its calls never go before a failover's. It reads the end dates of the primaries and
standbys of the active pools (paged list calls by ids, never a call per pool) and, for a rental
that ends within EXPIRY_MARGIN seconds,

- a standby is renewed: a fresh stopped standby on the same host and volume, and only once it
  exists is the old one destroyed (``tasks/renewal.py``);
- a primary is switched over to its standby before its end: the failover path with trigger
  ``expiry`` (no failure is needed, so nothing is confirmed first). A standby that ends within the
  margin too is renewed first, so the switchover never lands on a rental about to end.

Each is told in the pool's events: ``rental_ending``, then ``standby_replaced`` with reason
"rental ends", or the failover's events with trigger ``expiry``.
"""

import time

from celery import shared_task

from app import operations, runtime
from app import vast as provider
from app.pools import INSTANCE_FIELDS, State, iso_at, known_ids, pool_id, split_pool_id
from app.runtime import on_account, pools_by_account
from tasks.renewal import end_dates


@shared_task(name="warmpool.expiry.check")
def check_expiry() -> dict[str, str]:
    """Renew the standbys and switch over the primaries whose rentals end within EXPIRY_MARGIN."""
    s, cfg = runtime.store(), runtime.settings()
    pools = [p for p in s.get_pools(s.watched_pool_ids())
             if p["state"] == State.ACTIVE and p.get("renew_after", 0) <= time.time()]
    ends = {}
    for name, pids in pools_by_account([pool_id(p["tenant"], p["machine_id"]) for p in pools]).items():
        on_it = set(pids)
        ids = sorted(known_ids(*(p[k] for p in pools if pool_id(p["tenant"], p["machine_id"]) in on_it
                                 for k in ("primary_gpu_id", "standby_gpu_id"))))
        try:
            with on_account(name):  # each account lists its own instances (rule 17)
                ends.update(end_dates(ids))
        except provider.VastError:
            return {}  # unknown: decide nothing, the next check asks again
    horizon = time.time() + cfg.expiry_margin
    started = {}
    for pool in pools:
        for role in ("standby", "primary"):  # a standby ending too is renewed before any switchover
            instance_id = pool[INSTANCE_FIELDS[role]]
            if instance_id is not None and instance_id in ends and ends[instance_id] < horizon:
                pid = pool_id(pool["tenant"], pool["machine_id"])
                started[pid] = _replace(pid, role, instance_id, ends[instance_id])
                break
    return started


def _replace(pid: str, role: str, instance_id: int, end_date: float) -> str:
    """Start what replaces an instance whose rental ends: a renewal of the standby, or a switchover."""
    s, cfg = runtime.store(), runtime.settings()
    with s.lease_if_free(pid, cfg.lock_ttl) as lease:
        pool = lease and s.get_pool(pid)
        if not pool or pool["state"] != State.ACTIVE or pool[INSTANCE_FIELDS[role]] != instance_id:
            return "busy or moved on"  # the next check looks again
        what = "a fresh standby replaces it" if role == "standby" else "planned switchover to the standby"
        s.event(pid, "rental_ending", f"the {role} {instance_id}'s rental ends at {iso_at(end_date)}: {what}",
                role=role, instance_id=instance_id, end_date=end_date)
        if role == "primary":
            operations.failover(pid, lease.hand_off(), "expiry")
            return "switchover"
        op_id = s.new_op(*split_pool_id(pid), "renew_standby")
        operations.renew_standby(pid, lease.hand_off(), op_id, instance_id, end_date)
        return "renew standby"
