"""The pool records, and the indexes that every write of one keeps in step (rules 2 and 13 in
docs/architecture.md)."""

import json
from typing import cast

import redis

from app.pools import Pool, State, epoch_seconds, is_unsettled, is_watched, loaded_pool, now_iso, pool_id
from app.store import keys
from app.store.locks import FencedOut, Held
from app.store.operations import OP_TTL


class PoolExists(Exception):
    """A write meant to create a pool record found one there."""


class PoolRecords:
    """The pools' repository (mixed into ``Store``): one JSON record per pool, and its indexes.

    Keys: ``keys.pool(pid)`` the record; the set ``POOLS`` and ``tenant_pools(tenant)`` (its machine ids) of
    every pool; the indexes kept by each write, in the write's transaction: ``WATCHED`` (pools whose primary the
    sweep watches), ``PRIMARIES`` and ``STANDBYS`` (instance id -> pool id, watched pools), ``UNSETTLED`` (what
    the healer visits), ``BY_STATE`` (pools per state, for /metrics) and ``SWITCHOVERS`` (pool id -> when its
    planned switchover is due); ``AUDIT_CURSOR``, where the sweep's look at primaries goes on.

    Compare-and-set (a transaction that WATCHes what it compares, or one Lua script):

        * ``save_pool``: compares the machine's fencing epoch (``keys.epoch(pid)``) with the writer's
          ``held.epoch``, and, if given, the record's ``seq`` with ``expect_seq`` (a step delivered twice writes
          once); FencedOut when either differs. The record and every index change together or not at all,
          with, if given, the operation's context in its op record (``keys.op(op_id)``, WATCHed too).
        * ``create_pool``: as ``save_pool``, and compares the record with none (False when one is there).
        * ``claim_machine``: a Lua script that adds the machine to its tenant's set only under the tenant's
          ``limit`` (parallel requests never pass it).

    Plain reads (never a write): ``get_pool``, ``get_pool_and_last_sweep``, ``get_pools``, ``tenant_pools``,
    ``all_pool_ids``, ``watched_pool_ids``, ``unsettled_pool_ids``, ``primaries``, ``standbys``,
    ``pools_with_standby``, ``due_switchovers``, ``switchover_at``, ``pool_counts``.

    Unconditional write: ``audit_primaries`` moves the audit cursor on (two sweeps at once would only look at
    some primaries twice).
    """

    r: redis.Redis

    def _register_pool_scripts(self) -> None:
        self._claim_machine = self.r.register_script(_CLAIM_MACHINE)

    def get_pool(self, pid: str) -> Pool | None:
        raw = self.r.get(keys.pool(pid))
        return loaded_pool(raw) if raw else None

    def get_pool_and_last_sweep(self, pid: str) -> tuple[Pool | None, str | None]:
        """A pool and when the health sweep last ran, in one round trip (the status read)."""
        raw, last_sweep = cast(list[str | None], self.r.mget(keys.pool(pid), keys.SWEEP_LAST))
        return (loaded_pool(raw) if raw else None), last_sweep

    def get_pools(self, pids: list[str]) -> list[Pool]:
        if not pids:
            return []
        return [loaded_pool(raw) for raw in self.r.mget([keys.pool(p) for p in pids]) if raw]

    def tenant_pools(self, tenant: str) -> list[Pool]:
        machines = sorted(int(m) for m in self.r.smembers(keys.tenant_pools(tenant)))
        return self.get_pools([pool_id(tenant, m) for m in machines])

    def claim_machine(self, tenant: str, machine_id: int, limit: int) -> bool:
        """Count a machine among its tenant's pools, unless the tenant has ``limit`` already (atomic: parallel
        requests never pass it). A machine counted already is always True; a cleaned-up pool keeps its count."""
        return bool(self._claim_machine(keys=[keys.tenant_pools(tenant)], args=[machine_id, limit]))

    def all_pool_ids(self) -> list[str]:
        return self._sorted_members(keys.POOLS)

    def watched_pool_ids(self) -> list[str]:
        return self._sorted_members(keys.WATCHED)

    def unsettled_pool_ids(self) -> list[str]:
        """Enabled pools that are degraded or in the middle of an operation."""
        return self._sorted_members(keys.UNSETTLED)

    def _sorted_members(self, key: str) -> list[str]:
        return sorted(cast(set[str], self.r.smembers(key)))  # the client decodes (CLIENT_OPTIONS)

    def primaries(self, instance_ids: list[int]) -> dict[int, str]:
        """Map primary instance ids of watched pools to their pool ids."""
        return self._pools_of(keys.PRIMARIES, instance_ids)

    def _pools_of(self, instances_key: str, instance_ids: list[int]) -> dict[int, str]:
        if not instance_ids:
            return {}
        found = cast(list[str | None], self.r.hmget(instances_key, [str(i) for i in instance_ids]))
        return {i: pid for i, pid in zip(instance_ids, found) if pid}

    def pools_with_standby(self) -> set[str]:
        """Watched pools whose record names a standby."""
        return set(cast(list[str], self.r.hvals(keys.STANDBYS)))

    def audit_primaries(self, count: int) -> dict[int, str]:
        """The next few primaries of watched pools, in rotation: each sweep looks at some of them directly, so a
        primary stopped by someone else is seen within (pools / count) sweeps, at one call per sweep."""
        cursor, found = cast(tuple[int, dict[str, str]], self.r.hscan(
            keys.PRIMARIES, int(cast(str | None, self.r.get(keys.AUDIT_CURSOR)) or 0), count=count))
        self.r.set(keys.AUDIT_CURSOR, cursor)
        return {int(iid): pid for iid, pid in found.items()}

    def standbys(self, instance_ids: list[int]) -> dict[int, str]:
        """Map standby instance ids of watched pools to their pool ids."""
        return self._pools_of(keys.STANDBYS, instance_ids)

    def create_pool(self, pool: Pool, held: Held) -> bool:
        """Write a pool record only if there is none (fenced as any write); False when there is one. The check
        and the write are one transaction: a record written by anyone in between is never overwritten."""
        try:
            self.save_pool(pool, held, only_new=True)
        except PoolExists:
            return False
        return True

    def save_pool(self, pool: Pool, held: Held, expect_seq: int | None = None, only_new: bool = False,
                  context: tuple[str, dict] | None = None) -> None:
        """Write a pool record if ``held`` is still the newest lock holder (fencing), given ``expect_seq``, if
        the record is still at that step (a duplicate delivery of a step is not), and given ``only_new``, if
        there is no record yet (else PoolExists); given ``context`` (op id, context), its op record's context
        in the same transaction."""
        pid = pool_id(pool["tenant"], pool["machine_id"])
        pool["updated_at"] = now_iso()
        key, epoch_key = keys.pool(pid), keys.epoch(pid)
        op_key = keys.op(context[0]) if context else ""

        def write(pipe: redis.client.Pipeline) -> None:
            if int(pipe.get(epoch_key) or 0) != held.epoch:
                raise FencedOut(pid)
            old = json.loads(pipe.get(key) or "null")
            if only_new and old is not None:
                raise PoolExists(pid)
            if expect_seq is not None and (old or {}).get("seq", 0) != expect_seq:
                raise FencedOut(pid)
            old_primary = old["primary_gpu_id"] if old else None
            old_standby = old["standby_gpu_id"] if old else None
            op = json.loads(pipe.get(op_key) or "null") if context else None
            pipe.multi()
            if context and op:
                pipe.set(op_key, json.dumps({**op, "context": context[1]}), ex=OP_TTL)
            if (old or {}).get("state") != pool["state"]:  # pools by state, kept at write time
                if old:
                    pipe.hincrby(keys.BY_STATE, old["state"], -1)
                pipe.hincrby(keys.BY_STATE, pool["state"], 1)
            pipe.set(key, json.dumps(pool))
            pipe.sadd(keys.POOLS, pid)
            pipe.sadd(keys.tenant_pools(pool['tenant']), pool["machine_id"])
            if old_primary is not None:
                pipe.hdel(keys.PRIMARIES, str(old_primary))
            if old_standby is not None:
                pipe.hdel(keys.STANDBYS, str(old_standby))
            if is_watched(pool):
                pipe.sadd(keys.WATCHED, pid)
                pipe.hset(keys.PRIMARIES, str(pool["primary_gpu_id"]), pid)
                if pool["standby_gpu_id"] is not None:
                    pipe.hset(keys.STANDBYS, str(pool["standby_gpu_id"]), pid)
            else:
                pipe.srem(keys.WATCHED, pid)
            # the switchover check reads only the due ones; the record holds the schedule
            if planned := pool.get("scheduled_switchover"):
                pipe.zadd(keys.SWITCHOVERS, {pid: epoch_seconds(planned["at"])})
            else:
                pipe.zrem(keys.SWITCHOVERS, pid)
            # the healer visits only pools that are not settled
            if is_unsettled(pool):
                pipe.sadd(keys.UNSETTLED, pid)
            else:
                pipe.srem(keys.UNSETTLED, pid)

        # the record too: its step counter is checked (and the op record, whose context is written)
        self.r.transaction(write, epoch_key, key, *([op_key] if context else []))

    def due_switchovers(self, now: float) -> list[str]:
        """The pools whose scheduled switchover is due at ``now``."""
        return cast(list[str], self.r.zrangebyscore(keys.SWITCHOVERS, "-inf", now))

    def switchover_at(self, pid: str) -> float | None:
        """When the pool's switchover was scheduled for, by the index (what a rebuild can keep of a lost record)."""
        return self.r.zscore(keys.SWITCHOVERS, pid)

    def pool_counts(self) -> dict[str, int]:
        """How many pools are in each state (kept by every write, so reading it costs one call)."""
        counts = {k: int(v) for k, v in self.r.hgetall(keys.BY_STATE).items()}
        return {state.value: counts.get(state, 0) for state in State}


_CLAIM_MACHINE = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 1 end
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('SADD', KEYS[1], ARGV[1])
return 1
"""
