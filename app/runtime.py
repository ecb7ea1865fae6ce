"""This process's settings, state store and provider client, made once on first use.

The web app, the workers and beat share them; they read the environment, so a
forked worker makes its own connections after the fork.
"""

import functools
import json
import os
import time

from app.settings import Settings
from app.store import Store
from app.vast import VastClient

# Vast's documented minimum intervals between calls, per endpoint and API key
VAST_RATE_LIMITS = {"create_instance": 4.5, "destroy_instance": 3.0, "show_instance": 2.0,
                    "list_instances": 1.0, "manage_instance": 1.0, "volumes": 5.5}


@functools.cache
def settings() -> Settings:
    return Settings.from_env()


@functools.cache
def store() -> Store:
    return Store.from_url(settings().redis_url)


@functools.cache
def vast() -> VastClient:
    """The provider client; every call first takes a slot of the rate budget shared in Redis
    (Celery's own rate limits are per worker)."""
    raw = os.environ.get("VAST_RATE_LIMITS")
    limits = json.loads(raw) if raw else VAST_RATE_LIMITS

    def throttle(endpoint: str) -> None:
        if limits.get(endpoint):
            # the provider counts arrivals, which jitter by a few ms after the slot: keep a margin
            interval = limits[endpoint] * 1.05 + 0.005
            time.sleep(store().reserve_slot(endpoint, interval))

    return VastClient.from_env(throttle=throttle)
