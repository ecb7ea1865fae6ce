"""The pools' event histories: what happened to each pool, newest first (``GET /warmpool/events/<id>``)."""

import json
from collections.abc import Callable

import redis

from app.pools import now_iso
from app.store import keys

EVENTS_KEPT = 200

# what else an event feeds, in the event's own transaction: the webhook outbox, the metrics (app/events.py)
EventSink = Callable[[redis.client.Pipeline, str, dict], None]


class EventRecords:
    """The events' repository (mixed into ``Store``): each pool's last EVENTS_KEPT events.

    Keys: ``keys.events(pid)``, a list of JSON records (``at``, ``event``: its kind, ``message``, details), newest
    first. Each kind is one of ``app.events.EVENT_KINDS``, which says what else it feeds.

    No method here is a compare-and-set. ``event`` is an unconditional write: one transaction (MULTI) pushes the
    record, trims the list, and lets each of ``event_sinks`` add its writes (a webhook delivery, a metric), so
    that an event and what it feeds are written together or not at all. ``events`` is a plain read.
    """

    r: redis.Redis
    event_sinks: list[EventSink]  # set by Store

    def event(self, pid: str, kind: str, message: str, **data) -> None:
        """Record what happened to a pool; the event sinks (webhooks, metrics) see it in the same transaction.
        ``data`` adds details and never replaces the record's own fields (``at`` is when it happened)."""
        key = keys.events(pid)
        own = {"at": now_iso(), "event": kind, "message": message}
        record = {**own, **data, **own}  # in this order, and never replaced by data
        with self.r.pipeline() as pipe:
            pipe.lpush(key, json.dumps(record))
            pipe.ltrim(key, 0, EVENTS_KEPT - 1)
            for sink in self.event_sinks:
                sink(pipe, pid, record)
            pipe.execute()

    def events(self, pid: str, limit: int = 50) -> list[dict]:
        return [json.loads(e) for e in self.r.lrange(keys.events(pid), 0, limit - 1)]
