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

from app.pools import split_pool_id
from app.settings import DEFAULT_ACCOUNT, Settings
from app.store import Store
from app.vast import VastClient


@functools.cache
def settings() -> Settings:
    """The one ``Settings`` of this process (app/settings.py)."""
    return Settings.from_env()


@functools.cache
def store() -> Store:
    cfg = settings()
    made = Store.from_url(cfg.redis_url, cfg.redis_sentinel_master, cfg.redis_sentinel_password)
    made.first_attempt_delay = cfg.webhook_retry_schedule[0]  # the wait before a delivery's first attempt
    return made


# how long a provider call may wait in its thread for a slot of the budget
MAX_THROTTLE_WAIT = 10.0


class Throttled(Exception):
    """The rate budget has no slot soon: try the step again in ``retry_in`` seconds."""

    def __init__(self, retry_in: float):
        super().__init__(f"rate budget busy for {retry_in:.1f} s")
        self.retry_in = retry_in


# whether this thread's provider calls go first: failover and health steps do (rule 7)
urgent: contextvars.ContextVar[bool] = contextvars.ContextVar("urgent", default=False)
# how many intervals ahead this thread's provider calls may take a slot of the budget, else give the thread back
# (Throttled): None, queue as usual; 1, a shared poll round; 0, a web thread, which never waits for a slot
reserve_within: contextvars.ContextVar[float | None] = contextvars.ContextVar("reserve_within", default=None)
# the fencing check of the step this thread runs: raises FencedOut when its lock was lost (rule 12)
fence: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar("fence", default=None)
MUTATING_METHODS = ("PUT", "POST", "DELETE")
# this thread's provider calls take their endpoint's slots in rank order, (rank, claim) (Store.take_ranked_slot)
ranked: contextvars.ContextVar[tuple[float, str] | None] = contextvars.ContextVar("ranked", default=None)
# a ranked call waits for its turn in its thread when the turn is this close; else it gives the thread back
RANKED_WAIT_IN_THREAD = 3.0
# how long a ranked claim is kept past its estimated turn for a caller that gave its thread back
RANKED_HOLD = 5.0


@contextlib.contextmanager
def reserving_within(intervals: float):
    """The provider calls made inside take a budget slot at most ``intervals`` ahead of now, else raise Throttled
    instead of queueing behind reserved slots."""
    token = reserve_within.set(intervals)
    try:
        yield
    finally:
        reserve_within.reset(token)


def without_queueing(pages: int = 1):
    """A shared poll round, which can wait for the next one: rounds asked for by every waiting step never hold
    more of the budget than is free. A round of ``pages`` list calls reserves as far ahead as its own pages
    need, so a round once begun is not thrown away for want of a slot for its last page."""
    return reserving_within(max(1, pages))


def without_waiting():
    """A web thread never sleeps for a slot: one free now, or Throttled."""
    return reserving_within(0)


@contextlib.contextmanager
def ranked_calls(rank: float, claim: str):
    """The provider calls made inside take their turns by ``rank`` (lower first) among other ranked calls;
    ``claim`` names the caller across retries, so a step that comes again keeps its place."""
    token = ranked.set((rank, claim))
    try:
        yield
    finally:
        ranked.reset(token)


@contextlib.contextmanager
def unfenced():
    """Calls that undo what this step alone made: allowed after its lock was lost (rule 12)."""
    token = fence.set(None)
    try:
        yield
    finally:
        fence.reset(token)
READS_BY_POST = ("search_offers", "search_volumes")


# the Vast account this thread's provider calls go to (rule 17): a pool's steps set their tenant's
account: contextvars.ContextVar[str] = contextvars.ContextVar("account", default=DEFAULT_ACCOUNT)


@contextlib.contextmanager
def on_account(name: str):
    """The provider calls made inside (``vast()`` with no tenant) go to the Vast account ``name``."""
    token = account.set(name)
    try:
        yield
    finally:
        account.reset(token)


def on_tenant_account(tenant: str):
    """The provider calls made inside (``vast()`` with no tenant) go to ``tenant``'s Vast account."""
    return on_account(settings().account_of(tenant))


def pools_by_account(pids: list[str]) -> dict[str, list[str]]:
    """Pool ids ("tenant:machine_id") by the Vast account their tenant is on; every account is a key, with no
    pools too (an account's sweep still looks for what lost its record)."""
    cfg = settings()
    grouped: dict[str, list[str]] = {name: [] for name in cfg.accounts()}
    for pid in pids:
        grouped.setdefault(cfg.account_of(split_pool_id(pid)[0]), []).append(pid)
    return grouped


def take_ranked_turn(endpoint: str, interval: float, rank: float, claim: str, budget: str) -> None:
    """Wait for this ranked call's slot of the ``budget`` account's: in this thread when it is near, else give
    the thread back (Throttled) and keep the place for the step's return."""
    while (wait := store().take_ranked_slot(endpoint, interval, rank, claim, RANKED_HOLD, budget)) < 0:
        if -wait > RANKED_WAIT_IN_THREAD:
            raise Throttled(-wait - RANKED_WAIT_IN_THREAD / 2)
        time.sleep(min(-wait, interval) / 2)  # ask again before the turn comes
    time.sleep(wait)


def vast(tenant: str | None = None) -> VastClient:
    """The provider client of ``tenant``'s Vast account (rule 17); with no tenant, of the account this thread
    works on (``on_account``: a pool's steps are on their tenant's, see tasks/base.py), else the default one."""
    return account_client(account.get() if tenant is None else settings().account_of(tenant))


@functools.cache
def account_client(name: str) -> VastClient:
    """The one factory of provider clients: one per Vast account, with that account's key; every call first takes
    a slot of the account's rate budget shared in Redis (Vast limits each key apart; Celery's own rate limits are
    per worker)."""
    cfg = settings()
    limits = cfg.vast_rate_limits

    def throttle(endpoint: str) -> None:
        if not limits.get(endpoint):
            return
        # the provider counts arrivals, which jitter by a few ms after the slot: keep a margin
        interval = limits[endpoint] * 1.05 + 0.01
        if (within := reserve_within.get()) is not None:
            if (wait := store().reserve_slot(endpoint, interval, within * interval, name)) < 0:
                raise Throttled(max(within * interval / 2, -wait - within * interval))
            if wait:
                time.sleep(wait)
            return
        if (rank := ranked.get()) is not None:
            return take_ranked_turn(endpoint, interval, *rank, name)
        # others reserve at most two slots ahead, so an urgent call never waits behind a backlog
        horizon = -1 if urgent.get() else 2 * interval
        deadline = time.monotonic() + MAX_THROTTLE_WAIT
        while (wait := store().reserve_slot(endpoint, interval, horizon, name)) < 0:
            pause = -wait - horizon + random.uniform(0, interval)
            if time.monotonic() + pause > deadline:
                raise Throttled(pause)  # give the thread back; the step comes again later
            time.sleep(pause)
        time.sleep(wait)

    def guard(endpoint: str, method: str) -> None:
        check = fence.get()
        if check is not None and method in MUTATING_METHODS and endpoint not in READS_BY_POST:
            check()

    return VastClient(cfg.vast_api_url, cfg.account_key(name), throttle=throttle, guard=guard,
                      observe=store().count_provider_response)


def reset() -> None:
    """Forget this process's settings, store and clients: the next use of each reads the environment again."""
    for made_once in (settings, store, account_client):
        made_once.cache_clear()
