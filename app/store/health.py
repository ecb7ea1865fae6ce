"""What the health sweep keeps between runs: failures in a row, its own slot, the provider's health."""

import contextlib
import json
import time
from typing import cast

import redis
from redis.exceptions import LockError

from app.pools import now_iso
from app.store import keys


class HealthRecords:
    """The sweep's repository (mixed into ``Store``): what the health sweep keeps between runs.

    Keys: ``sweep_slot(n)`` (one per interval) and ``SWEEP_RUNNING`` (a lock); ``HEALTH_FAILS`` and
    ``HEALTH_SINCE`` (pool id -> failed sweeps in a row, and when the first was); the last sweep's figures
    (``SWEEP_LAST``, ``SWEEP_LAST_TS``, ``SWEEP_SECONDS``, ``LABEL_COUNTS``, ``PROVIDER_HEALTH``,
    ``UNKNOWN_SWEEPS``, ``ORPHANS``); ``due_at(what)``; the workers' ``WORKER_SEEN`` and ``WORKER_READY``.

    Compare-and-create: ``take_sweep_slot`` (the interval's slot, SET NX) and ``sweep_running`` (a redis-py
    lock, SET NX, released only by its token).

    Unconditional writes: ``count_failures`` (counts each failed pool once more, HINCRBY; keeps the time of its
    first failure, HSETNX; forgets the others), ``forget_failures``, ``record_sweep``, ``record_unknown_sweep``,
    ``record_orphans``, ``mark_worker_seen``; ``due`` reads when ``what`` last ran and, if due, writes now
    (not compared: the sweep that calls it runs alone, ``sweep_running``).

    Plain reads: ``last_sweep``, ``last_sweep_time``, ``unknown_sweeps``, ``label_counts``,
    ``label_counts_since``, ``worker_seen_at``, ``worker_ready_at``, ``ping``.
    """

    r: redis.Redis

    def take_sweep_slot(self, interval: float) -> bool:
        """One sweep per interval, even with two beats (an operator's mistake): a failure is counted once."""
        slot = keys.sweep_slot(int(time.time() / interval))
        return bool(self.r.set(slot, "1", nx=True, px=max(1000, int(interval * 2000))))

    @contextlib.contextmanager
    def sweep_running(self, ttl: float):
        """Yield whether this process runs the sweep now; never two at once. ``ttl`` bounds what a killed
        sweeper holds, so keep it short: the sweep itself is one list call."""
        lock = self.r.lock(keys.SWEEP_RUNNING, timeout=ttl)
        got = lock.acquire(blocking=False)
        try:
            yield got
        finally:
            if got:
                with contextlib.suppress(LockError):
                    lock.release()

    def count_failures(self, failed: list[str], last_ok: float) -> dict[str, tuple[int, float, float]]:
        """Count one more failed sweep for each of ``failed``, forget the others' counts. Return, per failed
        pool, its count, when its first failed sweep was, and the sweep before that (the last healthy one)."""
        now = time.time()
        with self.r.pipeline() as pipe:
            for pid in failed:
                pipe.hincrby(keys.HEALTH_FAILS, pid, 1)
                pipe.hsetnx(keys.HEALTH_SINCE, pid, f"{now} {last_ok}")
            pipe.hkeys(keys.HEALTH_FAILS)
            replies = pipe.execute()
        recovered = set(replies[-1]) - set(failed)
        if recovered:
            self.forget_failures(list(recovered))
        since = self.r.hmget(keys.HEALTH_SINCE, failed) if failed else []
        counted = {}
        for pid, count, times in zip(failed, replies[:-1:2], since):
            first, healthy = map(float, (times or f"{now} {last_ok}").split())
            counted[pid] = (count, first, healthy)
        return counted

    def forget_failures(self, pids: list[str]) -> None:
        if pids:
            self.r.hdel(keys.HEALTH_FAILS, *pids)
            self.r.hdel(keys.HEALTH_SINCE, *pids)

    def record_sweep(self, seconds: float, label_counts: dict[str, int]) -> None:
        with self.r.pipeline() as pipe:
            pipe.set(keys.LABEL_COUNTS, json.dumps(label_counts))
            pipe.set(keys.PROVIDER_HEALTH, json.dumps({"ok": True, "at": now_iso()}))
            pipe.set(keys.SWEEP_LAST, now_iso())
            pipe.set(keys.SWEEP_LAST_TS, time.time())
            pipe.set(keys.SWEEP_SECONDS, seconds)
            pipe.execute()

    def record_unknown_sweep(self, error: str) -> None:
        """The provider could not be asked: nothing is counted, nothing fails over (rule 6)."""
        with self.r.pipeline() as pipe:
            pipe.incr(keys.UNKNOWN_SWEEPS)
            pipe.set(keys.PROVIDER_HEALTH, json.dumps({"ok": False, "at": now_iso(), "error": error}))
            pipe.execute()

    def last_sweep(self) -> str | None:
        return cast(str | None, self.r.get(keys.SWEEP_LAST))

    def last_sweep_time(self) -> float | None:
        """When the last sweep that reached the provider ran (epoch seconds)."""
        raw = self.r.get(keys.SWEEP_LAST_TS)
        return float(raw) if raw else None

    def unknown_sweeps(self) -> int:
        return int(self.r.get(keys.UNKNOWN_SWEEPS) or 0)

    def label_counts(self) -> dict[str, int]:
        return json.loads(self.r.get(keys.LABEL_COUNTS) or "{}")

    def label_counts_since(self, since: float) -> dict[str, int] | None:
        """The last sweep's label counts if that sweep started at ``since`` or later (its list answer is newer
        still), else None."""
        counts, last, seconds = self.r.mget(keys.LABEL_COUNTS, keys.SWEEP_LAST_TS, keys.SWEEP_SECONDS)
        if counts is None or last is None or float(last) - float(seconds or 0) < since:
            return None
        return json.loads(counts)

    def due(self, what: str, interval: float) -> bool:
        """Whether the sweep's less frequent work ``what`` (the capacity check, the audit of primaries) is due;
        the caller runs it if so."""
        now = time.time()
        if now - float(self.r.get(keys.due_at(what)) or 0) <= interval:
            return False
        self.r.set(keys.due_at(what), now)
        return True

    def record_orphans(self, count: int) -> None:
        self.r.set(keys.ORPHANS, count)

    def mark_worker_seen(self, ready: bool = False) -> None:
        """A worker sent a heartbeat; ``ready``: it also answers control calls (Flower's inspect) now."""
        now = time.time()
        self.r.set(keys.WORKER_SEEN, now, ex=60)
        if ready:
            self.r.set(keys.WORKER_READY, now, ex=60)

    def worker_seen_at(self) -> float:
        return float(self.r.get(keys.WORKER_SEEN) or 0)

    def worker_ready_at(self) -> float:
        return float(self.r.get(keys.WORKER_READY) or 0)

    def ping(self) -> bool:
        return bool(self.r.ping())
