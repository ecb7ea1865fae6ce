"""Webhooks (issue 12): subscriptions per tenant, deliveries signed per Standard Webhooks, retried with the
same webhook-id, on their own queue; the SSRF guard. Real gunicorn, Redis, beat and a webhooks worker."""

import json
import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import pytest
import requests
from standardwebhooks import Webhook

from app.client import NOT_CONFIRMED, NOT_FOUND, OK, USAGE
from app.events import EVENT_TYPES
from app.store.webhooks import MAX_WEBHOOKS
from app.urls import DeadlineExceeded, check_destination, post_pinned
from tasks import celery_app
from tasks.webhooks import post
from tests.conftest import API_KEYS, ROOT, wait_until
from tests.operator.conftest import DELIVERY_LIMITS, provisioned

MACHINE = 123


def deliveries(web, hook, tenant="acme"):
    rv = web.api("GET", f"/api/v1/webhooks/{hook['id']}/deliveries", tenant=tenant)
    assert rv.status_code == 200, rv.text
    return rv.json()["deliveries"]


def test_a_subscription_shows_its_secret_once_and_belongs_to_its_tenant(clean_stack, web):
    rv = web.api("POST", "/api/v1/webhooks", json={"url": "https://93.184.216.34/hooks",
                                                   "events": ["failover.completed", "failover.started"]})
    assert rv.status_code == 201, rv.text
    hook = rv.json()
    assert hook["id"].startswith("wh_") and hook["secret"].startswith("whsec_")
    assert hook["events"] == ["failover.completed", "failover.started"]
    Webhook(hook["secret"])  # a secret the spec's own library takes

    listed = web.api("GET", "/api/v1/webhooks").json()
    assert listed["count"] == 1 and listed["webhooks"][0]["id"] == hook["id"]
    assert "secret" not in listed["webhooks"][0] and hook["secret"] not in str(listed)
    assert web.api("GET", f"/api/v1/webhooks/{hook['id']}/deliveries").json()["deliveries"] == []

    # another tenant neither sees it nor can touch it
    assert web.api("GET", "/api/v1/webhooks", tenant="globex").json()["count"] == 0
    for method, path in (("DELETE", ""), ("GET", "/deliveries")):
        rv = web.api(method, f"/api/v1/webhooks/{hook['id']}{path}", tenant="globex")
        assert rv.status_code == 404 and rv.json()["message"] == f"No webhook {hook['id']}"
    assert web.api("DELETE", f"/api/v1/webhooks/{hook['id']}").status_code == 204
    assert web.api("DELETE", f"/api/v1/webhooks/{hook['id']}").status_code == 404
    assert web.api("GET", "/api/v1/webhooks").json()["count"] == 0
    assert requests.get(web.url + "/api/v1/webhooks", timeout=10).status_code == 401


def test_default_is_every_event_type(clean_stack, web):
    hook = web.api("POST", "/api/v1/webhooks", json={"url": "http://93.184.216.34/"}).json()
    assert hook["events"] is None
    assert {"failover.started", "failover.completed", "failover.failed", "pool.degraded", "pool.healed",
            "standby.replaced", "host_failover.completed", "split_brain.resolved"} <= set(EVENT_TYPES)


@pytest.mark.parametrize("body, field", [
    ({}, "url"),
    ({"url": None}, "url"),
    ({"url": 5}, "url"),
    ({"url": "not a url"}, "url"),
    ({"url": "ftp://93.184.216.34/x"}, "url"),
    ({"url": "javascript:alert(1)"}, "url"),
    ({"url": "https://93.184.216.34/" + "a" * 2100}, "url"),
    ({"url": "https://93.184.216.34/", "events": []}, "events"),
    ({"url": "https://93.184.216.34/", "events": ["failover.exploded"]}, "events"),
    ({"url": "https://93.184.216.34/", "events": "failover.started"}, "events"),
    ({"url": "https://93.184.216.34/", "secret": "whsec_mine"}, "secret"),
])
def test_bad_input_is_422_naming_the_field(clean_stack, body, field):
    rv = clean_stack.api("POST", "/api/v1/webhooks", json=body)
    assert rv.status_code == 422, rv.json
    assert set(rv.json) <= {"code", "status", "message", "errors"} and field in rv.json["errors"]["json"]
    assert clean_stack.store.webhooks("acme") == []


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8000/hook", "http://localhost/hook", "http://10.1.2.3/", "https://192.168.0.10/",
    "http://169.254.169.254/latest/meta-data/", "http://[::1]/", "http://[::ffff:127.0.0.1]/", "http://0.0.0.0/",
    "http://no-such-host.invalid/"])
def test_private_addresses_are_refused_unless_allowed(clean_stack, url):
    assert "WARMPOOL_WEBHOOK_ALLOW_PRIVATE" not in os.environ  # this process (the in-process API) is not allowed
    rv = clean_stack.api("POST", "/api/v1/webhooks", json={"url": url})
    assert rv.status_code == 422, rv.json
    assert "url" in rv.json["errors"]["json"]
    assert clean_stack.store.webhooks("acme") == []


def test_a_delivery_checks_the_address_again_when_it_is_sent(receiver):
    """A name may resolve elsewhere after it was registered: each attempt checks it (this process is not allowed)."""
    outcome = post(receiver.url + "/rebound", ["whsec_" + "A" * 44], "msg_x", "{}")
    assert outcome["status_code"] is None and "loopback, private or link-local" in outcome["error"]
    assert receiver.at("/rebound") == []


def test_deliveries_run_on_their_own_queue():
    router = celery_app.amqp.router
    for name in ("warmpool.webhooks.deliver", "warmpool.webhooks.relay"):
        assert router.route({}, name)["queue"].name == "webhooks"


@pytest.mark.timeout(120)
def test_a_failover_reaches_its_tenant_signed_and_no_one_else(clean_stack, web, webhooks_worker, receiver):
    stack = clean_stack
    everything = receiver.subscribe(web, "/acme")
    receiver.subscribe(web, "/acme-healed", events=["pool.healed"])
    receiver.subscribe(web, "/globex", tenant="globex")

    pool = provisioned(web, stack, MACHINE, failovers=1)
    started, completed = (wait_until(lambda t=t: [r for r in receiver.at("/acme") if
                                                  r.get("payload", {}).get("type") == t],
                                     timeout=30, message=f"a {t} delivery")[0]
                          for t in ("failover.started", "failover.completed"))
    for request in (started, completed):
        assert "error" not in request, request["error"]  # verified with the secret, by standardwebhooks
        assert request["headers"]["webhook-id"].startswith("msg_")
        assert request["headers"]["content-type"] == "application/json"
        assert set(request["payload"]) == {"type", "timestamp", "machine_id", "data"}
        assert request["payload"]["machine_id"] == MACHINE
    assert started["headers"]["webhook-id"] != completed["headers"]["webhook-id"]
    data = completed["payload"]["data"]
    assert data["trigger"] == "manual" and data["new_primary_gpu_id"] == pool["primary_gpu_id"]
    assert data["recovery_time_seconds"] > 0 and {"fence_old_primary", "start_standby", "promote"} <= set(data["phases"])

    # the deliveries route tells the same story
    made = wait_until(lambda: [d for d in deliveries(web, everything) if d["state"] == "delivered"]
                      if len(deliveries(web, everything)) >= 2 else None, message="deliveries marked delivered")
    ids = {d["id"] for d in made}
    assert {started["headers"]["webhook-id"], completed["headers"]["webhook-id"]} <= ids
    assert all(d["attempts"][0]["status_code"] == 204 and d["attempts"][0]["error"] is None for d in made)

    # a filtered subscription gets only its type; globex gets only its own pool's events
    stack.store.event(f"globex:{MACHINE}", "healed", "the host has a free GPU again")
    stack.store.event(f"acme:{MACHINE}", "healed", "the host has a free GPU again")
    healed = wait_until(lambda: receiver.at("/globex") and receiver.at("/acme-healed"), message="healed deliveries")
    assert [r["payload"]["type"] for r in receiver.at("/acme-healed")] == ["pool.healed"]
    assert [r["payload"]["type"] for r in receiver.at("/globex")] == ["pool.healed"]
    assert "error" not in healed[0] and "error" not in receiver.at("/globex")[0]
    assert all(r["payload"]["type"] != "failover.started" for r in receiver.at("/globex"))


@pytest.mark.timeout(60)
def test_a_failed_attempt_is_retried_with_the_same_webhook_id(clean_stack, web, webhooks_worker, receiver):
    receiver.answers["/flaky"] = [500, 503, 204]
    hook = receiver.subscribe(web, "/flaky")
    clean_stack.store.event("acme:7", "degraded", "no free GPU on the host", operation="failover")
    wait_until(lambda: len(receiver.at("/flaky")) >= 3, timeout=30, message="three attempts")
    attempts = receiver.at("/flaky")
    assert len({r["headers"]["webhook-id"] for r in attempts}) == 1
    assert all("error" not in r for r in attempts)  # each attempt signed afresh, and valid
    assert attempts[0]["payload"] == {"type": "pool.degraded", "timestamp": attempts[0]["payload"]["timestamp"],
                                      "machine_id": 7, "data": {"message": "no free GPU on the host",
                                                                "operation": "failover"}}
    delivery = wait_until(lambda: (d := deliveries(web, hook)) and d[0]["state"] == "delivered" and d[0],
                          message="the delivery marked delivered")
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 503, 204]
    assert [a["error"] for a in delivery["attempts"]] == ["HTTP 500", "HTTP 503", None]
    assert delivery["id"] == attempts[0]["headers"]["webhook-id"]


@pytest.mark.timeout(60)
def test_redirects_are_not_followed_and_retries_end(clean_stack, web, webhooks_worker, receiver):
    receiver.answers["/moved"] = [302]
    hook = receiver.subscribe(web, "/moved")
    clean_stack.store.event("acme:8", "failover_started", "failover of primary 1 (manual)", trigger="manual")
    delivery = wait_until(lambda: (d := deliveries(web, hook)) and d[0]["state"] == "failed" and d[0], timeout=30,
                          message="the delivery given up")
    assert [a["status_code"] for a in delivery["attempts"]] == [302, 302, 302]  # WEBHOOK_RETRY_SCHEDULE has 3 steps
    assert len(receiver.at("/moved")) == 3 and receiver.at("/redirected") == []


def test_events_without_a_webhook_type_are_not_sent(clean_stack, web, webhooks_worker, receiver):
    hook = receiver.subscribe(web, "/all")
    clean_stack.store.event("acme:9", "volume_created", "volume 5 on host 6")
    clean_stack.store.event("acme:9", "healed", "the host has a free GPU again")
    wait_until(lambda: receiver.at("/all"), message="the healed delivery")
    assert [r["payload"]["type"] for r in receiver.at("/all")] == ["pool.healed"]
    assert len(deliveries(web, hook)) == 1


def test_the_spec_documents_the_webhook_routes(clean_stack):
    spec = clean_stack.client.get("/api/v1/openapi.json").json
    assert set(spec["paths"]["/api/v1/webhooks"]) == {"get", "post"}
    created = spec["paths"]["/api/v1/webhooks"]["post"]["responses"]
    assert {"201", "401", "409", "422"} <= set(created)
    schema = spec["components"]["schemas"]["WebhookCreated"]["properties"]
    assert {"id", "url", "events", "secret", "created_at"} <= set(schema)
    assert "secret" not in spec["components"]["schemas"]["Webhook"]["properties"]
    assert {"204", "404"} <= set(spec["paths"]["/api/v1/webhooks/{webhook_id}"]["delete"]["responses"])
    assert "200" in spec["paths"]["/api/v1/webhooks/{webhook_id}/deliveries"]["get"]["responses"]
    assert {"200", "404", "422"} <= set(spec["paths"]["/api/v1/webhooks/{webhook_id}"]["patch"]["responses"])
    assert {"202", "404", "409"} <= set(spec["paths"]["/api/v1/webhooks/{webhook_id}/test"]["post"]["responses"])
    resend = "/api/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/resend"
    assert {"202", "404", "409"} <= set(spec["paths"][resend]["post"]["responses"])
    assert "secret" in spec["components"]["schemas"]["Secret"]["properties"]
    assert "200" in spec["paths"]["/api/v1/webhooks/{webhook_id}/rotate-secret"]["post"]["responses"]


class Rebinder:
    """A resolver the test controls: ``rebind.test`` resolves to each of ``answers`` in turn (then the
    last again); every other name and literal address goes to the system's resolver."""

    NAME = "rebind.test"

    def __init__(self, monkeypatch, *answers: str):
        self.answers, self.lookups = list(answers), 0
        real = socket.getaddrinfo

        def getaddrinfo(host, port, *args, **kwargs):
            if host != self.NAME:
                return real(host, port, *args, **kwargs)
            self.lookups += 1
            address = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
            return real(address, port, *args, **kwargs)
        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def test_dns_rebinding_cannot_move_a_delivery_past_the_check(monkeypatch, receiver):
    """The name answers a public address to the check, then 127.0.0.1: the sender connects to the
    address it checked, never asking again, so the request never reaches the loopback receiver."""
    port = receiver.url.rsplit(":", 1)[1]
    rebinder = Rebinder(monkeypatch, "93.184.216.34", "127.0.0.1")
    destination = check_destination(f"http://{Rebinder.NAME}:{port}/rebound", allow_private=False, within=5)
    assert destination.address == "93.184.216.34"
    with pytest.raises((OSError, DeadlineExceeded)):  # no route to the public address here, or no answer in time
        post_pinned(destination, b"{}", {}, deadline=1)
    assert rebinder.lookups == 1 and receiver.at("/rebound") == []


def test_the_pinned_connection_keeps_the_name_in_the_host_header(monkeypatch, receiver):
    """The name first resolves to the receiver (private addresses allowed), then elsewhere: the request
    reaches the address checked, and says the name in Host."""
    port = receiver.url.rsplit(":", 1)[1]
    rebinder = Rebinder(monkeypatch, "127.0.0.1", "127.0.0.2")
    destination = check_destination(f"http://{Rebinder.NAME}:{port}/pinned?token=t", allow_private=True, within=5)
    answer = post_pinned(destination, b"{}", {"Content-Type": "application/json"}, deadline=10)
    assert answer.status == 204 and rebinder.lookups == 1
    [request] = receiver.at("/pinned?token=t")
    assert request["headers"]["host"] == f"{Rebinder.NAME}:{port}"


def test_an_attempt_has_one_deadline_for_the_whole_exchange(trickler):
    """A receiver that answers a status line, then a byte every half second, never finishing its headers:
    each read returns in time, but the sender hangs up at the deadline, after a few bytes at most."""
    destination = check_destination(trickler.url + "/slow", allow_private=True, within=5)
    with pytest.raises(DeadlineExceeded):
        post_pinned(destination, b"{}", {}, deadline=1.5)
    wait_until(lambda: trickler.open == 0, message="the trickling connection closed by the sender")
    assert trickler.requests == 1 and 1 <= trickler.most_trickled <= 5  # 1.5 s at a byte every 0.5 s


def test_the_webhook_cap_holds_under_parallel_posts(clean_stack, web, receiver):
    def subscribe(i):
        return web.api("POST", "/api/v1/webhooks", json={"url": f"{receiver.url}/{i}"}).status_code

    with ThreadPoolExecutor(12) as pool:
        codes = list(pool.map(subscribe, range(MAX_WEBHOOKS + 8)))
    assert codes.count(201) == MAX_WEBHOOKS and codes.count(409) == 8
    assert len(clean_stack.store.webhooks("acme")) == MAX_WEBHOOKS


@pytest.mark.timeout(90)
def test_one_tenants_slow_receivers_hold_no_other_tenants_deliveries(clean_stack, web, webhooks_worker, receiver,
                                                                       trickler):
    """acme's four receivers trickle bytes; globex's answers at once. acme never has more than its cap of
    attempts in flight, globex's delivery goes out while they trickle, and acme's end at their deadline
    as failures. The URLs' tokens appear in no log."""
    cap, deadline = int(DELIVERY_LIMITS["WEBHOOK_CONCURRENCY_PER_TENANT"]), DELIVERY_LIMITS["WEBHOOK_TIMEOUT"]
    slow = [web.api("POST", "/api/v1/webhooks", json={"url": f"{trickler.url}/slow{i}?token=sekrit-{i}"}).json()
            for i in range(4)]
    receiver.subscribe(web, "/globex", tenant="globex")
    clean_stack.store.event("acme:1", "healed", "the host has a free GPU again")
    wait_until(lambda: trickler.open >= cap, timeout=20, message="acme's attempts trickling")
    clean_stack.store.event("globex:1", "healed", "the host has a free GPU again")
    wait_until(lambda: receiver.at("/globex"), timeout=20, message="globex's delivery")
    assert [deliveries(web, hook)[0]["attempts"] for hook in slow] == [[]] * 4, "an acme attempt ended first"

    ended = wait_until(lambda: [a for hook in slow for a in deliveries(web, hook)[0]["attempts"]] or None,
                       timeout=30, message="acme's first attempts to end")
    assert all(a["status_code"] is None and a["error"] == f"no complete answer within {deadline} s" for a in ended)
    assert trickler.most_open == cap
    for hook in slow:
        assert deliveries(web, hook)[0]["state"] != "delivered"
        web.api("DELETE", f"/api/v1/webhooks/{hook['id']}")
    scrape = requests.get(web.url + "/metrics", timeout=10).text
    assert 'warmpool_webhook_deliveries_total{result="delivered"}' in scrape
    for log in (clean_stack.logs / "webhooks-worker.log", web.log):
        assert "sekrit" not in log.read_text()


@pytest.mark.timeout(60)
def test_a_test_event_a_rotated_secret_a_resend_and_a_patch(clean_stack, web, webhooks_worker, receiver):
    hook = receiver.subscribe(web, "/ep")
    path = f"/api/v1/webhooks/{hook['id']}"
    rv = web.api("POST", path + "/rotate-secret")
    assert rv.status_code == 200 and rv.json()["id"] == hook["id"]
    old, new = hook["secret"], rv.json()["secret"]
    assert new.startswith("whsec_") and new != old
    assert web.api("POST", path + "/rotate-secret", tenant="globex").status_code == 404

    rv = web.api("POST", path + "/test")
    assert rv.status_code == 202 and rv.json()["type"] == "webhook.test", rv.text
    [request] = wait_until(lambda: receiver.at("/ep"), message="the test event")
    assert "error" not in request  # verified with the old secret by the receiver
    payload = Webhook(new).verify(request["body"], request["headers"])
    assert payload == Webhook(old).verify(request["body"], request["headers"])
    assert payload["type"] == "webhook.test" and payload["machine_id"] is None
    assert len(request["headers"]["webhook-signature"].split()) == 2

    msg = rv.json()["id"]
    wait_until(lambda: deliveries(web, hook)[0]["state"] == "delivered", message="the test delivered")
    assert web.api("POST", f"{path}/deliveries/{msg}/resend", tenant="globex").status_code == 404
    assert web.api("POST", f"{path}/deliveries/msg_{'0' * 32}/resend").status_code == 404
    assert web.api("POST", f"{path}/deliveries/{msg}/resend").status_code == 202
    again = wait_until(lambda: receiver.at("/ep")[1:], message="the resent delivery")[0]
    assert again["headers"]["webhook-id"] == msg and "error" not in again
    delivery = wait_until(lambda: (d := deliveries(web, hook)[0])["state"] == "delivered" and
                          len(d["attempts"]) == 2 and d, message="the resend recorded")
    assert [a["attempt"] for a in delivery["attempts"]] == [1, 2]

    assert web.api("PATCH", path, json={"url": "ftp://example.com/"}).status_code == 422
    assert web.api("PATCH", path, json={"enabled": "maybe"}).status_code == 422
    assert web.api("PATCH", path, json={"enabled": False}, tenant="globex").status_code == 404
    rv = web.api("PATCH", path, json={"events": ["pool.healed"], "url": receiver.url + "/moved-here"})
    assert rv.status_code == 200 and rv.json()["events"] == ["pool.healed"] and rv.json()["enabled"] is True
    receiver.secrets["/moved-here"] = new
    clean_stack.store.event("acme:3", "degraded", "no free GPU on the host")
    clean_stack.store.event("acme:3", "healed", "the host has a free GPU again")
    [moved] = wait_until(lambda: receiver.at("/moved-here"), message="a delivery to the new URL")
    assert moved["payload"]["type"] == "pool.healed" and "error" not in moved
    rv = web.api("PATCH", path, json={"enabled": False})
    assert rv.status_code == 200 and rv.json()["enabled"] is False
    assert web.api("POST", path + "/test").status_code == 409


@pytest.mark.timeout(60)
def test_a_410_disables_the_webhook_and_retry_after_is_honoured(clean_stack, web, webhooks_worker, receiver):
    receiver.answers["/gone"] = [410]
    receiver.answers["/later"] = [(503, {"Retry-After": "120"})]
    gone = receiver.subscribe(web, "/gone")
    later = receiver.subscribe(web, "/later", events=["pool.healed"])
    clean_stack.store.event("acme:5", "healed", "the host has a free GPU again")

    wait_until(lambda: deliveries(web, gone)[0]["state"] == "failed", message="the 410 recorded")
    hook = wait_until(lambda: (h := web.api("GET", "/api/v1/webhooks").json()["webhooks"][0]) and
                      not h["enabled"] and h, message="the webhook disabled")
    assert hook["id"] == gone["id"] and hook["disabled_reason"] == "the receiver answered 410 Gone"
    assert any(e["event"] == "webhook_disabled" and e["webhook_id"] == gone["id"]
               for e in clean_stack.store.events("acme:5"))
    assert len(receiver.at("/gone")) == 1

    delivery = wait_until(lambda: (d := deliveries(web, later)[0])["attempts"] and d, message="the 503")
    [attempt] = delivery["attempts"]
    assert delivery["state"] == "pending" and attempt["retry_after"] == 120
    waited = datetime.fromisoformat(delivery["next_attempt_at"]) - datetime.fromisoformat(attempt["at"])
    assert waited.total_seconds() >= 119  # not the schedule's 1 s
    assert web.api("PATCH", f"/api/v1/webhooks/{gone['id']}", json={"enabled": True}).json()["enabled"] is True


@pytest.mark.timeout(90)
def test_the_webhooks_commands(clean_stack, web, webhooks_worker, receiver):
    """warmpool webhooks add, list, test, deliveries, resend, rotate, rm: each a process (``python -m app.cli``, as
    an operator runs it, stdin no terminal) against the API under gunicorn."""
    environment = {**os.environ, "WARMPOOL_URL": web.url, "WARMPOOL_API_KEY": API_KEYS["acme"]}
    environment.pop("WARMPOOL_PROFILE", None)

    def warmpool(*args: str, code: int = OK) -> str:
        result = subprocess.run([sys.executable, "-m", "app.cli", "webhooks", *args], cwd=ROOT, env=environment,
                                capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert result.returncode == code, result.stdout + result.stderr
        return result.stdout + result.stderr

    added = json.loads(warmpool("add", receiver.url + "/cli?token=sekrit", "--event", "pool.healed", "--json"))
    receiver.secrets["/cli?token=sekrit"] = added["secret"]
    hook_id = added["id"]
    listed = warmpool("list")
    assert hook_id in listed and "pool.healed" in listed and "sekrit" not in listed and "/cli?…" in listed
    assert "webhook.test" not in warmpool("add", "ftp://example.com/", code=USAGE)

    assert "queued" in warmpool("test", hook_id)
    [request] = wait_until(lambda: receiver.at("/cli?token=sekrit"), message="the test event")
    msg = request["headers"]["webhook-id"]
    wait_until(lambda: "delivered" in warmpool("deliveries", hook_id), message="the delivery listed as delivered")
    assert msg in warmpool("deliveries", hook_id)
    assert "queued again" in warmpool("resend", hook_id, msg)
    wait_until(lambda: len(receiver.at("/cli?token=sekrit")) == 2, message="the resent delivery")
    assert warmpool("resend", hook_id, "msg_" + "0" * 32, code=NOT_FOUND)

    rotated = warmpool("rotate", hook_id)
    secret = rotated.split()[1]
    assert secret.startswith("whsec_") and secret != added["secret"]
    # rm asks as cleanup does: with no terminal to ask on, it deletes nothing without --yes
    assert "pass --yes" in warmpool("rm", hook_id, code=NOT_CONFIRMED) and hook_id in warmpool("list")
    assert "deleted" in warmpool("rm", hook_id, "--yes")
    warmpool("rm", hook_id, "-y", code=NOT_FOUND)
    assert "0 webhooks" in warmpool("list")
