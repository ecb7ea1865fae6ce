"""Rebuilding pool records that Redis lost, from the provider (rule 13 in docs/architecture.md).

Redis is a cache of the provider. Every instance of a pool carries the label
``warmpool-<tenant>-<machine>-<role>`` and is linked to the pool's volume, so a
record lost to a restart without persistence, an eviction or a FLUSHALL is written
again from them: the same host, volume, primary and standby. The reconciler rebuilds
before it calls anything an orphan, the sweep asks for a rebuild as soon as it sees
labels of a pool with no record, and ``warmpool rebuild`` shows (or, with ``--apply``,
writes) what would be rebuilt.

Where the provider's view is ambiguous:

- Only instances linked to one volume form a pool: the volume of the instance chosen
  first below. An instance on no volume forms none (the reconciler reports it), and
  neither does a volume alone (it may be what a cleanup was deleting).
- The primary is an instance the provider is asked to run, one labelled primary before
  one labelled standby, and of two alike the one that has run longer: that is the one
  clients have been using; the sweep's split-brain guard stops the other. With none
  running, the oldest primary-labelled instance stays primary and the healer fails it
  over.
- A running primary with the standby's label beside a stopped primary-labelled
  instance is a failover interrupted after it started the standby: the old one is to
  be retired, and the healer finishes the failover. With the old one gone already, the
  rebuild relabels the new one itself (the one provider call it makes, fenced).
- The standby is the oldest stopped standby-labelled instance.
- The pool is active when its primary runs and a stopped standby waits; otherwise it
  is degraded and the healer repairs it at once. Labels do not say whether a pool was
  disabled: every rebuilt pool is enabled.
"""

import logging
import math
from collections import defaultdict
from dataclasses import dataclass

from celery import shared_task
from celery.signals import worker_ready

from app import runtime
from app.pools import (Pool, iso_at, label, new_pool, parse_label, primary_fields, schedule_switchover, split_pool_id,
                       standby_stopped, to_active, to_degraded, volume_name)
from app.runtime import on_account, pools_by_account
from app.store import FencedOut
from tasks.base import fenced_by
from tasks.provision import is_running
from tasks.splitbrain import guard_split_brain

log = logging.getLogger(__name__)

# a lock name no pool id can take (pool ids hold a ':'): one rebuild at a time
REBUILD_LOCK = "rebuild"
# labels asked about in one list call (the filter travels in the URL): two full pages of 25 rows
LABELS_PER_CALL = 50

REBUILT, WOULD_REBUILD, BUSY, NOT_A_POOL, HAS_RECORD = (
    "rebuilt", "would rebuild", "busy: an operation holds the machine", "not a pool", "has a record again")


@dataclass
class Rebuilt:
    """What a rebuild did (or, in a dry run, would do) for one pool id."""
    pid: str
    outcome: str
    pool: Pool | None = None


def labelled_pools(label_counts: dict[str, int]) -> list[str]:
    """The pool ids that the labels counted by the provider name."""
    return sorted({parsed[0] for name, count in label_counts.items() if count and (parsed := parse_label(name))})


def instances_by_pool(pids: list[str] | None) -> dict[str, list[dict]]:
    """The provider's labelled instances by pool id: of ``pids``, or of every pool when None."""
    if pids is None:
        rows = runtime.vast().list_instances().instances
    else:
        names = [label(*split_pool_id(pid), role) for pid in pids for role in ("primary", "standby")]
        rows = [row for i in range(0, len(names), LABELS_PER_CALL)
                for row in runtime.vast().labelled(*names[i:i + LABELS_PER_CALL])]
    found = defaultdict(list)
    for row in rows:
        parsed = parse_label(row.get("label") or "")
        if parsed:
            found[parsed[0]].append(row)
    return found


def _role(row: dict) -> str:
    parsed = parse_label(row["label"])
    if parsed is None:  # the rows here are those grouped by their label (``labelled_pools``)
        raise ValueError(f"not a warmpool label: {row['label']!r}")
    return parsed[1]


def _up(row: dict) -> bool:
    """The provider is asked to run it (it may still be loading)."""
    return row.get("intended_status") == "running"


def _volume(row: dict) -> int | None:
    info = row.get("volume_info") or []
    return info[0].get("id") if info else None


def _order(row: dict) -> tuple:
    """Which instance is the primary first: one that runs, labelled primary, running longest."""
    return not _up(row), _role(row) != "primary", row.get("start_date") or math.inf, row["id"]


def _oldest_standby(stopped: list[dict]) -> dict | None:
    """The standby of a rebuilt pool: the oldest stopped standby-labelled instance, the one the pool has had
    longest (a younger one is more likely what an interrupted create left)."""
    return min((row for row in stopped if _role(row) == "standby"), key=_order, default=None)


def form_pool(pid: str, rows: list[dict], volumes: list[dict]) -> Pool | None:
    """The pool record that a pool's labelled instances (and the account's volumes) form; None if they form
    none. Pure: it decides, it writes nothing."""
    tenant, machine_id = split_pool_id(pid)
    named = next((v for v in volumes if v.get("label") == volume_name(tenant, machine_id)), None)
    linked = [row for row in rows if _volume(row) is not None]
    if linked:
        volume_id = _volume(min(linked, key=_order))
        rows = [row for row in linked if _volume(row) == volume_id]
    elif named and not any("volume_info" in row for row in rows):
        volume_id = named["id"]  # a provider that does not show links: the volume's name says it
    else:
        return None
    candidates = [row for row in rows if _up(row) or _role(row) == "primary"]
    primary = min(candidates, key=_order) if candidates else None
    stopped = [row for row in rows if row is not primary and not _up(row)]
    retire = next((row for row in sorted(stopped, key=_order) if _role(row) == "primary"), None) \
        if primary and _role(primary) == "standby" else None
    standby = _oldest_standby(stopped)
    some = primary or standby
    if some is None:  # no instance: nothing to form a pool from
        return None
    size = next((v.get("disk_space") for v in volumes if v["id"] == volume_id), None) or \
        next((i.get("total_space") for row in rows for i in row.get("volume_info") or [] if i.get("id") == volume_id),
             None)
    pool = new_pool(
        tenant, machine_id, host_machine_id=some["machine_id"], volume_id=volume_id,
        primary_gpu_id=primary["id"] if primary else None, retire_gpu_id=retire["id"] if retire else None,
        **primary_fields(primary),
        gpu_name=some.get("gpu_name"), image=some.get("image_uuid"), disk_size=some.get("disk_space") or 50,
        onstart=some.get("onstart"), env=dict(some.get("extra_env") or []) or None,
        volume_size=size or 100)
    if standby:
        standby_stopped(pool, standby["id"])
    started = [row["start_date"] for row in rows if row.get("start_date")]
    if started:  # the pool is as old as its oldest instance
        pool["created_at"] = iso_at(min(started))
    missing = [what for what, lacking in (
        ("no running primary", not is_running(primary)), ("no stopped standby", standby is None),
        ("a failover stopped after it started the standby", retire is not None)) if lacking]
    if missing:
        to_degraded(pool, "rebuilt from the provider with " + ", ".join(missing), retry_in=0)
    else:
        to_active(pool)
    return pool


def rebuild(pids: list[str] | None = None, apply: bool = True) -> list[Rebuilt] | None:
    """Rebuild the records of ``pids`` (every labelled pool when None) that Redis does not have.

    Each record is written with the machine's lock held and only if there is still none. Returns what was
    done per pool id, or None when another rebuild runs now. A provider error propagates: nothing is
    decided on a partial view.
    """
    s, cfg = runtime.store(), runtime.settings()
    if not apply:
        return _rebuild(pids, apply)
    with s.lease_if_free(REBUILD_LOCK, cfg.lock_ttl) as lease:
        if lease is None:
            return None
        with s.heartbeat(REBUILD_LOCK, lease.held, cfg.lock_ttl):
            return _rebuild(pids, apply)


def _rebuild(pids: list[str] | None, apply: bool) -> list[Rebuilt]:
    """Each Vast account's pools are rebuilt from that account's listing (rule 17)."""
    s = runtime.store()
    if pids is None:
        return [done for name in runtime.settings().accounts() for done in _rebuild_account(name, None, apply)]
    pids = s.missing_pools(pids)  # before any provider call: a repeated request costs none
    return [done for name, on_it in pools_by_account(pids).items() if on_it
            for done in _rebuild_account(name, on_it, apply)]


def _rebuild_account(name: str, pids: list[str] | None, apply: bool) -> list[Rebuilt]:
    """The pools of one account, from its own listing: labels of a tenant on another account are not its pools."""
    s, cfg = runtime.store(), runtime.settings()
    with on_account(name):
        found = instances_by_pool(pids)
        missing = [pid for pid in s.missing_pools(sorted(found)) if cfg.account_of(split_pool_id(pid)[0]) == name]
        if not missing:
            return []
        volumes = runtime.vast().show_volumes()
        report = []
        for pid in missing:
            pool = form_pool(pid, found[pid], volumes)
            if pool is None:
                report.append(Rebuilt(pid, f"{NOT_A_POOL}: its labelled instances "
                                           f"{sorted(r['id'] for r in found[pid])} use no volume"))
            elif not apply:
                report.append(Rebuilt(pid, WOULD_REBUILD, pool))
            else:
                report.append(Rebuilt(pid, _write(pid, pool, found[pid]), pool))
    return report


def _write(pid: str, pool: Pool, rows: list[dict]) -> str:
    """Write one rebuilt record under the machine's lock, if the pool has none still (BUSY when an operation
    holds the machine, or took it meanwhile)."""
    try:
        return _write_held(pid, pool, rows)
    except FencedOut:
        return BUSY


def _write_held(pid: str, pool: Pool, rows: list[dict]) -> str:
    """The record is written only if there is none, checked in the write's own transaction (``create_pool``):
    a record written since the rebuild found it missing (a cleanup ending during a long listing) stays."""
    s, cfg = runtime.store(), runtime.settings()
    with s.lease_if_free(pid, cfg.lock_ttl) as lease:
        if lease is None:
            return BUSY
        primary = next((row for row in rows if row["id"] == pool["primary_gpu_id"]), None)
        if primary and _role(primary) == "standby" and pool["retire_gpu_id"] is None:
            if s.get_pool(pid) is not None:
                return HAS_RECORD  # its operation owns its instances: no relabel
            # a failover retired the old primary, then stopped before relabelling the new one: the sweep
            # would count no primary label and take the pool's primary for gone
            with fenced_by(pid, lease.held):
                runtime.vast().label_instance(primary["id"], label(*split_pool_id(pid), "primary"))
        _keep_switchover(pid, pool)
        if not s.create_pool(pool, lease.held):
            return HAS_RECORD
        s.event(pid, "pool_rebuilt", "rebuilt from the provider after Redis lost its record",
                **{k: pool[k] for k in ("state", "host_machine_id", "volume_id", "primary_gpu_id", "standby_gpu_id",
                                        "retire_gpu_id")})
    log.warning("pool %s rebuilt from the provider (%s)", pid, pool["state"])
    up = [row["id"] for row in rows if _up(row) and row["id"] != pool["primary_gpu_id"]]
    if up:  # more than one instance runs on the volume: stop all but the primary
        guard_split_brain.delay(pid, f"rebuilt with {sorted(up)} running beside primary {pool['primary_gpu_id']}")
    return REBUILT


def _keep_switchover(pid: str, pool: Pool) -> None:
    """A switchover planned for the lost record (its index survived) is kept when the rebuilt pool has a standby
    to switch to; else it is dropped, with an event."""
    at = runtime.store().switchover_at(pid)
    if at is None:
        return
    if pool["standby_gpu_id"] is not None:
        schedule_switchover(pool, at)
        return
    runtime.store().event(pid, "switchover_dropped", f"the switchover planned for {iso_at(at)} is dropped: the "
                                                     "rebuilt pool has no standby", scheduled_for=iso_at(at),
                          reason="no standby")


def adopt(label_counts: dict[str, int]) -> set[str] | None:
    """For the reconciler: rebuild the pools whose labels the provider counts but Redis has no record of.
    Returns the pool ids that an operation held (their resources must not be judged this time), or None when
    another rebuild runs now."""
    report = rebuild(labelled_pools(label_counts))
    return None if report is None else {r.pid for r in report if r.outcome == BUSY}


def adopt_soon(label_counts: dict[str, int]) -> None:
    """For the sweep: when the provider counts labels of pools Redis has no record of, rebuild them now
    instead of at the next reconcile (once per reconcile interval for each: what forms no pool stays)."""
    s, cfg = runtime.store(), runtime.settings()
    due = s.first_rebuild_tries(s.missing_pools(labelled_pools(label_counts)), cfg.reconcile_interval)
    if due:
        rebuild_pools.apply_async((due,), expires=max(5.0, 5 * cfg.health_check_interval))


@shared_task(name="warmpool.rebuild.rebuild")
def rebuild_pools(pids: list[str]) -> int:
    """Rebuild the records of ``pids`` that are missing; return how many were written."""
    return sum(r.outcome == REBUILT for r in rebuild(pids) or [])


@worker_ready.connect
def _warn_about_redis(**_):
    """Say it loudly at start when Redis is set up to lose what it holds."""
    for warning in runtime.store().redis_warnings(expect_persistence=not runtime.settings().dev):
        log.warning("REDIS MAY LOSE DATA: %s", warning)
