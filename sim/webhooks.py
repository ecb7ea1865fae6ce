"""Vast's account notifications: JSON events POSTed to the user's receivers, signed, at least once.

Each event is ``{"event", "instance_id", "machine_id", "at"}`` (plus ``end_date`` for
"rental_expiring"), sent with ``X-Vast-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>``
under the receiver's secret. Delivery runs in one background thread, never in a request: a
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
        self.receivers: dict[str, str] = {}  # url -> secret
        self.counts = Counter()  # delivered, failed (an event to one receiver, after its retries)
        self.outbox: queue.Queue = queue.Queue()
        self.sender = None

    def register(self, body):
        """``POST /_sim/webhooks`` {"url", "secret"}: one more receiver (the same url is replaced)."""
        url, secret = body.get("url"), body.get("secret")
        if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
            raise invalid_args("url must be an http(s) URL")
        if not isinstance(secret, str) or not secret:
            raise invalid_args("secret must be a non-empty string")
        with self.lock:
            self.receivers[url] = secret
            if self.sender is None:
                self.sender = threading.Thread(target=self._send_forever, name="sim-webhooks", daemon=True)
                self.sender.start()
        return self.view()

    def view(self):
        with self.lock:  # never the secrets
            return {"receivers": [{"url": url} for url in self.receivers], **{k: self.counts[k] for k in
                                                                              ("delivered", "failed")}}

    def export(self):
        """The receivers with their secrets, for the state file only."""
        with self.lock:
            return dict(self.receivers)

    def restore(self, receivers):
        for url, secret in receivers.items():
            self.register({"url": url, "secret": secret})

    def clear(self):
        with self.lock:
            self.receivers.clear()
            self.counts.clear()

    def publish(self, event, inst, at, **extra):
        """Queue an event about ``inst``; returns at once."""
        with self.lock:
            if not self.receivers:
                return
            targets = dict(self.receivers)
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
