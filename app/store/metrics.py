"""What every process counts for Prometheus, kept in Redis so that one scrape of the API shows it all.

Workers run in other processes and on other machines: a counter in a worker's memory would never
reach the web process that Prometheus scrapes, and a pushgateway would be one more service to run.
So each figure is a field of a Redis hash, incremented where it happens: failover outcomes by an
event sink, in the same transaction as the event itself; provider responses by the client's hook.
A histogram is a hash of cumulative bucket counters and a sum. A scrape reads a fixed number of
keys in one round trip, whatever the number of pools.
"""

import contextlib
import math

import redis

from app.events import EVENT_KINDS
from app.store import keys

# failover and phase durations, in seconds: from milliseconds (taking a lock) to minutes (a slow host)
# up to 900 s: an instance may load that long on Vast before it runs
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 300.0, 600.0, 900.0,
           math.inf)
# what starts a failover: the health sweep, Vast's notification, an operator's test or planned switchover, a
# rental that ends, the healer resuming or repairing one
TRIGGERS = ("health", "notification", "manual", "switchover", "expiry", "heal")

# the code of a provider call that got no response (connection error, timeout)
NO_RESPONSE = "none"


class MetricsRecords:
    """The metrics' repository (mixed into ``Store``): the counters and histograms /metrics shows.

    Keys: the ``METRIC_*`` hashes of ``keys.py`` (failovers started and ended, their durations and phases,
    provider responses, standbys lost, webhook attempts); ``metrics`` reads the sweep's figures too.

    No method here is a compare-and-set: counters only go up. Unconditional writes: ``count_event`` (an event
    sink, in the event's own transaction; ``app.events`` says which kind counts where) and
    ``count_provider_response`` (dropped while Redis is away). Plain read: ``metrics``, one round trip.
    """

    r: redis.Redis

    def count_event(self, pipe: redis.client.Pipeline, tenant: str, machine_id: int | None, record: dict) -> None:
        """An event sink: failovers started and ended (by trigger and result), their durations and phases; standbys
        lost (by the status the provider showed). Which kind counts where is its row in ``app.events``."""
        kind, trigger = EVENT_KINDS.get(record["event"]), record.get("trigger") or "unknown"
        if kind is None:
            return
        if kind.starts_failover:
            pipe.hincrby(keys.METRIC_FAILOVERS_STARTED, trigger, 1)
        elif kind.failover_result:
            pipe.hincrby(keys.METRIC_FAILOVERS, f"{trigger}|{kind.failover_result}", 1)
        elif kind.counts_standby_lost:
            pipe.hincrby(keys.METRIC_STANDBYS_LOST, record.get("status") or "unknown", 1)
        if kind.timed:
            _observe(pipe, keys.METRIC_FAILOVER_SECONDS, "", record["recovery_time_seconds"])
            for phase, seconds in (record.get("phases") or {}).items():
                _observe(pipe, keys.METRIC_PHASE_SECONDS, f"{phase}|", seconds)

    def count_provider_response(self, endpoint: str, status: int | None) -> None:
        """The provider client's hook: one more response of ``endpoint`` with this status."""
        # a count lost while Redis is away is better than a provider answer lost to it
        with contextlib.suppress(redis.RedisError):
            self.r.hincrby(keys.METRIC_PROVIDER_REQUESTS, f"{endpoint}|{NO_RESPONSE if status is None else status}", 1)

    def metrics(self) -> dict:
        """The counters and histograms of every process, and the sweep's figures, in one round trip
        (the pools by state are ``pool_counts()``)."""
        hashes = ("failovers", keys.METRIC_FAILOVERS), ("failovers_started", keys.METRIC_FAILOVERS_STARTED), \
            ("failover_seconds", keys.METRIC_FAILOVER_SECONDS), ("phase_seconds", keys.METRIC_PHASE_SECONDS), \
            ("provider_requests", keys.METRIC_PROVIDER_REQUESTS), ("standbys_lost", keys.METRIC_STANDBYS_LOST), \
            ("webhook_deliveries", keys.METRIC_WEBHOOK_DELIVERIES)
        with self.r.pipeline(transaction=False) as pipe:
            for _, key in hashes:
                pipe.hgetall(key)
            pipe.mget(keys.SWEEP_LAST, keys.SWEEP_SECONDS, keys.UNKNOWN_SWEEPS, keys.ORPHANS)
            *values, (last_sweep, sweep_seconds, unknown_sweeps, orphans) = pipe.execute()
        return {**{name: value for (name, _), value in zip(hashes, values)},
                "last_sweep": last_sweep, "last_sweep_seconds": float(sweep_seconds or 0),
                "unknown_sweeps": int(unknown_sweeps or 0), "orphans": int(orphans or 0)}


def histogram(fields: dict[str, str], prefix: str = "") -> tuple[list[tuple[float, float]], float]:
    """One histogram of a hash read by ``metrics()``: its cumulative ``[(bound, count), ...]`` and its sum."""
    return [(bound, float(fields.get(f"{prefix}le={bound}", 0))) for bound in BUCKETS], \
        float(fields.get(f"{prefix}sum", 0))


def _observe(pipe: redis.client.Pipeline, key: str, prefix: str, value: float) -> None:
    """One observation: every bucket it fits in counts it, so the buckets read cumulative."""
    for bound in BUCKETS:
        if value <= bound:
            pipe.hincrby(key, f"{prefix}le={bound}", 1)
    pipe.hincrbyfloat(key, f"{prefix}sum", value)
