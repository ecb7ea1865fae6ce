"""One shared poll round for every instance that steps wait on, and a short cache of the hosts search."""

import contextlib
import json
import time
from collections.abc import Callable
from typing import cast

import redis
from redis.exceptions import LockError

from app.settings import DEFAULT_ACCOUNT
from app.store import keys

UNSEEN = object()
# an instance no step has asked about for this long (or three of its waiter's intervals) leaves the rounds: waiting
# steps ask again every interval, and each instance that is no longer waited on costs every round list rows
# (pages of 25, one list call a second), which in a mass failure slowed every round several times over
AWAITED_FOR = 10.0


class PollRecords:
    """The polls' repository (mixed into ``Store``): one shared poll round per Vast account, and the hosts cache.

    Keys: ``awaited(account)`` (instances that steps wait on, until when), ``awaited_round(account)`` (when the
    last round started), ``awaited_poller(account)`` (a lock: one poller per round), ``seen(instance_id)`` (the
    row the last round saw, with that round's start), ``offers_cache(query)``.

    ``observe`` is the one method that compares: it keeps the later of two waits on an instance (ZADD GT), and
    runs a round only if the last one is an interval old and it took the poller's lock (SET NX); the round's
    rows are then written unconditionally. ``cache_offers`` is an unconditional write (with a TTL),
    ``cached_offers`` a plain read.
    """

    r: redis.Redis

    def observe(self, instance_id: int, interval: float, fetch: Callable[[list[int]], dict[int, dict]],
                since: float = 0.0, account: str = DEFAULT_ACCOUNT):
        """An instance as the provider showed it in the last poll round (None: gone; UNSEEN: not yet, or only
        in rounds that started before ``since``).

        Every instance that a step waits on is read in one paged list call per round (``fetch``), by
        whichever step finds the round due, not in a call per instance: under Vast's rate limits,
        hundreds of waiting provisions would otherwise starve every other call. Each Vast ``account`` has rounds
        of its own (an account lists only its own instances).
        """
        now = time.time()
        self.r.zadd(keys.awaited(account), {str(instance_id): now + max(AWAITED_FOR, 3 * interval)}, gt=True)
        # a round takes a few list calls; a poller that died mid-round holds it for 10 s at most
        poller = self.r.lock(keys.awaited_poller(account), timeout=10)
        if float(self.r.get(keys.awaited_round(account)) or 0) <= now - interval and poller.acquire(blocking=False):
            try:
                self.r.zremrangebyscore(keys.awaited(account), "-inf", now)  # no longer waited on
                ids = [int(i) for i in cast(list[str], self.r.zrange(keys.awaited(account), 0, -1))]
                rows = fetch(ids)
                with self.r.pipeline(transaction=False) as pipe:
                    for i in ids:
                        pipe.set(keys.seen(i), json.dumps({"round": now, "row": rows.get(i)}), ex=60)
                    pipe.set(keys.awaited_round(account), now)
                    pipe.execute()
            finally:
                with contextlib.suppress(LockError):
                    poller.release()
        raw = self.r.get(keys.seen(instance_id))
        seen = json.loads(raw) if raw else None
        return UNSEEN if seen is None or seen["round"] < since else seen["row"]

    def cached_offers(self, query: dict) -> list[dict] | None:
        raw = self.r.get(keys.offers_cache(json.dumps(query, sort_keys=True)))
        return json.loads(raw) if raw is not None else None

    def cache_offers(self, query: dict, offers: list[dict], seconds: float) -> None:
        if seconds > 0:
            self.r.set(keys.offers_cache(json.dumps(query, sort_keys=True)), json.dumps(offers),
                       px=int(seconds * 1000))
