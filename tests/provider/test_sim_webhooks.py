"""The simulator's notification webhooks: signed events POSTed to a receiver, retried, never blocking."""

import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from app.processes import free_port
from sim.accounts import account_of
from tests.conftest import wait_until
from tests.provider.simkit import big_4090_host

SECRET = "whsec-test"


class Receiver:
    """An HTTP endpoint that records every POST; it answers ``status`` (500 to make deliveries fail)."""

    def __init__(self, status=200):
        self.status, self.calls = status, []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.calls.append((dict(self.headers), body))
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/vast"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self):
        return [json.loads(body) for _, body in self.calls]


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


def test_offline_events_are_signed_and_sent(sim, receiver):
    machine_id, offer_id = big_4090_host(sim)
    assert sim.ok("POST", "/_sim/webhooks", json={"url": receiver.url, "secret": SECRET})["receivers"] == [
        {"url": receiver.url}]
    a, b = sim.create(offer_id), sim.create(offer_id, target_state="stopped")
    sim.ok("POST", f"/_sim/instances/{a}/fail")
    wait_until(lambda: len(receiver.calls) == 1, timeout=5, interval=0.01, message="the instance_offline event")
    headers, body = receiver.calls[0]
    assert headers["X-Vast-Signature-256"] == "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert headers["Content-Type"] == "application/json"
    event = json.loads(body)
    assert event == {"event": "instance_offline", "instance_id": a, "machine_id": machine_id, "at": event["at"]}
    sim.ok("POST", f"/_sim/hosts/{machine_id}/fail")  # only b was still online
    sim.ok("POST", f"/_sim/hosts/{machine_id}/fail")
    wait_until(lambda: len(receiver.calls) == 2, timeout=5, interval=0.01, message="the host's event")
    assert receiver.events()[1]["instance_id"] == b and receiver.events()[1]["event"] == "instance_offline"
    wait_until(lambda: sim.ok("GET", "/_sim/webhooks")["delivered"] == 2, timeout=5, interval=0.01)
    assert len(receiver.calls) == 2


def test_a_receiver_registered_with_an_accounts_key_hears_only_of_that_accounts_instances(sim, receiver):
    """As on Vast, where the webhook is set in one account's console; one registered without a key hears of all."""
    machine_id, offer_id = big_4090_host(sim)
    everything = Receiver()
    try:
        registered = sim.ok("POST", "/_sim/webhooks", json={"url": receiver.url, "secret": SECRET,
                                                            "api_key": "other-key"})
        assert registered["receivers"] == [{"url": receiver.url, "account": account_of("other-key")}]  # no key shown
        sim.ok("POST", "/_sim/webhooks", json={"url": everything.url, "secret": SECRET})
        mine = sim.create(offer_id)
        other = sim.ok("PUT", f"/api/v0/asks/{offer_id}/", headers={"Authorization": "Bearer other-key"}, json={
            "image": "pytorch/pytorch", "disk": 20.0, "label": "t", "runtype": "ssh"})["new_contract"]
        for instance in (mine, other):
            sim.ok("POST", f"/_sim/instances/{instance}/fail")
        wait_until(lambda: len(everything.calls) == 2, timeout=5, interval=0.01, message="both accounts' events")
        wait_until(lambda: sim.ok("GET", "/_sim/webhooks")["delivered"] == 3, timeout=5, interval=0.01)
        assert [e["instance_id"] for e in receiver.events()] == [other]
        assert sorted(e["instance_id"] for e in everything.events()) == sorted([mine, other])
    finally:
        everything.server.shutdown()
        everything.server.server_close()
    assert sim.call("POST", "/_sim/webhooks", json={"url": receiver.url, "secret": SECRET, "api_key": ""}
                    ).status_code == 400


def test_rental_expiring_is_sent_once_an_end_date_is_within_a_day(sim, receiver):
    machine_id, offer_id = big_4090_host(sim)
    sim.ok("POST", "/_sim/webhooks", json={"url": receiver.url, "secret": SECRET})
    inst_id = sim.create(offer_id, target_state="stopped")
    sim.ok("POST", f"/_sim/instances/{inst_id}/end_date", json={"in_seconds": 2 * 86400})
    end = sim.ok("POST", f"/_sim/instances/{inst_id}/end_date", json={"in_seconds": 3600})["end_date"]
    wait_until(lambda: receiver.calls, timeout=5, interval=0.01, message="the rental_expiring event")
    (event,) = receiver.events()
    assert event["event"] == "rental_expiring" and event["end_date"] == end and event["instance_id"] == inst_id
    sim.ok("GET", "/api/v1/instances/")  # a later request does not send it again
    wait_until(lambda: sim.ok("GET", "/_sim/webhooks")["delivered"] == 1, timeout=5, interval=0.01)
    assert len(receiver.calls) == 1


def test_failed_deliveries_are_retried_then_dropped_without_blocking(sim):
    failing = Receiver(status=500)
    dead_url = f"http://127.0.0.1:{free_port()}/nobody"
    try:
        sim.ok("POST", "/_sim/webhooks", json={"url": failing.url, "secret": SECRET})
        sim.ok("POST", "/_sim/webhooks", json={"url": dead_url, "secret": SECRET})
        _, offer_id = big_4090_host(sim)
        inst_id = sim.create(offer_id)
        sim.ok("POST", f"/_sim/instances/{inst_id}/fail")
        sim.ok("GET", "/api/v1/instances/")
        wait_until(lambda: sim.ok("GET", "/_sim/webhooks")["failed"] == 2, timeout=10, interval=0.05,
                   message="both deliveries to be given up")
        assert len(failing.calls) == 3  # one attempt and two retries
    finally:
        failing.server.shutdown()
        failing.server.server_close()


def test_registration_is_checked_and_secrets_are_never_shown(sim, receiver):
    for body in ({}, {"url": receiver.url}, {"url": receiver.url, "secret": ""}, {"url": "ftp://x", "secret": "s"},
                 {"url": "not a url", "secret": "s"}, {"url": 5, "secret": "s"}):
        r = sim.call("POST", "/_sim/webhooks", json=body)
        assert r.status_code == 400 and r.json()["error"] == "invalid_args", body
    sim.ok("POST", "/_sim/webhooks", json={"url": receiver.url, "secret": SECRET})
    sim.ok("POST", "/_sim/webhooks", json={"url": receiver.url, "secret": "rotated"})
    shown = sim.call("GET", "/_sim/webhooks")
    assert shown.json()["receivers"] == [{"url": receiver.url}] and SECRET not in shown.text
    _, offer_id = big_4090_host(sim)
    first, second = sim.create(offer_id), sim.create(offer_id)
    sim.ok("POST", f"/_sim/instances/{first}/fail")
    wait_until(lambda: receiver.calls, timeout=5, interval=0.01, message="an event")
    headers, body = receiver.calls[0]
    assert headers["X-Vast-Signature-256"] == "sha256=" + hmac.new(b"rotated", body, hashlib.sha256).hexdigest()
    assert sim.ok("DELETE", "/_sim/webhooks")["receivers"] == []
    sim.ok("POST", f"/_sim/instances/{second}/fail")  # sent to nobody, and not kept for later
    sim.ok("POST", "/_sim/webhooks", json={"url": receiver.url, "secret": SECRET})
    third = sim.create(offer_id)
    sim.ok("POST", f"/_sim/instances/{third}/fail")
    wait_until(lambda: len(receiver.calls) == 2, timeout=5, interval=0.01, message="the next event")
    assert [e["instance_id"] for e in receiver.events()] == [first, third]
