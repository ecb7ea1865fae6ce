"""The reconciler: beat runs it every RECONCILE_INTERVAL seconds.

It first rebuilds the pools whose records Redis lost (``tasks/rebuild.py``): what
forms a pool is adopted before anything is called an orphan. Then it finds labelled
provider resources that no pool references and reports them, and with
RECONCILE_DESTROY_ORPHANS destroys them, but only in a way that cannot hurt (rule 13
in docs/architecture.md): with the machine's lock held, after reading the pool again,
only what is older than RECONCILE_GRACE, and never more than RECONCILE_MAX_SHARE of
what it sees in one run; beyond that it only reports.
"""

import re
import time

from celery import shared_task

from app import runtime
from app import vast as provider
from app.pools import INSTANCE_FIELDS, Pool, known_ids, parse_label, pool_id, split_pool_id, volume_name
from app.runtime import on_account
from app.store import FencedOut
from tasks import rebuild
from tasks.base import fenced_by

# volume_name()'s form; the tenant part is the tenant, or a hash of it when the name would not fit
VOLUME_NAME = re.compile(r"warmpool_([A-Za-z0-9]+)_(\d+)_(volume|replica)")
KINDS = ("volume", "replica")


def referenced(pool: Pool | None) -> set[int]:
    """Every provider id a pool record names, in any role: an instance promoted but not yet relabelled
    still carries the standby's label, and a move to the replica's host rents a primary before it is promoted."""
    if not pool:
        return set()
    moving, retire = pool.get("moving"), pool.get("retire_host")
    return known_ids(*(pool[k] for k in ("primary_gpu_id", "standby_gpu_id", "retire_gpu_id", "volume_id")),
                     moving["primary_gpu_id"] if moving else None, pool.get("replica_volume_id"),
                     retire["volume_id"] if retire else None)


def _created(resource: dict) -> float:
    """When the provider made it; one of unknown age counts as new (kept)."""
    return resource.get("start_date") or time.time()


@shared_task(name="warmpool.reconcile.reconcile")
def reconcile() -> list:
    """Rebuild lost pools, then report (and, with RECONCILE_DESTROY_ORPHANS, destroy) labelled resources no
    pool references."""
    s, cfg = runtime.store(), runtime.settings()
    if s.last_sweep_time() is None:
        return []  # no sweep since Redis lost its data: what the provider runs is not known yet
    counts = {name: count for name, count in s.label_counts().items() if count and parse_label(name)}
    try:
        held = rebuild.adopt(counts)
        if held is None:
            return []  # a rebuild runs: judge nothing until it has adopted what it finds
        suspects = _instance_suspects(counts, held)
        volumes = [v for name in cfg.accounts() for v in _account_volumes(name)]
    except provider.VastError:
        return []  # try again next time
    suspects += _volume_suspects(volumes, counts)
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
            elif (kept := _destroy(pid, kind, resource_id)) is None:
                destroyed += 1
                note = "; destroyed"
            else:
                note = f"; kept: {kept}"
        s.event(pid, "orphan", f"{kind} {resource_id} carries our label but no pool references it{note}",
                resource=kind, resource_id=resource_id)
    s.record_orphans(len(orphans))
    return [list(o[:3]) for o in orphans]


def _instance_suspects(counts: dict[str, int], held: set[str]) -> list[tuple]:
    """Labelled instances that their pool does not reference: (kind, id, pool id, created at)."""
    s, suspects = runtime.store(), []
    for name in sorted(counts):
        parsed = parse_label(name)
        if parsed is None:
            continue  # not a warmpool label
        pid, role = parsed
        if pid in held:
            continue  # an operation holds the machine, its record not rebuilt yet: it decides
        pool = s.get_pool(pid)
        # more instances carry the label than the pool can reference: look closer
        if counts[name] > (1 if pool and pool[INSTANCE_FIELDS[role]] else 0):
            suspects += [("instance", row["id"], pid, _created(row))
                         for row in runtime.vast(split_pool_id(pid)[0]).labelled(name)
                         if row["id"] not in referenced(pool)]
    return suspects


def _account_volumes(name: str) -> list[dict]:
    """The volumes of one Vast account that carry our names."""
    with on_account(name):
        return [v for v in runtime.vast().show_volumes() if VOLUME_NAME.fullmatch(v.get("label") or "")]


def _volume_suspects(volumes: list[dict], counts: dict[str, int]) -> list[tuple]:
    """Our volumes that their pool does not reference. A volume an instance uses is in use, and one whose
    pool has labelled instances but no record yet is left to the rebuild."""
    s = runtime.store()
    known = {volume_name(*split_pool_id(pid), kind): pid for pid in s.all_pool_ids() for kind in KINDS}
    claimed = {volume_name(*split_pool_id(pid), kind) for pid in rebuild.labelled_pools(counts) for kind in KINDS}
    suspects = []
    for volume in volumes:
        name = volume["label"]
        match = VOLUME_NAME.fullmatch(name)
        if match is None:
            continue  # not a warmpool volume
        tenant, machine, _ = match.groups()
        # a hashed tenant of no known pool cannot be named: its events go under the hash
        pid = known.get(name) or pool_id(tenant, int(machine))
        pool = s.get_pool(pid)
        if volume.get("instances") or (pool is None and name in claimed) or volume["id"] in referenced(pool):
            continue
        suspects.append(("volume", volume["id"], pid, _created(volume)))
    return suspects


def _destroy(pid: str, kind: str, resource_id: int) -> str | None:
    """Destroy an orphan with the machine's lock held, after reading its pool again; None when destroyed,
    else why it was kept."""
    s, cfg = runtime.store(), runtime.settings()
    with s.lease_if_free(pid, cfg.lock_ttl) as lease:
        if lease is None:
            return "an operation holds the machine"
        pool = s.get_pool(pid)
        if resource_id in referenced(pool):
            return "its pool references it now"
        if pool and pool.get("creating"):
            return "its pool has a create in flight, which may be this"
        try:
            with fenced_by(pid, lease.held):
                if kind == "instance":
                    runtime.vast().destroy_instance(resource_id)
                else:
                    runtime.vast().delete_volume(resource_id)
        except provider.VastError as exc:
            return f"the provider did not destroy it ({type(exc).__name__})"
        except FencedOut:
            return "the machine's lock was lost before the call"
        return None
