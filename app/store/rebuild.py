"""What rebuilding lost state needs from Redis: which pools have no record, and whether Redis keeps data.

Redis is a cache of the provider (rule 13 in docs/architecture.md): records it lost are rebuilt
from labelled instances (``tasks/rebuild.py``). These methods tell which records are missing, and
warn when the server is set up to lose data (an eviction policy, no persistence).
"""

import redis

from app.store import keys


class RebuildRecords:
    """The rebuild's repository (mixed into ``Store``): which pool records Redis lost, and whether it may lose more.

    Keys: reads ``keys.pool(pid)``; writes ``rebuild_tried(pid)``.

    Compare-and-create: ``first_rebuild_tries`` (SET NX per pool, for ``every`` seconds). Plain reads:
    ``missing_pools``, ``redis_warnings`` (CONFIG GET).
    """

    r: redis.Redis

    def missing_pools(self, pids: list[str]) -> list[str]:
        """The pool ids of ``pids`` that have no record (one round trip of EXISTS; a record evicted alone
        counts as missing, even if the sets still name it)."""
        if not pids:
            return []
        with self.r.pipeline(transaction=False) as pipe:
            for pid in pids:
                pipe.exists(keys.pool(pid))
            found = pipe.execute()
        return [pid for pid, exists in zip(pids, found) if not exists]

    def first_rebuild_tries(self, pids: list[str], every: float) -> list[str]:
        """Of ``pids``, those whose rebuild was not tried in the last ``every`` seconds; they count as tried
        now. Labelled instances that form no pool are asked about once per ``every``, not at every sweep."""
        if not pids:
            return []
        with self.r.pipeline(transaction=False) as pipe:
            for pid in pids:
                pipe.set(keys.rebuild_tried(pid), 1, nx=True, px=max(1, int(every * 1000)))
            fresh = pipe.execute()
        return [pid for pid, first in zip(pids, fresh) if first]

    def redis_warnings(self, expect_persistence: bool = True) -> list[str]:
        """Why this Redis may lose pool records: an eviction policy, or (when ``expect_persistence``) no AOF
        and no RDB snapshots. A server that refuses CONFIG (some managed services) is said to be unchecked."""
        try:
            config = {**self.r.config_get("maxmemory-policy"), **self.r.config_get("appendonly"),
                      **self.r.config_get("save")}
        except redis.ResponseError:
            return ["Redis refuses CONFIG GET: its eviction policy and persistence could not be checked"]
        warnings = []
        policy = config.get("maxmemory-policy")
        if policy != "noeviction":
            warnings.append(f"Redis maxmemory-policy is {policy!r}, not 'noeviction': it may evict pool "
                            f"records and locks (they are rebuilt from the provider, event history is lost)")
        if expect_persistence and config.get("appendonly") != "yes" and not (config.get("save") or "").strip():
            warnings.append("Redis persistence is off (no AOF, no RDB save): a restart loses every pool record "
                            "(rebuilt from the provider), task record and event")
        return warnings
