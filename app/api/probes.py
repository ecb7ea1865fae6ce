"""Probes for load balancers, and metrics for Prometheus.

The probes need no key: a load balancer has none, and they tell nothing about any tenant.
/metrics has no tenant data either (no per-pool label), but it tells how busy the service is and
how its provider answers, so it asks for ``Authorization: Bearer $WARMPOOL_METRICS_TOKEN`` when
that setting is set (Prometheus sends it with ``authorization: {credentials: ...}``); unset, it is
open, for a scrape from a private network.
"""

import hmac
import time

import redis
from flask import Blueprint, jsonify, request
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from app import metrics as exposition
from app import runtime
from app.api import abort

bp = Blueprint("probes", __name__)


@bp.get("/healthz")
def healthz():
    return {"status": "ok"}


@bp.get("/readyz")
def readyz():
    """Ready when Redis answers and a worker has been seen consuming; ``warnings`` (still ready) say when
    Redis is set up to lose data."""
    checks, warnings = {}, []
    try:
        runtime.store().ping()
        checks["redis"] = "ok"
        checks["worker"] = "ok" if time.time() - runtime.store().worker_seen_at() < 30 else "no worker seen in 30 s"
        warnings = runtime.store().redis_warnings(expect_persistence=not runtime.settings().dev)
    except redis.RedisError as exc:
        checks["redis"] = type(exc).__name__
        checks.setdefault("worker", "unknown")
    ready = all(v == "ok" for v in checks.values())
    return jsonify(status="ready" if ready else "not ready", checks=checks, warnings=warnings), \
        200 if ready else 503


@bp.get("/version")
def version():
    """The build, as ``warmpool version`` shows it (no key: like Kubernetes' /version, it tells no tenant data)."""
    return exposition.build_info()


@bp.get("/metrics")
def metrics():
    token = runtime.settings().metrics_token
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            abort(401, message="Missing or invalid metrics token: send Authorization: Bearer <WARMPOOL_METRICS_TOKEN>",
                  headers={"WWW-Authenticate": "Bearer"})
    return exposition.render(runtime.store()), 200, {"Content-Type": CONTENT_TYPE_LATEST}
