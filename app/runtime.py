"""This process's settings, state store and provider client, made once on first use.

The web app, the workers, beat and Flower share them; they read the environment, so a
forked worker makes its own connections after the fork. Tests and benchmarks that change
the environment call ``reset()``, and the next use reads it again.
"""

import contextlib
import contextvars
import functools
import random
import time
from collections.abc import Callable

from app.settings import Settings
from app.store import Store
from app.vast import VastClient


@functools.cache
def settings() -> Settings:
    """The one ``Settings`` of this process (app/settings.py)."""
    return Settings.from_env()


@functools.cache
def store() -> Store:
    cfg = settings()
    return Store.from_url(cfg.redis_url, cfg.redis_sentinel_master, cfg.redis_sentinel_password)


# how long a provider call may wait in its thread for a slot of the budget
MAX_THROTTLE_WAIT = 10.0


class Throttled(Exception):
    """The rate budget has no slot soon: try the step again in ``retry_in`` seconds."""

    def __init__(self, retry_in: float):
        super().__init__(f"rate budget busy for {retry_in:.1f} s")
        self.retry_in = retry_in


# whether this thread's provider calls go first: failover and health steps do (rule 7)
urgent: contextvars.ContextVar[bool] = contextvars.ContextVar("urgent", default=False)
# whether this thread may wait for a slot of the budget: a web thread may not (no slot now: Throttled)
waits_for_budget: contextvars.ContextVar[bool] = contextvars.ContextVar("waits_for_budget", default=True)
# the fencing check of the step this thread runs: raises FencedOut when its lock was lost (rule 12)
fence: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar("fence", default=None)
MUTATING_METHODS = ("PUT", "POST", "DELETE")


@contextlib.contextmanager
def without_waiting():
    """Provider calls that take a budget slot only if one is free now: a web thread never sleeps for one."""
    token = waits_for_budget.set(False)
    try:
        yield
    finally:
        waits_for_budget.reset(token)


@contextlib.contextmanager
def unfenced():
    """Calls that undo what this step alone made: allowed after its lock was lost (rule 12)."""
    token = fence.set(None)
    try:
        yield
    finally:
        fence.reset(token)
READS_BY_POST = ("search_offers", "search_volumes")


@functools.cache
def vast() -> VastClient:
    """The provider client; every call first takes a slot of the rate budget shared in Redis
    (Celery's own rate limits are per worker)."""
    cfg = settings()
    limits = cfg.vast_rate_limits

    def throttle(endpoint: str) -> None:
        if not limits.get(endpoint):
            return
        # the provider counts arrivals, which jitter by a few ms after the slot: keep a margin
        interval = limits[endpoint] * 1.05 + 0.01
        if not waits_for_budget.get():
            if (wait := store().reserve_slot(endpoint, interval, horizon=0)) < 0:
                raise Throttled(-wait)
            return
        # others reserve at most two slots ahead, so an urgent call never waits behind a backlog
        horizon = -1 if urgent.get() else 2 * interval
        deadline = time.monotonic() + MAX_THROTTLE_WAIT
        while (wait := store().reserve_slot(endpoint, interval, horizon)) < 0:
            pause = -wait - horizon + random.uniform(0, interval)
            if time.monotonic() + pause > deadline:
                raise Throttled(pause)  # give the thread back; the step comes again later
            time.sleep(pause)
        time.sleep(wait)

    def guard(endpoint: str, method: str) -> None:
        check = fence.get()
        if check is not None and method in MUTATING_METHODS and endpoint not in READS_BY_POST:
            check()

    return VastClient(cfg.vast_api_url, cfg.vast_api_key, throttle=throttle, guard=guard,
                      observe=store().count_provider_response)


def reset() -> None:
    """Forget this process's settings, store and client: the next use of each reads the environment again."""
    for made_once in (settings, store, vast):
        made_once.cache_clear()
