"""Probes and metrics, for load balancers and Prometheus (no auth, no tenant data)."""

import time

import redis
from flask import Blueprint, jsonify
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from app.runtime import store
from app.store import STATES

bp = Blueprint("probes", __name__)


@bp.get("/healthz")
def healthz():
    return {"status": "ok"}


@bp.get("/readyz")
def readyz():
    """Ready when Redis answers and a worker has been seen consuming."""
    checks = {}
    try:
        store().r.ping()
        checks["redis"] = "ok"
        seen = float(store().r.get("wp:worker:seen") or 0)
        checks["worker"] = "ok" if time.time() - seen < 30 else "no worker seen in 30 s"
    except redis.RedisError as exc:
        checks["redis"] = type(exc).__name__
        checks.setdefault("worker", "unknown")
    ready = all(v == "ok" for v in checks.values())
    return jsonify(status="ready" if ready else "not ready", checks=checks), 200 if ready else 503


class StoreCollector:
    """Reads the numbers from Redis at scrape time, so every web process reports the same."""

    def collect(self):
        s = store()
        by_state = GaugeMetricFamily("warmpool_pools", "Warm pools by state", labels=["state"])
        counts = dict.fromkeys(STATES, 0)
        for pool in s.get_pools(s.all_pool_ids()):
            counts[pool["state"]] += 1
        for state, count in counts.items():
            by_state.add_metric([state], count)
        yield by_state
        for name, key, doc in (
                ("warmpool_unknown_sweeps", "wp:metrics:unknown_sweeps", "Health sweeps the provider could not answer"),
                ("warmpool_orphans", "wp:metrics:orphans", "Labelled provider resources no pool references"),
                ("warmpool_sweep_seconds", "wp:metrics:sweep_seconds", "Wall time of the last health sweep")):
            yield GaugeMetricFamily(name, doc, value=float(s.r.get(key) or 0))


registry = CollectorRegistry()
registry.register(StoreCollector())


@bp.get("/metrics")
def metrics():
    return generate_latest(registry), 200, {"Content-Type": CONTENT_TYPE_LATEST}
