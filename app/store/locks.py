"""Machine locks with fencing epochs (rules 1, 2 and 12 in docs/architecture.md).

One operation per machine at a time: a redis-py ``Lock`` per machine, and with
every acquisition a new fencing epoch. Every write of pool state, and every
mutating provider call, is made only while its caller still holds the current
epoch. A held lock is kept alive by a heartbeat for as long as its step works.

Epochs never go back, even when Redis loses its data: each new epoch is at
least the Redis server's clock in microseconds, so it is higher than any epoch
an old worker could still hold (rule 13).
"""

import contextlib
import threading
import uuid
from dataclasses import dataclass

import redis
from redis.lock import Lock

from app.store import keys


class FencedOut(Exception):
    """The lock was lost: a newer holder owns the machine now."""


class Busy(Exception):
    """Another operation holds the machine's lock."""


@dataclass
class Held:
    """A machine lock that an operation holds: the redis-py token and the fencing epoch."""
    token: str
    epoch: int


class Lease:
    """A lock this process took. Unless handed off to an operation's steps, it is released on exit."""

    def __init__(self, store: "LockRecords", pid: str, held: Held, ttl: float):
        self.store, self.pid, self.held, self.ttl = store, pid, held, ttl
        self.handed_off = False

    def hand_off(self) -> Held:
        """The operation's steps hold the lock from now on; they release it when the operation ends."""
        self.handed_off = True
        return self.held


class Heartbeat:
    """Renews a held lock every third of its TTL while a step works; notes when it was lost."""

    def __init__(self, store: "LockRecords", pid: str, held: Held, ttl: float):
        self.store, self.pid, self.held, self.ttl = store, pid, held, ttl
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name=f"heartbeat {pid}")

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self.store.extend(self.pid, self.held, self.ttl)
            except FencedOut:
                self.lost = True
                return
            except redis.RedisError:
                pass  # Redis restarting: try again at the next beat, the TTL still covers us

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class LockRecords:
    """The locks' repository (mixed into ``Store``): one lock and one fencing epoch per machine.

    Keys: ``keys.lock(pid)``, a redis-py ``Lock`` (its holder's token, with a TTL); ``keys.epoch(pid)``, the
    fencing epoch of the latest acquisition, which every pool write compares (``PoolRecords.save_pool``).

    Compare-and-set (redis-py's Lock scripts, or our Lua scripts: each compares and writes in one step):

        * ``acquire`` (and ``lease``, ``lease_if_free``): creates the lock only if there is none (SET NX), then
          moves the epoch past both the last one and Redis's clock (``_NEXT_EPOCH``, never compared: it only
          goes up). Behind Sentinel, waits (bounded) until a replica has both.
        * ``extend`` (the heartbeat's): renews the lock if its token is ``held.token``, or takes it back with that
          token if it is free (SET NX); then compares the epoch with ``held.epoch``. FencedOut on either.
        * ``renew_if_held``: renews the lock if its token is ``held.token``; True only if the epoch is
          ``held.epoch`` too. Never takes a lock back.
        * ``take_over``: if the lock is free or ``held.token``'s and the epoch is ``held.epoch``, a new token
          and a higher epoch (``_TAKE_OVER``); FencedOut otherwise.
        * ``release``: deletes the lock only if its token is ``held.token``.

    Plain reads: ``check_fence`` (compares token and epoch, writes nothing: FencedOut when either moved),
    ``is_locked``, ``epoch``.
    """

    r: redis.Redis
    # replicas that must have a new lock and epoch before its holder goes on: 1 behind Sentinel (app/store)
    replicas_to_wait: int = 0

    def _replicated(self, script, script_keys: list[str], args: list | None = None):
        """Run a script that takes a lock's epoch; behind Sentinel, then wait (bounded) until a replica has it.

        Replication is asynchronous: a lock and epoch only the dead master had would be free again on the
        promoted replica while their holder still works, with nothing but the epoch check to stop it. WAIT
        waits for this connection's last write, so the script and the WAIT share one connection (a pipeline); the
        lock's SET came earlier in the master's replication stream, so it is covered too. With no replica in time
        the holder goes on: a master alone has no replica to fail over to."""
        if not self.replicas_to_wait:
            return script(keys=script_keys, args=args)
        with self.r.pipeline(transaction=False) as pipe:
            script(keys=script_keys, args=args, client=pipe)
            pipe.wait(self.replicas_to_wait, REPLICA_WAIT_MS)
            result, _replicas = pipe.execute()
        return result

    def _register_lock_scripts(self) -> None:
        self._new_epoch = self.r.register_script(_NEXT_EPOCH)
        self._take_over = self.r.register_script(_TAKE_OVER)

    def _lock(self, pid: str, ttl: float, token: str | None = None) -> Lock:
        lock = Lock(self.r, keys.lock(pid), timeout=ttl, thread_local=False)
        if token:
            lock.local.token = token.encode() if isinstance(token, str) else token
        return lock

    def acquire(self, pid: str, ttl: float, wait: float | None = None) -> Held | None:
        """Take the machine's lock (waiting up to ``wait`` seconds) and a new fencing epoch."""
        lock = self._lock(pid, ttl)
        if not lock.acquire(blocking=wait is not None, blocking_timeout=wait):
            return None
        token = lock.local.token
        token = token.decode() if isinstance(token, bytes) else token
        return Held(token=token, epoch=int(self._replicated(self._new_epoch, [keys.epoch(pid)])))

    @contextlib.contextmanager
    def lease(self, pid: str, ttl: float):
        """``with store.lease(pid, ttl) as lease:`` holds the machine's lock or raises Busy."""
        with self.lease_if_free(pid, ttl) as lease:
            if lease is None:
                raise Busy(pid)
            yield lease

    @contextlib.contextmanager
    def lease_if_free(self, pid: str, ttl: float):
        """The machine's lock for the block, or None when another operation holds it. Released on exit, unless
        handed off to an operation's steps."""
        held = self.acquire(pid, ttl)
        if held is None:
            yield None
            return
        lease = Lease(self, pid, held, ttl)
        try:
            yield lease
        finally:
            if not lease.handed_off:
                self.release(pid, held, ttl)

    def heartbeat(self, pid: str, held: Held, ttl: float) -> Heartbeat:
        return Heartbeat(self, pid, held, ttl)

    def extend(self, pid: str, held: Held, ttl: float) -> None:
        """Renew a held lock; raise FencedOut if a newer holder took it meanwhile.

        A lock that merely expired (its worker was killed and the step redelivered)
        is taken back with the same token, if no one held it since: the epoch says so.
        """
        lock = self._lock(pid, ttl, held.token)
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

    def renew_if_held(self, pid: str, held: Held, ttl: float) -> bool:
        """Renew a lock that ``held`` still holds, under its epoch; False (nothing renewed) when it expired, was
        released or was taken since: unlike ``extend``, a lock no longer held is never taken back."""
        try:
            self._lock(pid, ttl, held.token).reacquire()
        except redis.exceptions.LockError:
            return False
        return self.epoch(pid) == held.epoch

    def check_fence(self, pid: str, held: Held) -> None:
        """Raise FencedOut unless ``held`` is still the lock's holder and its epoch the current one."""
        token, epoch = self.r.mget(keys.lock(pid), keys.epoch(pid))
        if token != held.token or int(epoch or 0) != held.epoch:
            raise FencedOut(pid)

    def take_over(self, pid: str, held: Held, ttl: float) -> Held:
        """For a redelivered step: hold the lock under a new token and epoch, so that the first
        delivery, if its worker was only frozen, is fenced out when it wakes."""
        token = uuid.uuid4().hex
        epoch = self._replicated(self._take_over, [keys.lock(pid), keys.epoch(pid)],
                                 [held.token, token, held.epoch, int(ttl * 1000)])
        if not epoch:
            raise FencedOut(pid)
        return Held(token=token, epoch=int(epoch))

    def release(self, pid: str, held: Held, ttl: float) -> None:
        try:
            self._lock(pid, ttl, held.token).release()
        except redis.exceptions.LockError:
            pass  # expired already: nothing of ours to release

    def is_locked(self, pid: str) -> bool:
        return bool(self.r.exists(keys.lock(pid)))

    def epoch(self, pid: str) -> int:
        return int(self.r.get(keys.epoch(pid)) or 0)


# how long taking a lock waits for a replica to have it (Sentinel only)
REPLICA_WAIT_MS = 500

# the next epoch: above the last one, and above the server clock in microseconds, so that it is higher
# than any epoch handed out before, even if the counter was lost
_NEXT_EPOCH = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local epoch = math.max(tonumber(redis.call('GET', KEYS[1]) or '0') + 1, now)
redis.call('SET', KEYS[1], string.format('%d', epoch))
return string.format('%d', epoch)
"""

# the lock under a new token and epoch, if it is still ours (or free) and no one held it since
_TAKE_OVER = """
local holder = redis.call('GET', KEYS[1])
if (holder and holder ~= ARGV[1]) or redis.call('GET', KEYS[2]) ~= ARGV[3] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local epoch = math.max(tonumber(ARGV[3]) + 1, now)
redis.call('SET', KEYS[2], string.format('%d', epoch))
return string.format('%d', epoch)
"""
