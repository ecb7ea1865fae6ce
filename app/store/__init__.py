"""The state store: every pool, operation, event and lock lives in Redis, and only here.

Nothing outside this package touches Redis or spells a key (``keys.py``). ``Store`` is one
connection and the repositories that share it, one module each; each repository's class docstring
says which keys it keeps and which of its methods are compare-and-set (and on what they compare),
plain reads or unconditional writes:

- ``pools.py``: pool records and their indexes. Only the holder of a machine's lock writes its
  pool, and every write is fenced: it carries the epoch taken when the lock was acquired and is
  refused once a newer holder has taken the lock (rule 2 in docs/architecture.md).
- ``operations.py``: the operation (task) records. ``events.py``: each pool's event history, and
  the sinks an event feeds in its own transaction. ``apikeys.py``: created and revoked API keys.
- ``locks.py``: machine locks and fencing epochs. ``webhooks.py``: subscriptions and the delivery
  outbox. ``metrics.py``: what /metrics counts. ``health.py``: the sweep's bookkeeping.
  ``budget.py``: rate and failover budgets. ``polls.py``: shared poll rounds. ``ingress.py``: what
  the API lets in. ``rebuild.py``: which records Redis lost.
"""

from typing import Any

import redis
from redis.sentinel import Sentinel

from app.settings import SentinelAddress, sentinel_address
from app.store.apikeys import ApiKeyRecords
from app.store.budget import BudgetRecords
from app.store.events import EVENTS_KEPT, EventRecords
from app.store.health import HealthRecords
from app.store.ingress import IngressRecords
from app.store.locks import Busy, FencedOut, Held, Lease, LockRecords
from app.store.metrics import MetricsRecords
from app.store.operations import OP_ENDED, OperationRecords
from app.store.polls import UNSEEN, PollRecords
from app.store.pools import PoolExists, PoolRecords
from app.store.rebuild import RebuildRecords
from app.store.webhooks import WebhookRecords

__all__ = ["Store", "Busy", "FencedOut", "Held", "Lease", "PoolExists", "UNSEEN", "OP_ENDED", "EVENTS_KEPT",
           "STORE_AWAY"]

# every client: a dead server is noticed within seconds, and a command it did not answer is an error the caller
# handles like a Redis restart (the healer resumes what a step left)
CLIENT_OPTIONS: dict[str, Any] = {"decode_responses": True, "health_check_interval": 10, "socket_timeout": 10,
                  "socket_connect_timeout": 5, "retry_on_timeout": True}


def sentinel_master_client(address: SentinelAddress, master: str, sentinel_password: str) -> redis.Redis:
    """A client of whichever server the sentinels call master now: redis-py's ``Sentinel.master_for`` asks
    them again on each new connection, and a connection to a master that became a replica is dropped
    (``ReadOnlyError`` turns into ``ConnectionError``), so a failover of Redis looks like a Redis restart."""
    sentinels = Sentinel(list(address.nodes), sentinel_kwargs={"password": sentinel_password or None,
                                                               "socket_timeout": 2, "socket_connect_timeout": 2})
    return sentinels.master_for(master, db=address.db, password=address.password, **CLIENT_OPTIONS)


# Redis unreachable, after redis-py's own retries (about 3 s of backoff): a restart, not a bug of the caller
STORE_AWAY = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


class Store(PoolRecords, OperationRecords, EventRecords, ApiKeyRecords, LockRecords, HealthRecords, BudgetRecords,
            PollRecords, WebhookRecords, MetricsRecords, RebuildRecords, IngressRecords):
    """The repositories over one Redis connection (``r``); each one's docstring says what it keeps."""

    def __init__(self, client: redis.Redis):
        self.r = client
        # what else an event feeds, in the same Redis transaction (app/events.py says which kinds feed what)
        self.event_sinks = [self.queue_webhook_deliveries, self.count_event]
        self._register_pool_scripts()
        self._register_lock_scripts()
        self._register_budget_scripts()
        self._register_ingress_scripts()
        self._register_webhook_scripts()

    @classmethod
    def from_url(cls, url: str, sentinel_master: str = "", sentinel_password: str = "") -> "Store":
        """The store at a Redis URL, or behind the sentinels of a ``sentinel://`` URL (``app.settings``)."""
        address = sentinel_address(url)
        if address is None:
            return cls(redis.Redis.from_url(url, **CLIENT_OPTIONS))
        store = cls(sentinel_master_client(address, sentinel_master, sentinel_password))
        store.replicas_to_wait = 1
        return store
