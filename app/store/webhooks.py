"""Webhook subscriptions and their deliveries: the transactional outbox of pool events.

A tenant subscribes a URL to some event types. When ``Store.event`` records an event
whose kind has a webhook type (``app/events.py``), ``queue_webhook_deliveries`` (an
event sink) writes one delivery per matching subscription and puts its id in the
outbox, in the same Redis transaction as the event itself: an event recorded is an
event delivered (at least once), and a delivery never exists without its event.
The outbox is a sorted set of delivery ids by when their next attempt is due: a new delivery is
due ``first_attempt_delay`` after its event (the retry schedule's first step, set by ``app.runtime``;
by default 0, at once), a retry when its schedule (or the receiver's Retry-After) says, a resend at once. The relay task, every
second, hands what is due to Celery; the delivery task signs and sends one attempt. Retries wait in
Redis, never in the broker: a message held for hours past the broker's visibility timeout would be
handed out again and again.
"""

import base64
import json
import secrets
import time
import uuid
from datetime import datetime, timezone
from typing import cast

import redis

from app.events import TEST_TYPE, WEBHOOK_TYPES
from app.pools import now_iso
from app.settings import WEBHOOK_DELIVERY_LIFETIME
from app.store import keys

MAX_WEBHOOKS = 20  # per tenant: bounds the fan-out of one event
DELIVERIES_KEPT = 50  # per webhook, for GET .../deliveries
ATTEMPTS_KEPT = 20  # per delivery: the latest; resends could otherwise grow one record without end
TENANT_BUSY_RETRY_SECONDS = 1.0  # a due delivery whose tenant has every slot in flight waits this long
PREVIOUS_SECRET_SECONDS = 24 * 3600  # after a rotation, deliveries are signed with both secrets this long
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


def new_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` and base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def signing_secrets(hook: dict, now: float) -> list[str]:
    """The secrets a delivery is signed with: the current one, and the one before it for a day after a rotation."""
    if hook.get("previous_secret") and hook.get("previous_secret_until", 0) > now:
        return [hook["secret"], hook["previous_secret"]]
    return [hook["secret"]]


class TooManyWebhooks(Exception):
    """The tenant has MAX_WEBHOOKS already."""


class TooManyPending(Exception):
    """The tenant has its cap of deliveries pending already."""


class DeliveryGone(Exception):
    """The delivery expired (or never was)."""


def attempts_made(delivery: dict) -> int:
    """How many attempts the delivery has had (its record keeps only the latest ATTEMPTS_KEPT)."""
    return delivery.get("attempts_made", len(delivery["attempts"]))


class WebhookRecords:
    """The webhooks' repository (mixed into ``Store``): subscriptions, deliveries and the outbox.

    Keys: ``webhooks(tenant)`` (hash: webhook id -> record, with its secret); ``delivery(id)`` (a delivery and its
    latest attempts, kept WEBHOOK_DELIVERY_LIFETIME); ``webhook_deliveries(webhook_id)`` (its recent delivery ids);
    ``WEBHOOK_DUE`` (the outbox: delivery id -> when its next attempt is due); ``webhooks_pending(tenant)`` and
    ``webhooks_in_flight(tenant)`` (the tenant's deliveries pending, and attempts in flight, for their caps);
    ``delivery_claim(id, attempt)``; ``WEBHOOK_RELAYING`` (a lock: one relay at a time).

    Compare-and-set (a Lua script, or a transaction that WATCHes what it compares; redis-py runs the
    transaction again when a watched key changed in between):

        * ``add_webhook``: adds the webhook only while the tenant has fewer than MAX_WEBHOOKS (Lua).
        * ``update_webhook`` (and ``rotate_secret``): WATCHes the tenant's webhooks, so a change is applied to
          the record as it is when written.
        * ``delete_webhook``: deletes the webhook and its history only if this tenant has it (Lua).
        * ``queue_test_delivery``: WATCHes the tenant's pending deliveries; TooManyPending at ``pending_limit``.
        * ``resend_delivery``: WATCHes the delivery and the tenant's pending deliveries: an attempt recorded
          meanwhile is never overwritten, and the cap is never passed.
        * ``record_attempt``: WATCHes the delivery, so two attempts' records never overwrite each other.
        * ``claim_attempt``: compare-and-create of the attempt's claim (SET NX); one claim per attempt.
        * ``take_delivery_slot``: a slot only while the tenant has fewer than ``limit`` in flight (Lua).
        * ``relay_outbox``: runs only under the relay's lock; takes a delivery out of the outbox only if its due
          time is still the one read (Lua), and puts back a tenant's waiting ones only later (ZADD XX GT).

    Unconditional writes: ``queue_webhook_deliveries`` (an event sink, in the event's own transaction),
    ``drop_pending``, ``release_claim``, ``give_back_delivery_slot``.

    Plain reads: ``webhooks``, ``get_webhook``, ``pending_deliveries``, ``get_delivery``, ``deliveries``,
    ``deliveries_in_flight``.
    """

    r: redis.Redis
    first_attempt_delay: float = 0.0  # seconds from an event (or a test) to its deliveries' first attempt

    def _register_webhook_scripts(self) -> None:
        self._add_capped = self.r.register_script(_ADD_CAPPED)
        self._delete_own = self.r.register_script(_DELETE_OWN)
        self._take_slot = self.r.register_script(_TAKE_SLOT)
        self._unqueue = self.r.register_script(_UNQUEUE_IF_UNCHANGED)

    # -- subscriptions ---------------------------------------------------------

    def add_webhook(self, tenant: str, url: str, events: list[str] | None) -> dict:
        """Subscribe ``url`` to ``events`` (None: every type, present and future); the record has the secret.
        The cap is checked and the webhook added in one step, so parallel requests cannot pass it."""
        hook: dict = {"id": "wh_" + uuid.uuid4().hex, "url": url, "events": events, "enabled": True,
                "secret": new_secret(), "created_at": now_iso()}
        if not self._add_capped(keys=[keys.webhooks(tenant)], args=[MAX_WEBHOOKS, hook["id"], json.dumps(hook)]):
            raise TooManyWebhooks(tenant)
        return hook

    def webhooks(self, tenant: str) -> list[dict]:
        hooks = [_with_defaults(json.loads(raw)) for raw in self.r.hvals(keys.webhooks(tenant))]
        return sorted(hooks, key=lambda hook: hook["created_at"])

    def get_webhook(self, tenant: str, webhook_id: str) -> dict | None:
        raw = self.r.hget(keys.webhooks(tenant), webhook_id)
        return _with_defaults(json.loads(raw)) if raw else None

    def update_webhook(self, tenant: str, webhook_id: str, change) -> dict | None:
        """Apply ``change`` (a function of the record, returning it) atomically; None if there is no such webhook."""
        def transaction(pipe: redis.client.Pipeline):
            raw = pipe.hget(keys.webhooks(tenant), webhook_id)
            if raw is None:
                return None
            hook = change(_with_defaults(json.loads(raw)))
            pipe.multi()
            pipe.hset(keys.webhooks(tenant), webhook_id, json.dumps(hook))
            return hook
        return cast(dict | None, self.r.transaction(transaction, keys.webhooks(tenant), value_from_callable=True))

    def rotate_secret(self, tenant: str, webhook_id: str) -> dict | None:
        """A new secret; the one it replaces still signs deliveries (beside it) for PREVIOUS_SECRET_SECONDS."""
        def rotate(hook: dict) -> dict:
            return {**hook, "secret": new_secret(), "previous_secret": hook["secret"],
                    "previous_secret_until": time.time() + PREVIOUS_SECRET_SECONDS}
        return self.update_webhook(tenant, webhook_id, rotate)

    def delete_webhook(self, tenant: str, webhook_id: str) -> bool:
        """Unsubscribe this tenant's webhook and drop its delivery history, in one step; another tenant's
        webhook of that id is left alone. Deliveries still queued for it are dropped when their turn comes."""
        return bool(self._delete_own(keys=[keys.webhooks(tenant), keys.webhook_deliveries(webhook_id)],
                                     args=[webhook_id]))

    # -- the outbox ------------------------------------------------------------

    def queue_webhook_deliveries(self, pipe: redis.client.Pipeline, tenant: str, machine_id: int | None,
                                 record: dict) -> None:
        """The event sink: a delivery per enabled subscription of the pool's tenant that wants this event type
        (``machine_id`` None: an event of the tenant's that no pool had)."""
        event_type = WEBHOOK_TYPES.get(record["event"])
        if event_type is None:
            return
        hooks = [hook for hook in self.webhooks(tenant)
                 if hook["enabled"] and (hook["events"] is None or event_type in hook["events"])]
        if not hooks:
            return
        data = {k: v for k, v in record.items() if k not in ("at", "event")}
        for hook in hooks:
            _queue_delivery(pipe, tenant, hook, event_type, machine_id, data, record["at"], self.first_attempt_delay)

    def queue_test_delivery(self, tenant: str, hook: dict, pending_limit: int) -> dict:
        """A ``webhook.test`` delivery to this webhook alone, due as an event's would be (``first_attempt_delay``,
        by default at once); TooManyPending if the tenant has
        ``pending_limit`` deliveries pending (checked and added in one transaction)."""
        def transaction(pipe: redis.client.Pipeline):
            if self._pending_count(pipe, tenant) >= pending_limit:
                raise TooManyPending(tenant)
            pipe.multi()
            return _queue_delivery(pipe, tenant, hook, TEST_TYPE, None,
                                   {"message": "a test event from warmpool"}, now_iso(), self.first_attempt_delay)
        return cast(dict, self.r.transaction(transaction, keys.webhooks_pending(tenant), value_from_callable=True))

    def pending_deliveries(self, tenant: str) -> int:
        return self._pending_count(self.r, tenant)

    @staticmethod
    def _pending_count(client, tenant: str) -> int:
        """The tenant's deliveries still pending; one whose record expired no longer counts."""
        now = time.time()
        return client.zcount(keys.webhooks_pending(tenant), now, "+inf")

    def drop_pending(self, tenant: str, delivery_id: str) -> None:
        """The delivery will not be attempted again (its webhook is gone or disabled)."""
        self.r.zrem(keys.webhooks_pending(tenant), delivery_id)

    def relay_outbox(self, send, slots_per_tenant: int, scan: int = 1000) -> int:
        """One pass over what is due, earliest first, at most ``scan`` deliveries: hand each to
        ``send(delivery_id, attempt)`` (which enqueues it) while its tenant has a free slot of its
        ``slots_per_tenant`` in flight; return how many were sent.

        A delivery whose tenant has no slot free stays in Redis, due again in a second, and costs no
        message: a tenant with many deliveries and slow receivers cannot flood the ``webhooks`` queue.
        One pass, not a loop until nothing is due, so a relay run is bounded whatever the backlog.
        One relay at a time, and an id leaves the outbox only after ``send`` took it, and only if nothing
        rescheduled it meanwhile: a relay that dies halfway sends some again, which the delivery task's
        claim makes harmless.
        """
        lock = self.r.lock(keys.WEBHOOK_RELAYING, timeout=30)
        if not lock.acquire(blocking=False):
            return 0
        try:
            now = time.time()
            due = cast(list[tuple[str, float]],
                       self.r.zrangebyscore(keys.WEBHOOK_DUE, "-inf", now, start=0, num=scan, withscores=True))
            if not due:
                return 0
            records = self.r.mget([keys.delivery(delivery_id) for delivery_id, _ in due])
            free: dict[str, int] = {}  # tenant -> slots left this pass
            waiting: dict[str, float] = {}
            sent = 0
            for (delivery_id, score), raw in zip(due, records):
                delivery = json.loads(raw) if raw else None
                if delivery is not None and delivery["state"] == PENDING:
                    tenant = delivery["tenant"]
                    if tenant not in free:
                        free[tenant] = slots_per_tenant - self.deliveries_in_flight(tenant)
                    if free[tenant] <= 0:
                        waiting[delivery_id] = now + TENANT_BUSY_RETRY_SECONDS
                        continue
                    free[tenant] -= 1
                    send(delivery_id, attempts_made(delivery) + 1)
                    sent += 1
                self._unqueue(keys=[keys.WEBHOOK_DUE], args=[delivery_id, repr(score)])
            if waiting:  # behind other tenants' deliveries due meanwhile; only if still queued, never sooner
                self.r.zadd(keys.WEBHOOK_DUE, waiting, xx=True, gt=True)
            return sent
        finally:
            lock.release()

    # -- deliveries ------------------------------------------------------------

    def get_delivery(self, delivery_id: str) -> dict | None:
        raw = self.r.get(keys.delivery(delivery_id))
        return json.loads(raw) if raw else None

    def deliveries(self, webhook_id: str) -> list[dict]:
        """The webhook's recent deliveries, newest first."""
        ids = cast(list[str], self.r.lrange(keys.webhook_deliveries(webhook_id), 0, DELIVERIES_KEPT - 1))
        if not ids:
            return []
        return [json.loads(raw) for raw in self.r.mget([keys.delivery(i) for i in ids]) if raw]

    def claim_attempt(self, delivery_id: str, attempt: int, ttl: float) -> bool:
        """Whether this worker makes attempt number ``attempt``: a broker's second copy of it does not.

        ``ttl`` must outlive the broker's visibility timeout, after which it hands the message out again.
        Should this worker die mid-attempt, the delivery comes due again once the claim has lapsed.
        """
        if not self.r.set(keys.delivery_claim(delivery_id, attempt), "1", nx=True, ex=int(ttl) + 1):
            return False
        self.r.zadd(keys.WEBHOOK_DUE, {delivery_id: time.time() + int(ttl) + 2})
        return True

    def release_claim(self, delivery_id: str, attempt: int, retry_in: float) -> None:
        """Give the attempt back, unmade: it comes due again in ``retry_in`` seconds."""
        with self.r.pipeline() as pipe:
            pipe.delete(keys.delivery_claim(delivery_id, attempt))
            pipe.zadd(keys.WEBHOOK_DUE, {delivery_id: time.time() + retry_in})
            pipe.hincrby(keys.METRIC_WEBHOOK_DELIVERIES, "deferred", 1)
            pipe.execute()

    def take_delivery_slot(self, tenant: str, delivery_id: str, limit: int, hold: float) -> bool:
        """One of the tenant's ``limit`` slots for an attempt in flight; one not given back lapses in ``hold`` s."""
        return bool(self._take_slot(keys=[keys.webhooks_in_flight(tenant)], args=[limit, hold, delivery_id]))

    def give_back_delivery_slot(self, tenant: str, delivery_id: str) -> None:
        self.r.zrem(keys.webhooks_in_flight(tenant), delivery_id)

    def deliveries_in_flight(self, tenant: str) -> int:
        return self.r.zcount(keys.webhooks_in_flight(tenant), time.time(), "+inf")

    def record_attempt(self, delivery_id: str, attempt: dict, state: str, result: str,
                       next_at: float | None = None) -> None:
        """Add an attempt (at, status_code, error, duration_ms), the delivery's state after it, and when
        the next attempt is due (``next_at``, epoch seconds, for a delivery still pending). The record
        keeps the latest ATTEMPTS_KEPT attempts."""
        def transaction(pipe: redis.client.Pipeline):
            raw = pipe.get(keys.delivery(delivery_id))
            if raw is None:
                return
            delivery = json.loads(raw)
            delivery["attempts_made"] = attempts_made(delivery) + 1
            delivery["attempts"] = (delivery["attempts"] + [attempt])[-ATTEMPTS_KEPT:]
            delivery["state"] = state
            delivery["next_attempt_at"] = _iso(next_at) if next_at is not None else None
            pipe.multi()
            pipe.set(keys.delivery(delivery_id), json.dumps(delivery), keepttl=True)
            if next_at is None:
                pipe.zrem(keys.WEBHOOK_DUE, delivery_id)
            else:
                pipe.zadd(keys.WEBHOOK_DUE, {delivery_id: next_at})
            if state != PENDING:
                pipe.zrem(keys.webhooks_pending(delivery["tenant"]), delivery_id)
            pipe.hincrby(keys.METRIC_WEBHOOK_DELIVERIES, result, 1)
        self.r.transaction(transaction, keys.delivery(delivery_id))

    def resend_delivery(self, tenant: str, delivery_id: str, pending_limit: int) -> dict:
        """Make the delivery pending and due now: one more attempt, or, for one still retrying, its next at
        once. TooManyPending if that would put the tenant past ``pending_limit`` pending deliveries; DeliveryGone
        if it expired. One transaction, watching the record: an attempt recorded meanwhile is never overwritten."""
        def transaction(pipe: redis.client.Pipeline):
            raw = pipe.get(keys.delivery(delivery_id))
            if raw is None:
                raise DeliveryGone(delivery_id)
            delivery = json.loads(raw)
            was_pending = pipe.zscore(keys.webhooks_pending(tenant), delivery_id) is not None
            if not was_pending and self._pending_count(pipe, tenant) >= pending_limit:
                raise TooManyPending(tenant)
            now = time.time()
            delivery["state"], delivery["next_attempt_at"] = PENDING, _iso(now)
            pipe.multi()
            pipe.set(keys.delivery(delivery_id), json.dumps(delivery), keepttl=True)
            pipe.zadd(keys.WEBHOOK_DUE, {delivery_id: now})
            _count_pending(pipe, tenant, delivery_id)
            return delivery
        return cast(dict, self.r.transaction(transaction, keys.delivery(delivery_id), keys.webhooks_pending(tenant),
                                             value_from_callable=True))


def _with_defaults(hook: dict) -> dict:
    """A record written before webhooks could be disabled is enabled."""
    return {"enabled": True, **hook}


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds")


def _queue_delivery(pipe: redis.client.Pipeline, tenant: str, hook: dict, event_type: str,
                    machine_id: int | None, data: dict, at: str, delay: float) -> dict:
    """Write one delivery of an event to a webhook, its first attempt due in ``delay`` seconds (in ``pipe``, the
    caller's transaction)."""
    due = time.time() + delay
    # the exact bytes signed and sent, the same on every attempt
    payload = json.dumps({"type": event_type, "timestamp": at, "machine_id": machine_id, "data": data},
                         separators=(",", ":"))
    delivery = {"id": "msg_" + uuid.uuid4().hex,  # the webhook-id header, kept across retries
                "tenant": tenant, "webhook_id": hook["id"], "type": event_type, "machine_id": machine_id,
                "payload": payload, "state": PENDING, "attempts": [], "next_attempt_at": _iso(due), "created_at": at}
    pipe.set(keys.delivery(delivery["id"]), json.dumps(delivery), ex=WEBHOOK_DELIVERY_LIFETIME)
    pipe.lpush(keys.webhook_deliveries(hook["id"]), delivery["id"])
    pipe.ltrim(keys.webhook_deliveries(hook["id"]), 0, DELIVERIES_KEPT - 1)
    pipe.zadd(keys.WEBHOOK_DUE, {delivery["id"]: due})
    _count_pending(pipe, tenant, delivery["id"])
    return delivery


def _count_pending(pipe: redis.client.Pipeline, tenant: str, delivery_id: str) -> None:
    """Count the delivery among its tenant's pending ones until it ends or its record expires."""
    pipe.zadd(keys.webhooks_pending(tenant), {delivery_id: time.time() + WEBHOOK_DELIVERY_LIFETIME})
    pipe.zremrangebyscore(keys.webhooks_pending(tenant), "-inf", time.time())
    pipe.expire(keys.webhooks_pending(tenant), WEBHOOK_DELIVERY_LIFETIME)


# KEYS: the tenant's webhooks; ARGV: the cap, the new id, its record
_ADD_CAPPED = """
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
return 1
"""

# KEYS: the tenant's webhooks, the webhook's delivery list; ARGV: the webhook id
_DELETE_OWN = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('DEL', KEYS[2])
return 1
"""

# KEYS: the tenant's attempts in flight; ARGV: the limit, how long a slot lasts, the delivery id.
# Redis's own clock, so every worker agrees when a slot lapses.
_TAKE_SLOT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
local hold = math.ceil(tonumber(ARGV[2]))
if redis.call('TTL', KEYS[1]) < hold then redis.call('EXPIRE', KEYS[1], hold) end
return 1
"""

# KEYS: the outbox; ARGV: the delivery id, the score the relay read
_UNQUEUE_IF_UNCHANGED = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then redis.call('ZREM', KEYS[1], ARGV[1]) end
return 0
"""
