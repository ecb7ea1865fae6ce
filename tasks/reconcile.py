"""The reconciler: beat runs it every RECONCILE_INTERVAL seconds.

It finds labelled provider resources that no pool references and reports them,
and with RECONCILE_DESTROY_ORPHANS destroys them, but only in a way that cannot
hurt (rule 13 in docs/architecture.md): with the machine's lock held, after
reading the pool again, only what is older than RECONCILE_GRACE, and never more
than RECONCILE_MAX_SHARE of what it sees in one run.
"""

import time

from celery import shared_task

from app import vast as provider
from app.pools import parse_label, split_pool_id, volume_name
from app.runtime import settings, store, vast


def referenced(pool: dict | None) -> set[int]:
    """Every provider id a pool record names, in any role: an instance promoted but not yet relabelled
    still carries the standby's label."""
    if not pool:
        return set()
    return {pool[k] for k in ("primary_gpu_id", "standby_gpu_id", "retire_gpu_id", "volume_id")} - {None}


@shared_task(name="warmpool.reconcile.reconcile")
def reconcile() -> list:
    """Report (and, with RECONCILE_DESTROY_ORPHANS, destroy) labelled resources no pool references."""
    s, cfg = store(), settings()
    counts = s.label_counts()
    suspects = []  # (kind, id, pool id, created at)
    try:
        for name in sorted(counts):
            parsed = parse_label(name)
            if not parsed:
                continue
            pid, role = parsed
            pool = s.get_pool(pid)
            # more instances carry the label than the pool can reference: look closer
            if counts[name] > (1 if pool and pool[f"{role}_gpu_id"] else 0):
                suspects += [("instance", row["id"], pid, row.get("start_date") or 0)
                             for row in vast().list_instances({"label": {"eq": name}}).instances
                             if row["id"] not in referenced(pool)]
        volumes = vast().show_volumes()
    except provider.VastError:
        return []  # try again next time
    names = {volume_name(*split_pool_id(pid)): pid for pid in s.all_pool_ids()}
    suspects += [("volume", v["id"], names[v["label"]], v.get("start_date") or 0) for v in volumes
                 if v.get("label") in names and v["id"] not in referenced(s.get_pool(names[v["label"]]))]
    orphans = [o for o in suspects if o[1] not in referenced(s.get_pool(o[2]))]
    budget = max(1, int(cfg.reconcile_max_share * (sum(counts.values()) + len(volumes))))
    destroyed = 0
    for kind, resource_id, pid, created in orphans:
        note = ""
        if cfg.reconcile_destroy_orphans:
            if time.time() - created < cfg.reconcile_grace:
                note = f"; younger than {cfg.reconcile_grace:.0f} s: kept for now"
            elif destroyed >= budget:
                note = f"; over this run's limit of {budget} destroyed: kept, look at it"
            elif _destroy(pid, kind, resource_id):
                destroyed += 1
                note = "; destroyed"
        s.event(pid, "orphan", f"{kind} {resource_id} carries our label but no pool references it{note}",
                resource=kind, resource_id=resource_id)
    s.record_orphans(len(orphans))
    return [list(o[:3]) for o in orphans]


def _destroy(pid: str, kind: str, resource_id: int) -> bool:
    """Destroy an orphan with the machine's lock held, after reading its pool again."""
    s, cfg = store(), settings()
    with s.lease_if_free(pid, cfg.lock_ttl) as lease:
        if lease is None or resource_id in referenced(s.get_pool(pid)):
            return False
        s.check_fence(pid, lease.held)
        try:
            if kind == "instance":
                vast().destroy_instance(resource_id)
            else:
                vast().delete_volume(resource_id)
        except provider.VastError:
            return False
        return True
