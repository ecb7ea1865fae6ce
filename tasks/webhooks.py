"""Webhook deliveries, signed as the Standard Webhooks spec says, on their own ``webhooks`` queue.

Beat runs ``relay`` every second: it hands each delivery that is due (app/store/webhooks.py keeps
them in Redis, written in the same transaction as their event) to a ``deliver`` task. ``deliver``
makes one attempt. The first is due ``WEBHOOK_RETRY_SCHEDULE``'s first step after the event (by default
at once). A 2xx answer delivers it; anything else (another status, a refused connection, the deadline)
schedules the next attempt by the schedule's next step - by default the spec's example: immediately,
5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h - or later if the receiver's
``Retry-After`` asks; after the last, the delivery has failed. A 410 Gone disables the webhook,
with a ``webhook_disabled`` event. Every attempt keeps the delivery's ``webhook-id`` and is signed
afresh (the timestamp is the attempt's), with both secrets for a day after a rotation.

No tenant can hold the delivery threads: an attempt's whole exchange has a hard deadline
(``WEBHOOK_TIMEOUT``, app/urls.py), and at most ``WEBHOOK_CONCURRENCY_PER_TENANT`` of a tenant's
attempts are in flight; past that an attempt waits a second in Redis, not in a thread, and the relay
sends no message for it. At most ``WEBHOOK_PENDING_PER_TENANT`` deliveries of a tenant are pending
before a test or a resend is refused (429).

The destination is checked on every attempt, not only when it was registered, and the connection
goes to the address checked (app/urls.py): http(s) only, no loopback, private or link-local address
unless ``WARMPOOL_WEBHOOK_ALLOW_PRIVATE=1``, no redirects, no proxy from the environment.
"""

import email.utils
import http.client
import logging
import random
import re
import time
from datetime import datetime, timezone

from celery import shared_task
from standardwebhooks import Webhook

from app import runtime
from app.pools import now_iso, pool_id
from app.settings import WEBHOOK_RETRY_AFTER_MAX, WEBHOOK_RETRY_JITTER
from app.store.webhooks import DELIVERED, FAILED, PENDING, attempts_made, signing_secrets
from app.urls import DeadlineExceeded, UnsafeDestination, check_destination, post_pinned

log = logging.getLogger(__name__)

DEFERRED_RETRY_SECONDS = 1.0  # an attempt over its tenant's in-flight cap waits this long
GONE = 410


def post(url: str, secrets: list[str], delivery_id: str, payload: str) -> dict:
    """One signed attempt; what happened: at, status_code (None without an answer), error, duration_ms,
    retry_after (seconds the receiver asked us to wait, or None)."""
    cfg = runtime.settings()
    at, started = now_iso(), time.monotonic()
    deadline = started + cfg.webhook_timeout  # one for the whole attempt, the DNS lookup included
    status_code = error = retry_after = None
    try:
        destination = check_destination(url, cfg.webhook_allow_private, within=cfg.webhook_timeout)
        sent_at = datetime.now(timezone.utc)
        headers = {"webhook-id": delivery_id, "webhook-timestamp": str(int(sent_at.timestamp())),
                   "webhook-signature": " ".join(Webhook(secret).sign(delivery_id, sent_at, payload)
                                                 for secret in secrets),
                   "Content-Type": "application/json", "User-Agent": "warmpool-webhooks"}
        answer = post_pinned(destination, payload.encode(), headers, max(0.0, deadline - time.monotonic()))
        status_code = answer.status
        if not 200 <= status_code < 300:
            error = f"HTTP {status_code}"
            retry_after = parse_retry_after(answer.headers.get("retry-after"))
    except UnsafeDestination as exc:
        error = str(exc)
    except DeadlineExceeded:  # in the lookup or the exchange: the attempt's one deadline passed
        error = f"no complete answer within {cfg.webhook_timeout:g} s"
    except (OSError, http.client.HTTPException) as exc:
        error = type(exc).__name__  # its text may name the address
    except Exception as exc:  # anything else is a failed attempt too, never a delivery stuck on its claim
        log.warning("webhook attempt of %s failed unexpectedly: %s", delivery_id, type(exc).__name__)
        error = type(exc).__name__
    return {"at": at, "status_code": status_code, "error": error, "retry_after": retry_after,
            "duration_ms": round((time.monotonic() - started) * 1000, 1)}


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    if re.fullmatch(r"[0-9]+", value.strip(), re.ASCII):  # not isdigit(): "²" is a digit, not a number
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def next_attempt_at(attempt: int, retry_after: float | None, now: float) -> float | None:
    """When attempt ``attempt + 1`` is due (epoch s), or None when ``attempt`` was the schedule's last.

    The schedule's delay, jittered, or the receiver's Retry-After if that is longer, up to
    WEBHOOK_RETRY_AFTER_MAX, so a receiver cannot push its deliveries past their lifetime (the settings refuse
    a schedule whose worst case, ``webhook_retry_span``, would). The first step, the wait before the
    first attempt, is the store's (``first_attempt_delay``): it counts from the event.
    """
    schedule = runtime.settings().webhook_retry_schedule
    if attempt >= len(schedule):
        return None
    delay = schedule[attempt] * (1 + random.uniform(0, WEBHOOK_RETRY_JITTER))
    if retry_after is not None:
        delay = max(delay, min(retry_after, WEBHOOK_RETRY_AFTER_MAX))
    return now + delay


def claim_seconds() -> float:
    """How long an attempt's claim lasts: past the broker's visibility timeout, when it hands the message out again."""
    cfg = runtime.settings()
    return cfg.visibility_timeout + cfg.webhook_timeout


@shared_task(name="warmpool.webhooks.relay")
def relay() -> int:
    """Beat, every second: enqueue an attempt of each delivery that is due."""
    return runtime.store().relay_outbox(lambda delivery_id, attempt: deliver.delay(delivery_id, attempt),
                                        runtime.settings().webhook_concurrency_per_tenant)


@shared_task(name="warmpool.webhooks.deliver", acks_late=True)
def deliver(delivery_id: str, attempt: int) -> str:
    """Make attempt number ``attempt`` of a delivery, and schedule the next if it failed."""
    s, cfg = runtime.store(), runtime.settings()
    delivery = s.get_delivery(delivery_id)
    # a delivery done or expired, or this attempt already made (a broker's second copy of the message)
    if delivery is None or delivery["state"] != PENDING or attempts_made(delivery) + 1 != attempt:
        return "skipped"
    tenant = delivery["tenant"]
    hook = s.get_webhook(tenant, delivery["webhook_id"])
    if hook is None or not hook["enabled"]:
        s.drop_pending(tenant, delivery_id)  # never attempted again: it no longer holds the tenant's cap
        return "unsubscribed"
    if not s.claim_attempt(delivery_id, attempt, claim_seconds()):
        return "skipped"  # another copy of this message is making it
    if not s.take_delivery_slot(tenant, delivery_id, cfg.webhook_concurrency_per_tenant, cfg.webhook_timeout + 5):
        s.release_claim(delivery_id, attempt, DEFERRED_RETRY_SECONDS)
        return "deferred"
    try:
        outcome = post(hook["url"], signing_secrets(hook, time.time()), delivery_id, delivery["payload"])
    finally:
        s.give_back_delivery_slot(tenant, delivery_id)
    outcome = {"attempt": attempt, **outcome}
    if outcome["error"] is None:
        s.record_attempt(delivery_id, outcome, DELIVERED, "delivered")
        return DELIVERED
    if outcome["status_code"] == GONE:
        s.record_attempt(delivery_id, outcome, FAILED, "gone")
        disable_gone_webhook(tenant, hook["id"], delivery["machine_id"])
        return "gone"
    next_at = next_attempt_at(attempt, outcome["retry_after"], time.time())
    if next_at is None:
        s.record_attempt(delivery_id, outcome, FAILED, "failed")
        log.warning("webhook delivery %s given up after %d attempts: %s", delivery_id, attempt, outcome["error"])
        return FAILED
    s.record_attempt(delivery_id, outcome, PENDING, "retrying", next_at)
    return "retrying"


def disable_gone_webhook(tenant: str, webhook_id: str, machine_id: int | None) -> None:
    """A receiver that answered 410 Gone wants no more: the webhook is disabled until PATCHed back on, with a
    ``webhook_disabled`` event: on the pool whose event the delivery carried, or, for a delivery of no pool
    (``webhook.test``), the tenant's (``Store.tenant_event``). Either way the tenant's other webhooks that
    want ``webhook.disabled`` are told, once: a webhook disabled already (by another 410 in flight beside this
    one, or by its tenant) is not told of again."""
    reason = "the receiver answered 410 Gone"
    s = runtime.store()
    enabled_before: list[bool] = []

    def disabled(hook: dict) -> dict:
        enabled_before[:] = [hook["enabled"]]  # the last run of the transaction's is the one that wrote
        return {**hook, "enabled": False, "disabled_reason": reason}

    s.update_webhook(tenant, webhook_id, disabled)
    if enabled_before != [True]:
        return
    log.warning("webhook %s of tenant %s disabled: %s", webhook_id, tenant, reason)
    message = f"webhook {webhook_id} disabled: {reason}"
    if machine_id is None:
        s.tenant_event(tenant, "webhook_disabled", message, webhook_id=webhook_id)
    else:
        s.event(pool_id(tenant, machine_id), "webhook_disabled", message, webhook_id=webhook_id)
