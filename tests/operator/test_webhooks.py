"""Webhooks (issue 12): subscriptions per tenant, deliveries signed per Standard Webhooks, retried with the
same webhook-id, on their own queue; the SSRF guard. Real gunicorn, Redis, beat and a webhooks worker."""

import os

import pytest
import requests
from standardwebhooks import Webhook

from app.store.webhooks import EVENT_TYPES
from tasks import celery_app
from tasks.webhooks import post
from tests.conftest import wait_until
from tests.operator.conftest import provisioned

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
    assert [a["status_code"] for a in delivery["attempts"]] == [302, 302, 302]  # WEBHOOK_MAX_ATTEMPTS=3
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
