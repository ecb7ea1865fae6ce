"""Vast's account notifications: JSON events POSTed to the user's receivers, signed, at least once.

Each event is ``{"event", "instance_id", "machine_id", "at"}`` (plus ``end_date`` for
"rental_expiring"), sent with ``X-Vast-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>``
under the receiver's secret. As on Vast, where the webhook is set in an account's console, a receiver
registered with an account's API key hears only of that account's instances (one registered without
hears of every account's). Delivery runs in one background thread, never in a request: a
receiver gets 10 s to answer 2xx, then a couple of retries, then the event is dropped.
"""

import hashlib
import hmac
import json
import logging
import queue
import threading
import time
from collections import Counter
from urllib.parse import urlsplit

import requests

from . import accounts
from .errors import invalid_args

log = logging.getLogger(__name__)

TIMEOUT_SECONDS = 10
RETRIES = 2
RETRY_PAUSE_SECONDS = 0.2
# "rental_expiring" is sent once an end date is this close (wall-clock seconds, like end dates)
EXPIRY_WARNING_SECONDS = 86400


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Webhooks:
    def __init__(self):
        self.lock = threading.Lock()
        self.receivers: dict[str, tuple[str, str | None]] = {}  # url -> (secret, account heard of; None: every one)
        self.counts = Counter()  # delivered, failed (an event to one receiver, after its retries)
        self.outbox: queue.Queue = queue.Queue()
        self.sender = None

    def register(self, body):
        """``POST /_sim/webhooks`` {"url", "secret", "api_key"?}: one more receiver (the same url is replaced); with
        ``api_key``, of that key's account's instances only."""
        url, secret, key = body.get("url"), body.get("secret"), body.get("api_key")
        if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
            raise invalid_args("url must be an http(s) URL")
        if not isinstance(secret, str) or not secret:
            raise invalid_args("secret must be a non-empty string")
        if key is not None and (not isinstance(key, str) or not key):
            raise invalid_args("api_key must be a non-empty string")
        return self._add(url, secret, accounts.account_of(key) if key else None)

    def _add(self, url, secret, account):
        with self.lock:
            self.receivers[url] = (secret, account)
            if self.sender is None:
                self.sender = threading.Thread(target=self._send_forever, name="sim-webhooks", daemon=True)
                self.sender.start()
        return self.view()

    def view(self):
        with self.lock:  # never the secrets, nor a key: an account is named by its digest
            return {"receivers": [{"url": url, **({"account": account} if account else {})}
                                  for url, (_, account) in self.receivers.items()],
                    **{k: self.counts[k] for k in ("delivered", "failed")}}

    def export(self):
        """The receivers with their secrets, for the state file only."""
        with self.lock:
            return {url: {"secret": secret, "account": account} for url, (secret, account) in self.receivers.items()}

    def restore(self, receivers):
        for url, entry in receivers.items():
            if isinstance(entry, str):  # a state file written before receivers had accounts
                entry = {"secret": entry, "account": None}
            self._add(url, entry["secret"], entry["account"])

    def clear(self):
        with self.lock:
            self.receivers.clear()
            self.counts.clear()

    def publish(self, event, inst, at, **extra):
        """Queue an event about ``inst``; returns at once."""
        with self.lock:
            targets = {url: secret for url, (secret, account) in self.receivers.items()
                       if account is None or account == inst.account}
            if not targets:
                return
        payload = {"event": event, "instance_id": inst.id, "machine_id": inst.machine_id, "at": at, **extra}
        self.outbox.put((targets, json.dumps(payload).encode()))

    def _send_forever(self):
        while True:
            targets, body = self.outbox.get()
            for url, secret in targets.items():
                outcome = "delivered" if self._deliver(url, secret, body) else "failed"
                with self.lock:
                    self.counts[outcome] += 1

    def _deliver(self, url, secret, body):
        headers = {"Content-Type": "application/json", "X-Vast-Signature-256": signature(secret, body)}
        for attempt in range(1 + RETRIES):
            try:
                if requests.post(url, data=body, headers=headers, timeout=TIMEOUT_SECONDS).ok:
                    return True
            except requests.RequestException:
                pass
            if attempt < RETRIES:
                time.sleep(RETRY_PAUSE_SECONDS * (attempt + 1))
        log.info("webhook to %s dropped after %d attempts", url, 1 + RETRIES)
        return False
