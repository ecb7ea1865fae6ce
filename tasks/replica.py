"""A pool's replica on another host, kept fresh with Vast's volume copy (pools with ``"replica": true``).

Vast volumes are local: a pool's volume, primary and standby share one host, and that host failing
loses them all. A replica is a volume on another host that could take the pool (same GPU model,
verified, two free GPUs, rentable for long, cheapest), named ``warmpool_<tenant>_<machine>_replica``.
The pool's volume is copied onto it every REPLICA_COPY_INTERVAL seconds: that interval, plus one
copy, bounds the data a host failure loses. When the host fails, ``tasks/hostfailover.py`` moves
the pool to the replica's host.

Beat runs ``upkeep`` at least twice per copy interval, on the provision queue (so its calls never
go before a failover's): one volume list for every pool, then, for each active or degraded pool
that needs something, one short ``tend`` with the machine's lock held and its provider calls
fenced (rule 12 in docs/architecture.md):

- ``create``: no replica yet: adopt a replica-named volume an interrupted attempt made, or pick a
  host and create one there; then start the first copy;
- ``landed``: Vast reports no progress, so the replica's row says ``copying`` until the copy lands;
  then ``replica_data_at`` becomes the time the copy started (the replica holds the data as of then);
- ``stuck``: a copy still under way after COPY_DEADLINE is cancelled (a copy whose source host
  failed never lands), and started again;
- ``copy``: no copy under way and the replica's data older than REPLICA_COPY_INTERVAL;
- ``lost``: the replica's host is offline, or the replica is gone: it is dropped, and the next
  run makes a new one on another host;
- ``remove``: the pool no longer wants a replica;
- ``retire``: what a host failover left on the old host, which the provider refused to destroy then.

A failed action is told once (event ``replica_failed``) and tried again after REPLICA_COPY_INTERVAL.
"""

import time

from celery import shared_task

from app import runtime
from app import vast as provider
from app.hosts import LASTING_MARGINS, group_hosts, offers_query
from app.pools import Pool, ReplicaFields, State, epoch_seconds, iso_at, pool_id, required, split_pool_id, volume_name
from app.runtime import on_account, pools_by_account
from app.settings import Settings
from app.store import FencedOut
from tasks.base import fenced_by

# a copy still under way after this many intervals (and at least COPY_DEADLINE_MIN seconds) is given up
COPY_DEADLINE_INTERVALS, COPY_DEADLINE_MIN = 3, 600.0
# hosts tried for a new replica, cheapest first, when one has no volume offer
HOSTS_TRIED = 3
# a degraded pool (its host full, say) still runs its primary: its data is worth copying
KEPT = (State.ACTIVE, State.DEGRADED)
NO_REPLICA: ReplicaFields = {"replica_host_machine_id": None, "replica_volume_id": None, "replica_data_at": None,
                            "replica_copy_started": None, "replica_storage_cost": None}


def wants_replica(pool: Pool, cfg: Settings) -> bool:
    """The pool's own choice, else WARMPOOL_REPLICA_DEFAULT."""
    return cfg.replica_default if pool.get("replica") is None else bool(pool["replica"])


def replica_name(pid: str) -> str:
    return volume_name(*split_pool_id(pid), "replica")


def _view(row: dict | None) -> dict | None:
    """What ``tend`` needs of a volume row (it travels in the task's message)."""
    return row and {"id": row["id"], "machine_id": row.get("machine_id"), "status": row.get("status"),
                    "storage_cost": row.get("storage_cost")}


@shared_task(name="warmpool.replica.upkeep")
def upkeep() -> int:
    """One volume list per Vast account for every pool with a replica (or wanting one) on it; a ``tend`` for each
    that needs one."""
    s, cfg = runtime.store(), runtime.settings()
    pools = {pool_id(p["tenant"], p["machine_id"]): p for p in s.get_pools(s.watched_pool_ids())
             if p["state"] in KEPT and (wants_replica(p, cfg) or p.get("replica_volume_id") or p.get("retire_host"))}
    tended = 0
    for name, pids in pools_by_account(list(pools)).items():
        if not pids:
            continue
        try:
            with on_account(name):
                volumes = runtime.vast().show_volumes()
        except provider.VastError:
            continue  # unknown: decide nothing, the next run asks again
        tended += _tend_seen([pools[pid] for pid in pids], volumes, cfg)
    return tended


def _tend_seen(pools: list[Pool], volumes: list[dict], cfg: Settings) -> int:
    """A ``tend`` for each of ``pools`` whose replica needs one, by one account's ``volumes``."""
    by_id = {v["id"]: v for v in volumes}
    tended = 0
    for pool in pools:
        pid = pool_id(pool["tenant"], pool["machine_id"])
        replica = pool.get("replica_volume_id")
        seen = {"replica_volume_id": replica, "replica": _view(by_id.get(replica)),
                "volume": _view(by_id.get(pool["volume_id"])),
                "unclaimed": [_view(v) for v in volumes if v.get("label") == replica_name(pid)
                              and v["id"] not in (replica, pool["volume_id"])]}
        if next_action(pool, seen, cfg, time.time()):
            tend.delay(pid, seen)
            tended += 1
    return tended


def next_action(pool: Pool, seen: dict, cfg: Settings, now: float) -> str | None:
    """What the pool's replica needs, from the pool record and the volume rows ``upkeep`` saw."""
    replica, retire = pool.get("replica_volume_id"), pool.get("retire_host")
    if retire and retire.get("next_at", 0) <= now:
        return "retire"
    if now < pool.get("replica_retry_at", 0) or seen["replica_volume_id"] != replica:
        return None  # backing off, or the pool moved on since the volumes were listed
    if not wants_replica(pool, cfg):
        return "remove" if replica else None
    if replica is None:
        return "create"
    row = seen["replica"]
    if row is None or row["status"] == "offline":
        return "lost"
    started = pool["replica_copy_started"]
    if started is not None:
        if row["status"] != "copying":
            return "landed"
        deadline = max(COPY_DEADLINE_INTERVALS * cfg.replica_copy_interval, COPY_DEADLINE_MIN)
        return "stuck" if now - started > deadline else None
    data_at = pool["replica_data_at"]
    source_online = seen["volume"] is not None and seen["volume"]["status"] != "offline"
    if source_online and (data_at is None or now - epoch_seconds(data_at) >= cfg.replica_copy_interval):
        return "copy"
    return None


@shared_task(name="warmpool.replica.tend")
def tend(pid: str, seen: dict) -> str:
    """Do what the pool's replica needs, with the machine's lock (a busy pool is left to the next run)."""
    s, cfg = runtime.store(), runtime.settings()
    with s.lease_if_free(pid, cfg.lock_ttl) as lease:
        pool = lease and s.get_pool(pid)
        if not pool or pool["state"] not in KEPT:
            return "busy or moved on"
        action = next_action(pool, seen, cfg, time.time())
        if action is None:
            return "nothing to do"
        try:
            with s.heartbeat(pid, lease.held, cfg.lock_ttl), fenced_by(pid, lease.held):
                fields: Pool = ACTIONS[action](pid, pool, seen)
        except FencedOut:
            return "fenced out"
        except provider.VastError as exc:
            fields = {"replica_retry_at": time.time() + cfg.replica_copy_interval}
            s.event(pid, "replica_failed", f"replica {action}: {exc}; tried again in "
                                           f"{cfg.replica_copy_interval:.0f} s", action=action)
        pool.update(fields)
        s.save_pool(pool, lease.held)
        return action


def _create(pid: str, pool: Pool, seen: dict) -> Pool:
    """A replica-named volume an interrupted attempt made, or a new one on the best other host; then a copy."""
    s = runtime.store()
    made = next((v for v in seen["unclaimed"] if v["status"] != "offline"
                 and v["machine_id"] != pool["host_machine_id"]), None)
    if made is None:
        made = _new_replica(pid, pool)
    else:
        s.event(pid, "replica_adopted", f"replica volume {made['id']} on host {made['machine_id']} adopted")
    fields: Pool = {**NO_REPLICA, "replica_host_machine_id": made["machine_id"], "replica_volume_id": made["id"],
              "replica_retry_at": 0, "replica_storage_cost": made.get("storage_cost")}
    s.event(pid, "replica_created", f"replica volume {made['id']} on host {made['machine_id']}; the first copy "
                                    f"of volume {pool['volume_id']} starts", replica_volume_id=made["id"],
            replica_host_machine_id=made["machine_id"])
    return {**fields, **_copy(pid, {**pool, **fields}, seen)}


def _new_replica(pid: str, pool: Pool) -> dict:
    """A volume on the cheapest other verified host that could take the pool (two free GPUs of its model)."""
    cfg = runtime.settings()
    offers = runtime.vast().search_offers(offers_query(pool["gpu_name"], pool["max_price"],
                                                       min_duration=LASTING_MARGINS * cfg.expiry_margin))
    # not the pool's host, nor one that failed under it
    failed = (pool["last_failover"] or {}).get("from_host_machine_id")
    hosts = [h["machine_id"] for h in group_hosts(offers) if h["machine_id"] not in (pool["host_machine_id"], failed)]
    for machine_id in hosts[:HOSTS_TRIED]:
        volume_offers = runtime.vast().search_volume_offers({"machine_id": {"eq": machine_id}, "limit": 1})
        if volume_offers:
            volume_id = runtime.vast().create_volume(volume_offers[0]["id"], pool["volume_size"], replica_name(pid))
            return {"id": volume_id, "machine_id": machine_id, "storage_cost": volume_offers[0].get("storage_cost")}
    raise provider.RequestRejected(f"no other verified host with two free {pool['gpu_name'] or 'GPU'}s and a "
                                   f"volume offer", None, "no_replica_host", None)


def _copy(pid: str, pool: Pool, seen: dict) -> Pool:
    """Start a copy of the pool's volume onto its replica."""
    runtime.vast().copy_volume(required(pool, "volume_id"), required(pool, "replica_volume_id"))
    return {"replica_copy_started": time.time()}


def _landed(pid: str, pool: Pool, seen: dict) -> Pool:
    started = required(pool, "replica_copy_started")  # what ``next_action`` saw under way
    if pool["replica_data_at"] is None:
        runtime.store().event(pid, "replica_ready", f"replica volume {pool['replica_volume_id']} holds the data of "
                                                    f"{iso_at(started)}")
    return {"replica_data_at": iso_at(started), "replica_copy_started": None}


def _stuck(pid: str, pool: Pool, seen: dict) -> Pool:
    started = required(pool, "replica_copy_started")  # what ``next_action`` saw under way
    _cancel(required(pool, "replica_volume_id"))
    runtime.store().event(pid, "replica_failed", f"the copy into replica volume {pool['replica_volume_id']} started at "
                                                 f"{iso_at(started)} never landed: cancelled; the "
                                                 f"replica keeps the data of {pool['replica_data_at']}", action="stuck")
    return {"replica_copy_started": None}


def _drop(pid: str, pool: Pool, seen: dict) -> Pool:
    """Forget the replica (its host is offline, it is gone, or the pool wants none), deleting it if possible."""
    replica, why = required(pool, "replica_volume_id"), "deleted"
    try:
        _cancel(replica)
        runtime.vast().delete_volume(replica)
    except provider.RequestRejected as exc:
        why = f"not deleted ({exc.msg or exc}): delete it by hand"
    if seen["replica"] is None or seen["replica"]["status"] == "offline":
        runtime.store().event(pid, "replica_lost", f"replica volume {replica} on host "
                                                   f"{pool['replica_host_machine_id']} is offline or gone ({why}); "
                                                   "a new one follows", replica_volume_id=replica)
    else:
        runtime.store().event(pid, "replica_removed", f"replica volume {replica} {why}", replica_volume_id=replica)
    return {**NO_REPLICA}


def _cancel(volume_id: int) -> None:
    try:
        runtime.vast().cancel_copy(volume_id)
    except provider.NotFound:
        pass


def retire_host(pid: str, pool: Pool, seen: dict | None = None) -> Pool:
    """Destroy the instances a host failover left on the old host and delete its volume. What the provider
    refuses (its host still offline) stays in ``retire_host``, tried again after REPLICA_COPY_INTERVAL."""
    old = required(pool, "retire_host")
    left, errors = [], []
    for instance_id in old["instance_ids"]:
        try:
            runtime.vast().destroy_instance(instance_id)
        except provider.RequestRejected as exc:
            left.append(instance_id)
            errors.append(str(exc))
    volume = old["volume_id"]
    if volume is not None:
        try:
            runtime.vast().delete_volume(volume)
            volume = None
        except provider.RequestRejected as exc:
            errors.append(str(exc))
    if not left and volume is None:
        runtime.store().event(pid, "old_host_retired", f"old host {old['host_machine_id']}: instances "
                                                       f"{old['instance_ids']} destroyed, volume {old['volume_id']} "
                                                       "deleted")
        return {"retire_host": None}
    if "next_at" not in old:  # told once; the old host may stay offline for days
        runtime.store().event(pid, "old_host_retire_postponed", f"old host {old['host_machine_id']}: instances "
                                                                f"{left} and volume {volume} left for later "
                                                                f"({'; '.join(errors)})")
    later = time.time() + runtime.settings().replica_copy_interval
    return {"retire_host": {**old, "instance_ids": left, "volume_id": volume, "next_at": later}}


ACTIONS = {"create": _create, "copy": _copy, "landed": _landed, "stuck": _stuck, "lost": _drop, "remove": _drop,
           "retire": retire_host}
