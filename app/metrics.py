"""The Prometheus exposition of /metrics: what every worker and beat counted, read from Redis at scrape time.

The figures live in Redis (``app/store/metrics.py`` says why), so every web process answers the same
and a scrape costs two Redis round trips whatever the number of pools. No metric has a per-pool or
per-machine label: tenants' pools stay out of the scrape.
"""

import platform
from datetime import datetime
from importlib import metadata

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                    InfoMetricFamily)
from prometheus_client.utils import floatToGoString

from app.store import Store
from app.store.metrics import TRIGGERS, histogram


def render(store: Store) -> bytes:
    """The text exposition of every family below."""
    registry = CollectorRegistry()
    registry.register(StoreCollector(store))
    return generate_latest(registry)


def build_info() -> dict:
    """The running warmpool's version and Python's (``warmpool_build_info``, ``GET /version``)."""
    return {"version": metadata.version("warmpool"), "python_version": platform.python_version()}


class StoreCollector:
    def __init__(self, store: Store):
        self.store = store

    def collect(self):
        figures = self.store.metrics()
        yield InfoMetricFamily("warmpool_build", "The running warmpool's version", value=build_info())

        pools = GaugeMetricFamily("warmpool_pools", "Warm pools by state", labels=["state"])
        for state, count in self.store.pool_counts().items():
            pools.add_metric([state], count)
        yield pools

        triggers = ", ".join(TRIGGERS)
        yield _counter("warmpool_failovers_started", f"Failovers started, by trigger ({triggers})",
                       ["trigger"], figures["failovers_started"])
        yield _counter("warmpool_failovers", f"Failovers ended, by trigger ({triggers}) and result (success, failure, "
                                             "cancelled)", ["trigger", "result"], figures["failovers"])

        duration = HistogramMetricFamily(
            "warmpool_failover_duration_seconds",
            "Recovery time of completed failovers: from the first failed health check (or the request, "
            "for a manual failover) to the standby promoted")
        duration.add_metric([], *_buckets(figures["failover_seconds"]))
        yield duration

        phases = HistogramMetricFamily("warmpool_failover_phase_seconds",
                                       "Time spent in each phase of completed failovers", labels=["phase"])
        for phase in sorted({field.partition("|")[0] for field in figures["phase_seconds"]}):
            phases.add_metric([phase], *_buckets(figures["phase_seconds"], f"{phase}|"))
        yield phases

        yield _counter("warmpool_standbys_lost", "Stopped standbys found lost and replaced, by the status the provider "
                       "showed (offline, unknown, gone...)", ["status"], figures["standbys_lost"])
        yield _counter("warmpool_provider_requests", "Responses of the provider's API, by endpoint and HTTP code "
                       "(code none: no response, a connection error or a timeout)",
                       ["endpoint", "code"], figures["provider_requests"])

        yield _counter("warmpool_webhook_deliveries", "Webhook delivery attempts, by result (delivered; retrying: "
                       "failed, another attempt scheduled; failed: the last attempt failed; gone: a 410 disabled "
                       "the webhook; deferred: not made yet, the tenant had its cap of attempts in flight)",
                       ["result"], figures["webhook_deliveries"])

        last = figures["last_sweep"]
        yield GaugeMetricFamily("warmpool_last_sweep_timestamp_seconds",
                                "When the last health sweep that reached the provider ended (0: never)",
                                value=datetime.fromisoformat(last).timestamp() if last else 0)
        yield GaugeMetricFamily("warmpool_last_sweep_duration_seconds", "Wall time of the last health sweep",
                                value=figures["last_sweep_seconds"])
        yield CounterMetricFamily("warmpool_unknown_sweeps", "Health sweeps the provider could not answer",
                                  value=figures["unknown_sweeps"])
        yield GaugeMetricFamily("warmpool_orphans",
                                "Labelled provider resources that no pool references, at the last reconcile",
                                value=figures["orphans"])


def _counter(name: str, documentation: str, labels: list[str], fields: dict[str, str]) -> CounterMetricFamily:
    """A counter family from a hash whose fields are label values joined by '|'."""
    family = CounterMetricFamily(name, documentation, labels=labels)
    for field, value in sorted(fields.items()):
        family.add_metric(field.split("|"), float(value))
    return family


def _buckets(fields: dict[str, str], prefix: str = "") -> tuple[list[tuple[str, float]], float]:
    buckets, total = histogram(fields, prefix)
    return [(floatToGoString(bound), count) for bound, count in buckets], total
