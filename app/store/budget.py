"""Shared budgets: the provider's rate limits and the cap on automatic failovers (rules 6 and 9)."""

import uuid

import redis

from app.store import keys


class BudgetRecords:
    """The budgets' half of the store (mixed into ``Store``)."""

    r: redis.Redis

    def _register_budget_scripts(self) -> None:
        self._reserve = self.r.register_script(_RESERVE_SLOT)
        self._failover_slot = self.r.register_script(_FAILOVER_SLOT)

    def reserve_slot(self, endpoint: str, interval: float, horizon: float = -1) -> float:
        """Reserve the next call slot of an endpoint; return how long to wait for it.

        With a ``horizon``, a slot further ahead than that is not reserved: the answer is
        then negative, minus the time until the next free slot.
        """
        return float(self._reserve(keys=[keys.rate(endpoint)], args=[interval, horizon]))

    def take_failover_slot(self, per_minute: int) -> bool:
        """Count a confirmed failure against the cap across all pools, over the last 60 s (rule 9)."""
        return bool(self._failover_slot(keys=[keys.FAILOVERS], args=[per_minute, uuid.uuid4().hex]))

    def first_cap_notice(self, pid: str) -> bool:
        """Whether this pool's failover past the cap is its first in a minute (said once a minute, not every sweep)."""
        return bool(self.r.set(keys.cap_notice(pid), 1, nx=True, ex=60))


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
