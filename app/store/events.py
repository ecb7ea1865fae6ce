"""The pools' event histories: what happened to each pool, newest first (``GET /warmpool/events/<id>``)."""

import json
from collections.abc import Callable

import redis

from app.pools import now_iso, split_pool_id
from app.store import keys

EVENTS_KEPT = 200

# what else an event feeds, in the event's own transaction: the webhook outbox, the metrics (app/events.py). A
# sink sees the tenant, the pool's machine id (None for an event of the tenant's that no pool had) and the record
EventSink = Callable[[redis.client.Pipeline, str, int | None, dict], None]


class EventRecords:
    """The events' repository (mixed into ``Store``): each pool's last EVENTS_KEPT events.

    Keys: ``keys.events(pid)``, a list of JSON records (``at``, ``event``: its kind, ``message``, details), newest
    first. Each kind is one of ``app.events.EVENT_KINDS``, which says what else it feeds.

    No method here is a compare-and-set. ``event`` is an unconditional write: one transaction (MULTI) pushes the
    record, trims the list, and lets each of ``event_sinks`` add its writes (a webhook delivery, a metric), so
    that an event and what it feeds are written together or not at all. ``tenant_event`` is one too, for an
    event that no pool had: its sinks only, in one transaction. ``events`` is a plain read.
    """

    r: redis.Redis
    event_sinks: list[EventSink]  # set by Store

    def event(self, pid: str, kind: str, message: str, **data) -> None:
        """Record what happened to a pool; the event sinks (webhooks, metrics) see it in the same transaction.
        ``data`` adds details and never replaces the record's own fields (``at`` is when it happened)."""
        key = keys.events(pid)
        record = _record(kind, message, data)
        tenant, machine_id = split_pool_id(pid)
        with self.r.pipeline() as pipe:
            pipe.lpush(key, json.dumps(record))
            pipe.ltrim(key, 0, EVENTS_KEPT - 1)
            for sink in self.event_sinks:
                sink(pipe, tenant, machine_id, record)
            pipe.execute()

    def tenant_event(self, tenant: str, kind: str, message: str, **data) -> None:
        """Something that happened to the tenant and to none of its pools (a webhook disabled by a 410 answering
        a ``webhook.test`` delivery): no pool's history holds it; the sinks see it with no machine id (so its
        webhook deliveries carry ``machine_id: null``), in one transaction."""
        record = _record(kind, message, data)
        with self.r.pipeline() as pipe:
            for sink in self.event_sinks:
                sink(pipe, tenant, None, record)
            pipe.execute()

    def events(self, pid: str, limit: int = 50) -> list[dict]:
        return [json.loads(e) for e in self.r.lrange(keys.events(pid), 0, limit - 1)]


def _record(kind: str, message: str, data: dict) -> dict:
    """An event's record: ``at`` (now), ``event`` (its kind), ``message``, then ``data``, which never replaces
    the record's own fields."""
    own = {"at": now_iso(), "event": kind, "message": message}
    record = {**own, **data, **own}  # in this order, and never replaced by data
    return record
