"""The state store: every pool, operation, event and lock lives in Redis.

Pool records are JSON documents. Only the holder of a machine's lock writes its
pool, and every write is fenced: it carries the epoch taken when the lock was
acquired and is refused once a newer holder has taken the lock (design rule 2).
"""

import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

import redis
from redis.lock import Lock

EVENTS_KEPT = 200
OP_TTL = 7 * 24 * 3600

# pool states, the seed's six
DISABLED, SEARCHING, PROVISIONING, ACTIVE, FAILOVER, DEGRADED = (
    "disabled", "searching", "provisioning", "active", "failover", "degraded")
STATES = (DISABLED, SEARCHING, PROVISIONING, ACTIVE, FAILOVER, DEGRADED)


class FencedOut(Exception):
    """The writer's lock was lost: a newer holder owns the machine now."""


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def pool_id(tenant: str, machine_id: int) -> str:
    return f"{tenant}:{machine_id}"


def split_pool_id(pid: str) -> tuple[str, int]:
    tenant, _, machine = pid.rpartition(":")
    return tenant, int(machine)


def label(tenant: str, machine_id: int, role: str) -> str:
    """Provider label of a pool's instance (role primary/standby) or volume (role volume)."""
    return f"warmpool-{tenant}-{machine_id}-{role}"


def new_pool(tenant: str, machine_id: int, **fields) -> dict:
    pool = {
        "tenant": tenant, "machine_id": machine_id, "state": PROVISIONING, "enabled": True,
        "host_machine_id": None, "volume_id": None, "primary_gpu_id": None, "standby_gpu_id": None,
        "standby_state": "none", "primary_ssh_host": None, "primary_ssh_port": None,
        "failover_count": 0, "last_failover_at": None, "last_failover": None,
        "error_message": None, "fallback": None, "gpu_name": None, "max_price": None,
        "image": None, "disk_size": 50, "volume_size": 100,
        "op_id": None, "seq": 0, "creating": None, "retire_gpu_id": None, "heal_attempts": 0, "next_heal_at": 0.0, "created_at": now_iso(), "updated_at": now_iso(),
    }
    pool.update(fields)
    return pool


def is_watched(pool: dict) -> bool:
    """Whether the health sweep watches this pool's primary."""
    return pool["enabled"] and pool["state"] in (ACTIVE, DEGRADED) and pool["primary_gpu_id"] is not None


@dataclass
class Held:
    """A machine lock that an operation holds: the redis-py token and the fencing epoch."""
    token: str
    epoch: int


class Store:
    def __init__(self, client: redis.Redis):
        self.r = client
        # what else an event feeds, in the same Redis transaction: functions (pipeline, pid, record)
        self.event_sinks: list = []
        self._reserve = self.r.register_script(_RESERVE_SLOT)
        self._take_over = self.r.register_script(_TAKE_OVER)
        self._failover_slot = self.r.register_script(_FAILOVER_SLOT)

    @classmethod
    def from_url(cls, url: str) -> "Store":
        return cls(redis.Redis.from_url(url, decode_responses=True, health_check_interval=10,
                                        socket_timeout=10, socket_connect_timeout=5, retry_on_timeout=True))

    # -- locks and fencing -------------------------------------------------

    def lock(self, pid: str, ttl: float, token: str | None = None) -> Lock:
        lock = Lock(self.r, f"wp:lock:{pid}", timeout=ttl, thread_local=False)
        if token:
            lock.local.token = token.encode() if isinstance(token, str) else token
        return lock

    def acquire(self, pid: str, ttl: float, wait: float | None = None) -> Held | None:
        """Take the machine's lock (waiting up to ``wait`` seconds) and a new fencing epoch."""
        lock = self.lock(pid, ttl)
        if not lock.acquire(blocking=wait is not None, blocking_timeout=wait):
            return None
        token = lock.local.token
        token = token.decode() if isinstance(token, bytes) else token
        return Held(token=token, epoch=self.r.incr(f"wp:epoch:{pid}"))

    def extend(self, pid: str, held: Held, ttl: float) -> None:
        """Renew a held lock; raise FencedOut if a newer holder took it meanwhile.

        A lock that merely expired (its worker was killed and the step redelivered)
        is taken back with the same token, if no one held it since: the epoch says so.
        """
        lock = self.lock(pid, ttl, held.token)
        try:
            lock.reacquire()
        except redis.exceptions.LockError:
            if not lock.acquire(blocking=False, token=held.token):
                raise FencedOut(pid) from None
            if self.epoch(pid) != held.epoch:
                lock.release()  # it was free, but someone held it in between
                raise FencedOut(pid) from None
        if self.epoch(pid) != held.epoch:
            raise FencedOut(pid)

    def take_over(self, pid: str, held: Held, ttl: float) -> Held:
        """For a redelivered step: hold the lock under a new token and epoch, so that the first
        delivery, if its worker was only frozen, is fenced out when it wakes."""
        token = uuid.uuid4().hex
        epoch = self._take_over(keys=[f"wp:lock:{pid}", f"wp:epoch:{pid}"],
                                args=[held.token, token, held.epoch, int(ttl * 1000)])
        if not epoch:
            raise FencedOut(pid)
        return Held(token=token, epoch=int(epoch))

    def release(self, pid: str, held: Held, ttl: float) -> None:
        try:
            self.lock(pid, ttl, held.token).release()
        except redis.exceptions.LockError:
            pass  # expired already: nothing of ours to release

    def is_locked(self, pid: str) -> bool:
        return bool(self.r.exists(f"wp:lock:{pid}"))

    def epoch(self, pid: str) -> int:
        return int(self.r.get(f"wp:epoch:{pid}") or 0)

    # -- pools -------------------------------------------------------------

    def get_pool(self, pid: str) -> dict | None:
        raw = self.r.get(f"wp:pool:{pid}")
        return json.loads(raw) if raw else None

    def get_pool_and_last_sweep(self, pid: str) -> tuple[dict | None, str | None]:
        """A pool and when the health sweep last ran, in one round trip (the status read)."""
        raw, last_sweep = self.r.mget(f"wp:pool:{pid}", "wp:sweep:last")
        return (json.loads(raw) if raw else None), last_sweep

    def last_sweep(self) -> str | None:
        return self.r.get("wp:sweep:last")

    def get_pools(self, pids: list[str]) -> list[dict]:
        if not pids:
            return []
        return [json.loads(raw) for raw in self.r.mget([f"wp:pool:{p}" for p in pids]) if raw]

    def tenant_pools(self, tenant: str) -> list[dict]:
        machines = sorted(int(m) for m in self.r.smembers(f"wp:tenant:{tenant}:pools"))
        return self.get_pools([pool_id(tenant, m) for m in machines])

    def all_pool_ids(self) -> list[str]:
        return sorted(self.r.smembers("wp:pools"))

    def watched_pool_ids(self) -> list[str]:
        return sorted(self.r.smembers("wp:watched"))

    def unsettled_pool_ids(self) -> list[str]:
        """Enabled pools that are degraded or in the middle of an operation."""
        return sorted(self.r.smembers("wp:unsettled"))

    def primaries(self, instance_ids: list[int]) -> dict[int, str]:
        """Map primary instance ids of watched pools to their pool ids."""
        if not instance_ids:
            return {}
        found = self.r.hmget("wp:primaries", [str(i) for i in instance_ids])
        return {i: pid for i, pid in zip(instance_ids, found) if pid}

    def save_pool(self, pool: dict, held: Held, expect_seq: int | None = None) -> None:
        """Write a pool record if ``held`` is still the newest lock holder (fencing) and, given
        ``expect_seq``, if the record is still at that step (a duplicate delivery of a step is not)."""
        pid = pool_id(pool["tenant"], pool["machine_id"])
        pool["updated_at"] = now_iso()
        key, epoch_key = f"wp:pool:{pid}", f"wp:epoch:{pid}"

        def write(pipe: redis.client.Pipeline) -> None:
            if int(pipe.get(epoch_key) or 0) != held.epoch:
                raise FencedOut(pid)
            old = json.loads(pipe.get(key) or "null")
            if expect_seq is not None and (old or {}).get("seq", 0) != expect_seq:
                raise FencedOut(pid)
            old_primary = old["primary_gpu_id"] if old else None
            pipe.multi()
            if (old or {}).get("state") != pool["state"]:  # pools by state, kept at write time
                if old:
                    pipe.hincrby("wp:pools:by_state", old["state"], -1)
                pipe.hincrby("wp:pools:by_state", pool["state"], 1)
            pipe.set(key, json.dumps(pool))
            pipe.sadd("wp:pools", pid)
            pipe.sadd(f"wp:tenant:{pool['tenant']}:pools", pool["machine_id"])
            if old_primary is not None:
                pipe.hdel("wp:primaries", str(old_primary))
            if is_watched(pool):
                pipe.sadd("wp:watched", pid)
                pipe.hset("wp:primaries", str(pool["primary_gpu_id"]), pid)
            else:
                pipe.srem("wp:watched", pid)
            # the healer visits only pools that are not settled
            if pool["enabled"] and pool["state"] not in (ACTIVE, DISABLED):
                pipe.sadd("wp:unsettled", pid)
            else:
                pipe.srem("wp:unsettled", pid)

        self.r.transaction(write, epoch_key)

    def pool_counts(self) -> dict[str, int]:
        """How many pools are in each state (kept by every write, so reading it costs one call)."""
        counts = {k: int(v) for k, v in self.r.hgetall("wp:pools:by_state").items()}
        return {state: counts.get(state, 0) for state in STATES}

    def take_failover_slot(self, per_minute: int) -> bool:
        """Count an automatic failover against the cap across all pools, over the last 60 s (rule 9)."""
        return bool(self._failover_slot(keys=["wp:failovers"], args=[per_minute, uuid.uuid4().hex]))

    # -- operations (the task resource) --------------------------------------

    def new_op(self, tenant: str, machine_id: int, operation: str) -> str:
        op_id = uuid.uuid4().hex
        self.r.set(f"wp:op:{op_id}", json.dumps({
            "task_id": op_id, "tenant": tenant, "machine_id": machine_id, "operation": operation,
            "state": "PENDING", "step": "queued", "result": None, "error": None,
            "created_at": now_iso(), "updated_at": now_iso()}), ex=OP_TTL)
        return op_id

    def get_op(self, op_id: str) -> dict | None:
        raw = self.r.get(f"wp:op:{op_id}")
        return json.loads(raw) if raw else None

    def update_op(self, op_id: str, **fields) -> None:
        op = self.get_op(op_id)
        if op is None:
            return
        if op["state"] in ("SUCCESS", "FAILURE"):
            # an ended operation keeps its outcome; only the step of its follow-up work still shows
            # (a failover's standby replacement)
            fields = {"step": fields["step"]} if "step" in fields else {}
            if not fields:
                return
        op.update(fields, updated_at=now_iso())
        self.r.set(f"wp:op:{op_id}", json.dumps(op), ex=OP_TTL)
        if fields.get("state") in ("SUCCESS", "FAILURE"):
            self.r.publish(f"wp:op-done:{op_id}", op["state"])

    def wait_op(self, op_id: str, timeout: float) -> dict | None:
        """Block until the operation ends or ``timeout`` passes; return the record."""
        deadline = time.monotonic() + timeout
        pubsub = self.r.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(f"wp:op-done:{op_id}")
        try:
            while True:
                op = self.get_op(op_id)  # read after subscribing, so no end is missed
                left = deadline - time.monotonic()
                if op is None or op["state"] in ("SUCCESS", "FAILURE") or left <= 0:
                    return op
                pubsub.get_message(timeout=min(left, 1.0))
        finally:
            pubsub.close()

    # -- events --------------------------------------------------------------

    def event(self, pid: str, kind: str, message: str, **data) -> None:
        """Record what happened to a pool; the event sinks (webhooks, metrics) see it in the same transaction."""
        key = f"wp:events:{pid}"
        record = {"at": now_iso(), "event": kind, "message": message, **data}
        with self.r.pipeline() as pipe:
            pipe.lpush(key, json.dumps(record))
            pipe.ltrim(key, 0, EVENTS_KEPT - 1)
            for sink in self.event_sinks:
                sink(pipe, pid, record)
            pipe.execute()

    def events(self, pid: str, limit: int = 50) -> list[dict]:
        return [json.loads(e) for e in self.r.lrange(f"wp:events:{pid}", 0, limit - 1)]

    # -- API keys --------------------------------------------------------------

    def add_api_key(self, tenant: str, key: str) -> None:
        self.r.hset("wp:apikeys", _digest(key), tenant)

    def tenant_for_key(self, key: str) -> str | None:
        return self.r.hget("wp:apikeys", _digest(key))

    # -- the shared provider rate budget ----------------------------------------

    def reserve_slot(self, endpoint: str, interval: float, horizon: float = -1) -> float:
        """Reserve the next call slot of an endpoint; return how long to wait for it.

        With a ``horizon``, a slot further ahead than that is not reserved: the answer is
        then negative, minus the time until the next free slot.
        """
        return float(self._reserve(keys=[f"wp:rate:{endpoint}"], args=[interval, horizon]))


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


# one clock for every worker: Redis's own TIME
_RESERVE_SLOT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local interval, horizon = tonumber(ARGV[1]), tonumber(ARGV[2])
local slot = math.max(now, tonumber(redis.call('GET', KEYS[1]) or '0'))
if horizon >= 0 and slot - now > horizon then return string.format('%.6f', now - slot) end
redis.call('SET', KEYS[1], string.format('%.6f', slot + interval), 'PX', math.ceil((slot + interval - now) * 1000) + 1000)
return string.format('%.6f', slot - now)
"""

# the lock under a new token and epoch, if it is still ours (or free) and no one held it since
_TAKE_OVER = """
local holder = redis.call('GET', KEYS[1])
if (holder and holder ~= ARGV[1]) or redis.call('GET', KEYS[2]) ~= ARGV[3] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[4])
return redis.call('INCR', KEYS[2])
"""

# a sliding 60 s window of failover starts; a slot is taken only under the cap
_FAILOVER_SLOT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('EXPIRE', KEYS[1], 120)
return 1
"""
