"""What the API lets in: notifications seen before, checks per pool, and the requests held by ``?wait``."""

import contextlib
import uuid

import redis

from app.store import keys


class IngressRecords:
    """The ingress repository (mixed into ``Store``): what the API lets in.

    Keys: ``notification_seen(digest)`` and ``notification_check(pid, role)`` (markers with a TTL);
    ``WAIT_HOLDERS`` and ``wait_holders(tenant)`` (the ``?wait`` requests holding a slot, by deadline).

    Compare-and-create: ``first_notification`` and ``notification_check_due`` (SET NX with a TTL). Compare-and-
    set: ``wait_slot`` takes a slot only under both caps (one Lua script), and gives it back unconditionally.
    Plain read: ``wait_holders``.
    """

    r: redis.Redis

    def _register_ingress_scripts(self) -> None:
        self._take_wait = self.r.register_script(_TAKE_WAIT)

    def first_notification(self, digest: str, window: float) -> bool:
        """Whether a notification's body (its sha256) is new within ``window`` s; a replay or a redelivery is not."""
        return bool(self.r.set(keys.notification_seen(digest), 1, nx=True, px=max(1, int(window * 1000))))

    def notification_check_due(self, pid: str, role: str, interval: float) -> bool:
        """Whether a notification may trigger a check of this pool's ``role`` instance (its primary's failover
        check, its standby's recheck): at most one of each per ``interval`` s, so notifications about the standby
        never hold back a check of the primary."""
        return bool(self.r.set(keys.notification_check(pid, role), 1, nx=True, px=max(1, int(interval * 1000))))

    @contextlib.contextmanager
    def wait_slot(self, tenant: str, seconds: float, overall: int, per_tenant: int):
        """Hold one of the ``?wait`` slots for up to ``seconds``: yields False (nothing held) past either cap.

        A slot is an entry that expires by itself at its deadline (plus a margin), so a web worker killed while
        waiting frees its slot anyway; a counter alone would leak it.
        """
        token = uuid.uuid4().hex
        held_keys = [keys.WAIT_HOLDERS, keys.wait_holders(tenant)]
        taken = bool(self._take_wait(keys=held_keys, args=[overall, per_tenant, seconds + 5, token]))
        try:
            yield taken
        finally:
            if taken:
                with self.r.pipeline() as pipe:
                    for key in held_keys:
                        pipe.zrem(key, token)
                    pipe.execute()

    def wait_holders(self, tenant: str | None = None) -> int:
        """How many ``?wait`` requests hold a slot now (of one tenant, or overall)."""
        return self.r.zcard(keys.wait_holders(tenant) if tenant else keys.WAIT_HOLDERS)


# both sorted sets hold token -> deadline; the expired go first, then a slot only under both caps
_TAKE_WAIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
for i, key in ipairs(KEYS) do redis.call('ZREMRANGEBYSCORE', key, '-inf', now) end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) or redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[2]) then
  return 0
end
local deadline = now + tonumber(ARGV[3])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, deadline, ARGV[4])
  redis.call('EXPIRE', key, math.ceil(tonumber(ARGV[3])) + 1)
end
return 1
"""
