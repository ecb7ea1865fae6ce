"""Webhook subscriptions and their deliveries: the transactional outbox of pool events.

A tenant subscribes a URL to some event types. When ``Store.event`` records an event
whose kind has a webhook type (``WEBHOOK_TYPES``), ``queue_webhook_deliveries`` (an
event sink) writes one delivery per matching subscription and puts its id in the
outbox, in the same Redis transaction as the event itself: an event recorded is an
event delivered (at least once), and a delivery never exists without its event.
The relay task moves the outbox into Celery; the delivery task signs and sends.
"""

import base64
import json
import secrets
import uuid

import redis

from app.pools import now_iso, split_pool_id
from app.store import keys

# internal event kind (Store.event) -> the webhook event type a subscriber sees; add a row to publish a kind
WEBHOOK_TYPES = {
    "failover_started": "failover.started",
    "failover_completed": "failover.completed",
    "failover_failed": "failover.failed",
    "failover_cancelled": "failover.cancelled",
    "degraded": "pool.degraded",
    "healed": "pool.healed",
    "pool_rebuilt": "pool.rebuilt",
    "standby_replaced": "standby.replaced",
    "standby_lost": "standby.lost",
    "host_failover_completed": "host_failover.completed",
    "split_brain_resolved": "split_brain.resolved",
}
EVENT_TYPES = sorted(set(WEBHOOK_TYPES.values()))

MAX_WEBHOOKS = 20  # per tenant: bounds the fan-out of one event
DELIVERIES_KEPT = 50  # per webhook, for GET .../deliveries
DELIVERY_TTL = 7 * 24 * 3600
CLAIM_TTL = 120  # longer than one attempt (its HTTP timeouts), shorter than the broker's redelivery
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"

def new_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` and base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


class TooManyWebhooks(Exception):
    """The tenant has MAX_WEBHOOKS already."""


class WebhookRecords:
    """The webhooks' half of the store (mixed into ``Store``)."""

    r: redis.Redis

    # -- subscriptions ---------------------------------------------------------

    def add_webhook(self, tenant: str, url: str, events: list[str] | None) -> dict:
        """Subscribe ``url`` to ``events`` (None: every type, present and future); the record has the secret."""
        if self.r.hlen(keys.webhooks(tenant)) >= MAX_WEBHOOKS:
            raise TooManyWebhooks(tenant)
        hook = {"id": "wh_" + uuid.uuid4().hex, "url": url, "events": events, "secret": new_secret(),
                "created_at": now_iso()}
        self.r.hset(keys.webhooks(tenant), hook["id"], json.dumps(hook))
        return hook

    def webhooks(self, tenant: str) -> list[dict]:
        hooks = [json.loads(raw) for raw in self.r.hvals(keys.webhooks(tenant))]
        return sorted(hooks, key=lambda hook: hook["created_at"])

    def get_webhook(self, tenant: str, webhook_id: str) -> dict | None:
        raw = self.r.hget(keys.webhooks(tenant), webhook_id)
        return json.loads(raw) if raw else None

    def delete_webhook(self, tenant: str, webhook_id: str) -> bool:
        """Unsubscribe; deliveries still queued for it are dropped when their turn comes."""
        with self.r.pipeline() as pipe:
            pipe.hdel(keys.webhooks(tenant), webhook_id)
            pipe.delete(keys.webhook_deliveries(webhook_id))
            removed, _ = pipe.execute()
        return bool(removed)

    # -- the outbox ------------------------------------------------------------

    def queue_webhook_deliveries(self, pipe: redis.client.Pipeline, pid: str, record: dict) -> None:
        """The event sink: a delivery per subscription of the pool's tenant that wants this event type."""
        event_type = WEBHOOK_TYPES.get(record["event"])
        if event_type is None:
            return
        tenant, machine_id = split_pool_id(pid)
        hooks = [hook for hook in self.webhooks(tenant) if hook["events"] is None or event_type in hook["events"]]
        if not hooks:
            return
        data = {k: v for k, v in record.items() if k not in ("at", "event")}
        # the exact bytes signed and sent, the same on every attempt
        payload = json.dumps({"type": event_type, "timestamp": record["at"], "machine_id": machine_id,
                              "data": data}, separators=(",", ":"))
        for hook in hooks:
            delivery_id = "msg_" + uuid.uuid4().hex  # the webhook-id header, kept across retries
            pipe.set(keys.delivery(delivery_id), json.dumps({
                "id": delivery_id, "tenant": tenant, "webhook_id": hook["id"], "type": event_type,
                "machine_id": machine_id, "payload": payload, "state": PENDING, "attempts": [],
                "created_at": record["at"]}), ex=DELIVERY_TTL)
            pipe.lpush(keys.webhook_deliveries(hook["id"]), delivery_id)
            pipe.ltrim(keys.webhook_deliveries(hook["id"]), 0, DELIVERIES_KEPT - 1)
            pipe.rpush(keys.WEBHOOK_OUTBOX, delivery_id)

    def relay_outbox(self, send, batch: int = 100) -> int:
        """Hand queued delivery ids to ``send`` (which enqueues them), oldest first; return how many.

        One relay at a time, and ids leave the outbox only after ``send`` took them: a relay that dies
        halfway sends some again, which the delivery task's claim makes harmless.
        """
        lock = self.r.lock(keys.WEBHOOK_RELAYING, timeout=30)
        if not lock.acquire(blocking=False):
            return 0
        try:
            sent = 0
            while ids := self.r.lrange(keys.WEBHOOK_OUTBOX, 0, batch - 1):
                for delivery_id in ids:
                    send(delivery_id)
                self.r.ltrim(keys.WEBHOOK_OUTBOX, len(ids), -1)
                sent += len(ids)
            return sent
        finally:
            lock.release()

    # -- deliveries ------------------------------------------------------------

    def get_delivery(self, delivery_id: str) -> dict | None:
        raw = self.r.get(keys.delivery(delivery_id))
        return json.loads(raw) if raw else None

    def deliveries(self, webhook_id: str) -> list[dict]:
        """The webhook's recent deliveries, newest first."""
        ids = self.r.lrange(keys.webhook_deliveries(webhook_id), 0, DELIVERIES_KEPT - 1)
        if not ids:
            return []
        return [json.loads(raw) for raw in self.r.mget([keys.delivery(i) for i in ids]) if raw]

    def claim_attempt(self, delivery_id: str, attempt: int) -> bool:
        """Whether this worker makes attempt number ``attempt``: a broker's second copy of it does not."""
        return bool(self.r.set(keys.delivery_claim(delivery_id, attempt), "1", nx=True, ex=CLAIM_TTL))

    def record_attempt(self, delivery_id: str, attempt: dict, state: str) -> None:
        """Add an attempt (at, status_code, error, duration_ms) and the delivery's state after it."""
        delivery = self.get_delivery(delivery_id)
        if delivery is None:
            return
        delivery["attempts"].append(attempt)
        delivery["state"] = state
        self.r.set(keys.delivery(delivery_id), json.dumps(delivery), keepttl=True)
