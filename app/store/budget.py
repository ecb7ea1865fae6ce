"""Shared budgets: the provider's rate limits and the cap on automatic failovers (rules 6 and 9)."""

import uuid

import redis

from app.settings import DEFAULT_ACCOUNT
from app.store import keys


class BudgetRecords:
    """The budgets' repository (mixed into ``Store``): the provider's rate limits and the failover cap.

    Keys: ``rate(endpoint, account)`` (the endpoint's next free call slot, epoch seconds), ``ranked_claims`` and
    ``ranked_expiry`` (calls waiting their turn, by rank and by when their claim lapses), ``FAILOVERS`` (the
    automatic failovers of the last 60 s), ``cap_notice(pid)``.

    Compare-and-set (Lua scripts on Redis's clock, each one atomic):

        * ``reserve_slot``: takes the next slot, unless it is further than ``horizon`` away.
        * ``take_ranked_slot``: takes the next slot only for the best-ranked claim waiting, and only if it is at
          most an interval away; the others' claims are kept with their estimated wait.
        * ``take_failover_slot``: counts a failover only while fewer than ``per_minute`` are in the window.
        * ``first_cap_notice``: compare-and-create (SET NX, a minute).
    """

    r: redis.Redis

    def _register_budget_scripts(self) -> None:
        self._reserve = self.r.register_script(_RESERVE_SLOT)
        self._failover_slot = self.r.register_script(_FAILOVER_SLOT)
        self._ranked_slot = self.r.register_script(_RANKED_SLOT)

    def reserve_slot(self, endpoint: str, interval: float, horizon: float = -1,
                     account: str = DEFAULT_ACCOUNT) -> float:
        """Reserve the next call slot of an account's endpoint; return how long to wait for it.

        With a ``horizon``, a slot further ahead than that is not reserved: the answer is
        then negative, minus the time until the next free slot.
        """
        return float(self._reserve(keys=[keys.rate(endpoint, account)], args=[interval, horizon]))

    def take_ranked_slot(self, endpoint: str, interval: float, rank: float, claim: str, hold: float,
                         account: str = DEFAULT_ACCOUNT) -> float:
        """Reserve the next call slot of an account's endpoint, if it is at most an interval away, for the best-ranked claim
        waiting (lowest ``rank``, then lowest ``claim``); return how long to wait for it. A claim that is not first is kept for ``hold`` s past
        its estimated turn (its caller may give its thread back and come again) and the answer is negative:
        minus that estimated wait. Hand-written because a rate limiter with priorities is not in redis-py or
        Celery: Celery's queues order tasks, not the provider calls inside them."""
        return float(self._ranked_slot(keys=[keys.rate(endpoint, account), keys.ranked_claims(endpoint, account),
                                             keys.ranked_expiry(endpoint, account)],
                                       args=[interval, rank, claim, hold]))

    def take_failover_slot(self, per_minute: int, account: str = DEFAULT_ACCOUNT) -> bool:
        """Count a confirmed failure against the cap of its Vast account's pools, over the last 60 s (rules 9, 17)."""
        return bool(self._failover_slot(keys=[keys.failovers(account)], args=[per_minute, uuid.uuid4().hex]))

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

# the first-ranked live claim takes the next slot when it is at most one interval away; the others learn their
# estimated wait (negative), so a better claim that comes later still goes before them
_RANKED_SLOT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local interval, rank, claim, hold = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
for _, lapsed in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)) do redis.call('ZREM', KEYS[2], lapsed) end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
redis.call('ZADD', KEYS[2], rank, claim)
local ahead = redis.call('ZRANK', KEYS[2], claim)
local slot = math.max(now, tonumber(redis.call('GET', KEYS[1]) or '0'))
if ahead > 0 or slot - now > interval then
  local wait = slot - now + ahead * interval
  redis.call('ZADD', KEYS[3], now + wait + hold, claim)
  redis.call('EXPIRE', KEYS[2], math.ceil(wait + hold) + 60)
  redis.call('EXPIRE', KEYS[3], math.ceil(wait + hold) + 60)
  return string.format('%.6f', -wait)
end
redis.call('ZREM', KEYS[2], claim)
redis.call('ZREM', KEYS[3], claim)
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
