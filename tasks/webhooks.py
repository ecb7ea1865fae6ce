"""Webhook deliveries, signed as the Standard Webhooks spec says, on their own ``webhooks`` queue.

Beat runs ``relay`` every second: it moves delivery ids from the outbox (written in
the same transaction as their event, app/store/webhooks.py) into ``deliver`` tasks.
The sink itself cannot enqueue: it runs before its transaction commits, in whatever
process recorded the event. ``deliver`` makes one attempt and, on a non-2xx answer,
a timeout or a refused connection, retries with exponential backoff and jitter, at
most ``WEBHOOK_MAX_ATTEMPTS`` attempts in all; every attempt keeps the delivery's
``webhook-id`` and is signed afresh (the timestamp is the attempt's).

The destination is checked on every attempt, not only when it was registered, as
its name may resolve elsewhere by then: http(s) only, no loopback, private or
link-local address unless ``WARMPOOL_WEBHOOK_ALLOW_PRIVATE=1``, no redirects, no
proxy from the environment.
"""

import ipaddress
import logging
import socket
import time
from datetime import datetime, timezone
from urllib.parse import urlsplit

import requests
from celery import shared_task
from celery.utils.time import get_exponential_backoff_interval
from standardwebhooks import Webhook

from app.pools import now_iso
from app.runtime import settings, store
from app.store.webhooks import DELIVERED, FAILED, PENDING

log = logging.getLogger(__name__)

ALLOW_PRIVATE = "WARMPOOL_WEBHOOK_ALLOW_PRIVATE"
# a retry waits WEBHOOK_RETRY_BACKOFF seconds, each next one twice as long up to this, jittered:
# with the defaults, the last of 8 attempts is at most about 11 minutes after the first
RETRY_BACKOFF_MAX = 600
TIMEOUTS = (5, 10)  # connect, read (s)


class UnsafeDestination(ValueError):
    """A webhook URL warmpool will not call."""


class DeliveryFailed(Exception):
    """An attempt got no 2xx answer: Celery retries it with backoff."""


def check_destination(url: str) -> None:
    """Raise UnsafeDestination unless ``url`` is http(s) to public addresses only (or private ones are allowed)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeDestination("Not an http(s) URL with a host")
    if settings().webhook_allow_private:
        return
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = socket.getaddrinfo(parts.hostname, port, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError, ValueError):
        raise UnsafeDestination(f"Cannot resolve host {parts.hostname}") from None
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(sockaddr[0].split("%")[0])
        address = getattr(address, "ipv4_mapped", None) or address
        if not address.is_global:
            raise UnsafeDestination(f"Host {parts.hostname} resolves to a loopback, private or link-local "
                                    f"address; set {ALLOW_PRIVATE}=1 to allow that")


def post(url: str, secret: str, delivery_id: str, payload: str) -> dict:
    """One signed attempt; what happened: at, status_code (None without an answer), error, duration_ms."""
    at, started = now_iso(), time.monotonic()
    status_code = error = None
    try:
        check_destination(url)
        sent_at = datetime.now(timezone.utc)
        headers = {"webhook-id": delivery_id, "webhook-timestamp": str(int(sent_at.timestamp())),
                   "webhook-signature": Webhook(secret).sign(delivery_id, sent_at, payload),
                   "Content-Type": "application/json", "User-Agent": "warmpool-webhooks"}
        with requests.Session() as session:
            session.trust_env = False  # a proxy from the environment would pass the address check by
            with session.post(url, data=payload.encode(), headers=headers, timeout=TIMEOUTS,
                              allow_redirects=False, stream=True) as response:
                status_code = response.status_code
        if not 200 <= status_code < 300:
            error = f"HTTP {status_code}"
    except UnsafeDestination as exc:
        error = str(exc)
    except requests.RequestException as exc:
        error = type(exc).__name__  # its text names the URL, which may carry a token
    return {"at": at, "status_code": status_code, "error": error,
            "duration_ms": round((time.monotonic() - started) * 1000, 1)}


@shared_task(name="warmpool.webhooks.relay")
def relay() -> int:
    """Beat, every second: enqueue a delivery for each id in the outbox."""
    return store().relay_outbox(deliver.delay)


@shared_task(bind=True, name="warmpool.webhooks.deliver", acks_late=True)
def deliver(self, delivery_id: str) -> str:
    """Make one attempt of a delivery; on a failure, Celery retries it later with exponential backoff.

    The retries are Celery's ``retry`` with its own backoff function, not ``autoretry_for``: that one fixes
    its options when the module is imported, and the settings are read when a delivery runs."""
    s, cfg = store(), settings()
    attempt = self.request.retries + 1
    delivery = s.get_delivery(delivery_id)
    # a delivery done, expired, or already being attempted by a broker's second copy of this message
    if delivery is None or delivery["state"] != PENDING or not s.claim_attempt(delivery_id, attempt):
        return "skipped"
    hook = s.get_webhook(delivery["tenant"], delivery["webhook_id"])
    if hook is None:
        return "unsubscribed"
    outcome = {"attempt": attempt, **post(hook["url"], hook["secret"], delivery_id, delivery["payload"])}
    if outcome["error"] is None:
        state = DELIVERED
    else:
        state = FAILED if attempt >= cfg.webhook_max_attempts else PENDING
    s.record_attempt(delivery_id, outcome, state)
    if state == PENDING:
        wait = get_exponential_backoff_interval(cfg.webhook_retry_backoff, self.request.retries, RETRY_BACKOFF_MAX,
                                                full_jitter=True)
        raise self.retry(exc=DeliveryFailed(f"{delivery_id} attempt {attempt}: {outcome['error']}"), countdown=wait,
                         max_retries=cfg.webhook_max_attempts - 1)
    if state == FAILED:
        log.warning("webhook delivery %s given up after %d attempts: %s", delivery_id, attempt, outcome["error"])
    return state
