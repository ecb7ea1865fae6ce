"""The state store: every pool, operation, event and lock lives in Redis, and only here.

Nothing outside this package touches Redis or spells a key (``keys.py``). Pool
records are JSON documents. Only the holder of a machine's lock writes its pool,
and every write is fenced: it carries the epoch taken when the lock was acquired
and is refused once a newer holder has taken the lock (rule 2 in
docs/architecture.md). Each concern's records are a mixin of their own.
"""

import hashlib
import json
import time
import uuid
from typing import Any, cast

import redis
from redis.sentinel import Sentinel

from app.pools import State, epoch_seconds, is_unsettled, is_watched, now_iso, pool_id
from app.settings import SentinelAddress, sentinel_address
from app.store import keys
from app.store.budget import BudgetRecords
from app.store.health import HealthRecords
from app.store.ingress import IngressRecords
from app.store.locks import Busy, FencedOut, Held, Lease, LockRecords
from app.store.metrics import MetricsRecords
from app.store.polls import UNSEEN, PollRecords
from app.store.rebuild import RebuildRecords
from app.store.webhooks import WebhookRecords

__all__ = ["Store", "Busy", "FencedOut", "Held", "Lease", "PoolExists", "UNSEEN", "OP_ENDED", "STORE_AWAY"]

# every client: a dead server is noticed within seconds, and a command it did not answer is an error the caller
# handles like a Redis restart (the healer resumes what a step left)
CLIENT_OPTIONS: dict[str, Any] = {"decode_responses": True, "health_check_interval": 10, "socket_timeout": 10,
                  "socket_connect_timeout": 5, "retry_on_timeout": True}


def sentinel_master_client(address: SentinelAddress, master: str, sentinel_password: str) -> redis.Redis:
    """A client of whichever server the sentinels call master now: redis-py's ``Sentinel.master_for`` asks
    them again on each new connection, and a connection to a master that became a replica is dropped
    (``ReadOnlyError`` turns into ``ConnectionError``), so a failover of Redis looks like a Redis restart."""
    sentinels = Sentinel(list(address.nodes), sentinel_kwargs={"password": sentinel_password or None,
                                                               "socket_timeout": 2, "socket_connect_timeout": 2})
    return sentinels.master_for(master, db=address.db, password=address.password, **CLIENT_OPTIONS)


EVENTS_KEPT = 200
OP_TTL = 7 * 24 * 3600
OP_ENDED = ("SUCCESS", "FAILURE")
# Redis unreachable, after redis-py's own retries (about 3 s of backoff): a restart, not a bug of the caller
STORE_AWAY = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


class PoolExists(Exception):
    """A write meant to create a pool record found one there."""


class Store(LockRecords, HealthRecords, BudgetRecords, PollRecords, WebhookRecords, MetricsRecords, RebuildRecords,
            IngressRecords):
    def __init__(self, client: redis.Redis):
        self.r = client
        # what else an event feeds, in the same Redis transaction: functions (pipeline, pid, record)
        self.event_sinks: list = [self.queue_webhook_deliveries, self.count_event]
        self._register_lock_scripts()
        self._register_budget_scripts()
        self._register_ingress_scripts()
        self._claim_machine = self.r.register_script(_CLAIM_MACHINE)
        self._register_webhook_scripts()

    @classmethod
    def from_url(cls, url: str, sentinel_master: str = "", sentinel_password: str = "") -> "Store":
        """The store at a Redis URL, or behind the sentinels of a ``sentinel://`` URL (``app.settings``)."""
        address = sentinel_address(url)
        if address is None:
            return cls(redis.Redis.from_url(url, **CLIENT_OPTIONS))
        store = cls(sentinel_master_client(address, sentinel_master, sentinel_password))
        store.replicas_to_wait = 1
        return store

    # -- pools -------------------------------------------------------------

    def get_pool(self, pid: str) -> dict | None:
        raw = self.r.get(keys.pool(pid))
        return json.loads(raw) if raw else None

    def get_pool_and_last_sweep(self, pid: str) -> tuple[dict | None, str | None]:
        """A pool and when the health sweep last ran, in one round trip (the status read)."""
        raw, last_sweep = cast(list[str | None], self.r.mget(keys.pool(pid), keys.SWEEP_LAST))
        return (json.loads(raw) if raw else None), last_sweep

    def get_pools(self, pids: list[str]) -> list[dict]:
        if not pids:
            return []
        return [json.loads(raw) for raw in self.r.mget([keys.pool(p) for p in pids]) if raw]

    def tenant_pools(self, tenant: str) -> list[dict]:
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

    def create_pool(self, pool: dict, held: Held) -> bool:
        """Write a pool record only if there is none (fenced as any write); False when there is one. The check
        and the write are one transaction: a record written by anyone in between is never overwritten."""
        try:
            self.save_pool(pool, held, only_new=True)
        except PoolExists:
            return False
        return True

    def save_pool(self, pool: dict, held: Held, expect_seq: int | None = None, only_new: bool = False,
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
            if pool.get("scheduled_switchover"):
                pipe.zadd(keys.SWITCHOVERS, {pid: epoch_seconds(pool["scheduled_switchover"]["at"])})
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

    # -- operations (the task resource) --------------------------------------

    def new_op(self, tenant: str, machine_id: int, operation: str) -> str:
        op_id = uuid.uuid4().hex
        self.r.set(keys.op(op_id), json.dumps({
            "task_id": op_id, "tenant": tenant, "machine_id": machine_id, "operation": operation,
            "state": "PENDING", "step": "queued", "result": None, "error": None,
            "created_at": now_iso(), "updated_at": now_iso()}), ex=OP_TTL)
        return op_id

    def get_op(self, op_id: str) -> dict | None:
        raw = self.r.get(keys.op(op_id))
        return json.loads(raw) if raw else None

    def update_op(self, op_id: str, **fields) -> None:
        op = self.get_op(op_id)
        if op is None:
            return
        if op["state"] in OP_ENDED:
            # an ended operation keeps its outcome; only the step of its follow-up work still shows
            # (a failover's standby replacement)
            fields = {"step": fields["step"]} if "step" in fields else {}
            if not fields:
                return
        op.update(fields, updated_at=now_iso())
        self.r.set(keys.op(op_id), json.dumps(op), ex=OP_TTL)
        if fields.get("state") in OP_ENDED:
            self.r.publish(keys.op_done(op_id), op["state"])

    def wait_op(self, op_id: str, timeout: float) -> dict | None:
        """Block until the operation ends or ``timeout`` passes; return the record."""
        deadline = time.monotonic() + timeout
        pubsub = self.r.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(keys.op_done(op_id))
        try:
            while True:
                op = self.get_op(op_id)  # read after subscribing, so no end is missed
                left = deadline - time.monotonic()
                if op is None or op["state"] in OP_ENDED or left <= 0:
                    return op
                pubsub.get_message(timeout=min(left, 1.0))
        finally:
            pubsub.close()

    # -- events --------------------------------------------------------------

    def event(self, pid: str, kind: str, message: str, **data) -> None:
        """Record what happened to a pool; the event sinks (webhooks, metrics) see it in the same transaction.
        ``data`` adds details and never replaces the record's own fields (``at`` is when it happened)."""
        key = keys.events(pid)
        own = {"at": now_iso(), "event": kind, "message": message}
        record = {**own, **data, **own}  # in this order, and never replaced by data
        with self.r.pipeline() as pipe:
            pipe.lpush(key, json.dumps(record))
            pipe.ltrim(key, 0, EVENTS_KEPT - 1)
            for sink in self.event_sinks:
                sink(pipe, pid, record)
            pipe.execute()

    def events(self, pid: str, limit: int = 50) -> list[dict]:
        return [json.loads(e) for e in self.r.lrange(keys.events(pid), 0, limit - 1)]

    # -- API keys --------------------------------------------------------------

    def add_api_key(self, tenant: str, key: str) -> None:
        self.r.hset(keys.API_KEYS, _digest(key), tenant)

    def tenant_for_key(self, key: str, configured: dict[str, str]) -> str | None:
        """The tenant of a key, created (stored hashed) or ``configured`` (WARMPOOL_API_KEYS); None once revoked."""
        digest = _digest(key)
        with self.r.pipeline(transaction=False) as pipe:
            pipe.hget(keys.API_KEYS, digest)
            pipe.sismember(keys.REVOKED_KEYS, digest)
            stored, revoked = pipe.execute()
        return None if revoked else configured.get(key) or stored

    def api_keys(self, configured: dict[str, str]) -> list[dict]:
        """Every key that works, by id (the start of its hash: the key itself is never stored)."""
        revoked = self.r.smembers(keys.REVOKED_KEYS)
        created = cast(dict[str, str], self.r.hgetall(keys.API_KEYS))
        found = [{"id": key_id(digest), "tenant": tenant, "source": "created"} for digest, tenant in created.items()]
        found += [{"id": key_id(_digest(key)), "tenant": tenant, "source": "WARMPOOL_API_KEYS"}
                  for key, tenant in configured.items() if _digest(key) not in revoked]
        return sorted(found, key=lambda k: (k["tenant"], k["id"]))

    def revoke_api_key(self, id_or_key: str, configured: dict[str, str]) -> dict | None:
        """Revoke the one key whose id (or which) this is: it gets 401 from the next request. None if no key or
        several match (ask with a longer id)."""
        if len(id_or_key) < MIN_KEY_ID:
            return None
        given = _digest(id_or_key)
        stored = cast(dict[str, str], self.r.hgetall(keys.API_KEYS))
        digests = {**stored, **{_digest(key): tenant for key, tenant in configured.items()}}
        matches = [d for d in digests if d == given or d.startswith(id_or_key.lower())]
        if len(matches) != 1:
            return None
        digest, = matches
        with self.r.pipeline() as pipe:
            pipe.sadd(keys.REVOKED_KEYS, digest)
            pipe.hdel(keys.API_KEYS, digest)
            pipe.execute()
        return {"id": key_id(digest), "tenant": digests[digest]}


_CLAIM_MACHINE = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 1 end
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('SADD', KEYS[1], ARGV[1])
return 1
"""

KEY_ID_LENGTH, MIN_KEY_ID = 12, 6  # ids as listed; the shortest start of one that revoke-key takes


def key_id(digest: str) -> str:
    return digest[:KEY_ID_LENGTH]


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()
