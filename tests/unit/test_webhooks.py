"""Webhook deliveries' guards, on the fakes: tenants' webhooks apart, the in-flight cap, claims, the schedule."""

import json
import threading
import time

import pytest

from app import runtime, urls
from app.processes import wait_until
from app.settings import (WEBHOOK_DELIVERY_LIFETIME, WEBHOOK_RETRY_AFTER_MAX, WEBHOOK_RETRY_SCHEDULE, Settings,
                          webhook_retry_span)
from app.store import keys
from app.store.webhooks import ATTEMPTS_KEPT, DELIVERED, FAILED, PENDING, PREVIOUS_SECRET_SECONDS, signing_secrets
from tasks.webhooks import (claim_seconds, deliver, disable_gone_webhook, next_attempt_at,
                           parse_retry_after)

BUILD_STORE = runtime.store.__wrapped__  # the store as a process makes it, before the fakes replace runtime.store


def queued(env, tenant: str = "acme", url: str = "https://93.184.216.34/hook") -> tuple[dict, dict]:
    """A webhook of ``tenant`` and one delivery of an event to it."""
    hook = env.store.add_webhook(tenant, url, None)
    env.store.event(f"{tenant}:1", "healed", "the host has a free GPU again")
    [delivery] = env.store.deliveries(hook["id"])
    return hook, delivery


def test_a_delete_of_another_tenants_webhook_touches_nothing(env):
    hook, delivery = queued(env)
    rv = env.api("DELETE", f"/api/v1/webhooks/{hook['id']}", tenant="globex")
    assert rv.status_code == 404
    assert env.store.get_webhook("acme", hook["id"]) is not None
    assert [d["id"] for d in env.store.deliveries(hook["id"])] == [delivery["id"]]
    assert env.api("DELETE", f"/api/v1/webhooks/{hook['id']}").status_code == 204
    assert env.store.deliveries(hook["id"]) == [] and env.store.webhooks("acme") == []


def test_attempts_in_flight_are_capped_per_tenant(env):
    s = env.store
    assert s.take_delivery_slot("acme", "msg_1", 2, 30) and s.take_delivery_slot("acme", "msg_2", 2, 30)
    assert not s.take_delivery_slot("acme", "msg_3", 2, 30)
    assert s.take_delivery_slot("globex", "msg_4", 2, 30)  # another tenant's slots are its own
    s.give_back_delivery_slot("acme", "msg_1")
    assert s.take_delivery_slot("acme", "msg_3", 2, 30)
    assert s.take_delivery_slot("initech", "msg_5", 2, 0.001) and s.take_delivery_slot("initech", "msg_6", 2, 30)
    # a slot its worker never gave back (killed) lapses after its hold
    wait_until(lambda: s.take_delivery_slot("initech", "msg_7", 2, 30), timeout=5, message="the slot to lapse")
    assert not s.take_delivery_slot("initech", "msg_8", 2, 30)


def test_an_attempt_over_its_tenants_cap_waits_unmade(env):
    env.configure(webhook_concurrency_per_tenant=1)
    hook, delivery = queued(env)
    assert env.store.take_delivery_slot("acme", "msg_busy", 1, 30)
    assert deliver(delivery["id"], 1) == "deferred"
    assert env.store.get_delivery(delivery["id"])["attempts"] == []
    due = env.r.zscore(keys.WEBHOOK_DUE, delivery["id"])
    assert time.time() < due <= time.time() + 1.5  # due again in a second, and claimable again
    assert env.store.claim_attempt(delivery["id"], 1, 60)


def test_an_attempts_claim_outlives_the_brokers_visibility_timeout(env):
    """The broker hands an unacknowledged message out again after the visibility timeout: the claim
    must still be there then, so the second copy does not send the attempt again."""
    hook, delivery = queued(env)
    assert env.store.claim_attempt(delivery["id"], 1, claim_seconds())
    assert env.r.ttl(keys.delivery_claim(delivery["id"], 1)) > env.settings.visibility_timeout
    assert deliver(delivery["id"], 1) == "skipped"
    # and should the claimer die, the delivery comes due again once the claim has lapsed
    assert env.r.zscore(keys.WEBHOOK_DUE, delivery["id"]) > time.time() + env.settings.visibility_timeout


def test_a_message_for_an_attempt_already_made_is_skipped(env):
    hook, delivery = queued(env)
    env.store.record_attempt(delivery["id"], {"attempt": 1, "error": "HTTP 500"}, PENDING, "retrying", time.time())
    assert deliver(delivery["id"], 1) == "skipped"


def test_the_relay_sends_what_is_due_with_its_attempt_number(env):
    hook, delivery = queued(env)
    later = env.store.add_webhook("acme", "https://93.184.216.34/later", None)
    env.store.event("acme:2", "healed", "the host has a free GPU again")
    [waiting] = env.store.deliveries(later["id"])
    env.store.record_attempt(waiting["id"], {"attempt": 1, "error": "HTTP 500"}, PENDING, "retrying",
                             time.time() + 60)
    sent = []
    env.store.relay_outbox(lambda delivery_id, attempt: sent.append((delivery_id, attempt)), 4)
    assert (delivery["id"], 1) in sent and waiting["id"] not in {d for d, _ in sent}
    assert env.r.zscore(keys.WEBHOOK_DUE, waiting["id"]) is not None


def test_a_tenants_pending_deliveries_are_capped_past_which_a_test_or_resend_is_429(env):
    env.configure(webhook_pending_per_tenant=2)
    hook, delivery = queued(env)  # an event's delivery counts too
    test = f"/api/v1/webhooks/{hook['id']}/test"
    first_test = env.api("POST", test).json["id"]
    rv = env.api("POST", test)
    assert rv.status_code == 429 and "WEBHOOK_PENDING_PER_TENANT" in rv.json["message"]
    other = env.store.add_webhook("globex", "https://93.184.216.34/hook", None)
    assert env.api("POST", f"/api/v1/webhooks/{other['id']}/test", tenant="globex").status_code == 202
    env.store.record_attempt(delivery["id"], {"attempt": 1, "error": None}, DELIVERED, "delivered")
    assert env.store.pending_deliveries("acme") == 1  # a delivery that ended frees its place
    resend = f"/api/v1/webhooks/{hook['id']}/deliveries/{delivery['id']}/resend"
    assert env.api("POST", resend).status_code == 202
    assert env.api("POST", resend).status_code == 202  # already pending: no second place taken
    assert env.api("POST", test).status_code == 429
    env.api("DELETE", f"/api/v1/webhooks/{hook['id']}")  # its pending deliveries free their places at their turn
    assert [deliver(first_test, 1), deliver(delivery["id"], 2)] == ["unsubscribed"] * 2
    assert env.store.pending_deliveries("acme") == 0


def test_the_relay_sends_no_message_for_a_tenant_whose_slots_are_all_in_flight(env):
    for tenant in ("acme", "globex"):
        hook = env.store.add_webhook(tenant, "https://93.184.216.34/hook", None)
        for _ in range(5):
            env.store.queue_test_delivery(tenant, hook, 100)
    assert env.store.take_delivery_slot("acme", "msg_busy", 2, 30)
    sent = []
    env.store.relay_outbox(lambda delivery_id, attempt: sent.append(delivery_id), 2)
    tenants = [env.store.get_delivery(delivery_id)["tenant"] for delivery_id in sent]
    assert sorted(tenants) == ["acme", "globex", "globex"]  # acme had one slot free, globex two
    waiting = env.r.zrangebyscore(keys.WEBHOOK_DUE, "-inf", "+inf", withscores=True)
    assert len(waiting) == 7 and all(score > time.time() for _, score in waiting)  # due again later, not now
    assert env.store.relay_outbox(lambda delivery_id, attempt: sent.append(delivery_id), 2) == 0


def test_a_delivery_keeps_only_its_latest_attempts(env):
    hook, delivery = queued(env)
    for attempt in range(1, ATTEMPTS_KEPT + 6):
        env.store.record_attempt(delivery["id"], {"attempt": attempt, "error": "HTTP 500"}, PENDING, "retrying",
                                 time.time())
    kept = env.store.get_delivery(delivery["id"])["attempts"]
    assert [a["attempt"] for a in kept] == list(range(6, ATTEMPTS_KEPT + 6))
    listed, = env.api("GET", f"/api/v1/webhooks/{hook['id']}/deliveries").json["deliveries"]
    assert listed["attempts_made"] == ATTEMPTS_KEPT + 5 and len(listed["attempts"]) == ATTEMPTS_KEPT
    sent = []
    env.store.relay_outbox(lambda delivery_id, attempt: sent.append(attempt), 4)
    assert sent == [ATTEMPTS_KEPT + 6]  # the attempt number still counts every attempt


def test_a_resend_racing_an_attempt_keeps_the_attempt_and_one_that_expired_is_404(env, monkeypatch):
    hook, delivery = queued(env)
    env.store.record_attempt(delivery["id"], {"attempt": 1, "error": "HTTP 500"}, FAILED, "failed")
    count, raced = env.store._pending_count, []

    def attempt_lands_meanwhile(client, tenant):  # between the resend's read and its write: a late attempt
        if not raced:
            late = {"attempt": 2, "error": "HTTP 500"}
            raced.append(env.store.record_attempt(delivery["id"], late, FAILED, "failed"))
        return count(client, tenant)
    monkeypatch.setattr(env.store, "_pending_count", attempt_lands_meanwhile)
    resend = f"/api/v1/webhooks/{hook['id']}/deliveries/{delivery['id']}/resend"
    assert env.api("POST", resend).status_code == 202
    after = env.store.get_delivery(delivery["id"])
    assert after["state"] == PENDING and [a["attempt"] for a in after["attempts"]] == [1, 2]
    get_delivery = env.store.get_delivery

    def expires_once_read(delivery_id):
        found = get_delivery(delivery_id)
        env.r.delete(keys.delivery(delivery_id))
        return found
    monkeypatch.setattr(env.store, "get_delivery", expires_once_read)
    rv = env.api("POST", resend)
    assert rv.status_code == 404 and rv.json["message"].startswith("No delivery")


def test_the_retry_schedule_is_the_specs_example_and_retry_after_may_lengthen_it(env):
    assert WEBHOOK_RETRY_SCHEDULE == (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
    assert 5 <= next_attempt_at(1, None, 0) <= 5.5
    assert 36000 <= next_attempt_at(7, None, 0) <= 39600
    assert next_attempt_at(8, None, 0) is None  # the eighth attempt was the last
    assert next_attempt_at(1, 120, 0) == 120
    assert next_attempt_at(1, 10 ** 9, 0) == WEBHOOK_RETRY_AFTER_MAX == 36000
    assert 300 <= next_attempt_at(2, 1, 0) <= 330  # a shorter Retry-After does not hurry it
    assert parse_retry_after("120") == 120 and parse_retry_after(None) is None
    assert parse_retry_after("soon") is None and parse_retry_after("²") is None and parse_retry_after("١٢") is None
    assert 50 < parse_retry_after(time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 60))) <= 60


def test_the_schedule_setting_is_read_and_checked(monkeypatch):
    monkeypatch.setenv("WEBHOOK_RETRY_SCHEDULE", "0, 1,2.5")
    assert Settings.from_env().webhook_retry_schedule == (0, 1, 2.5)
    for bad in ("", "1,,2", "5,-1", "soon", "nan", "0,inf"):
        monkeypatch.setenv("WEBHOOK_RETRY_SCHEDULE", bad)
        with pytest.raises(ValueError, match="WEBHOOK_RETRY_SCHEDULE"):
            Settings.from_env()
    monkeypatch.delenv("WEBHOOK_RETRY_SCHEDULE")
    monkeypatch.setenv("WEBHOOK_CONCURRENCY_PER_TENANT", "0")
    with pytest.raises(ValueError, match="WEBHOOK_CONCURRENCY_PER_TENANT"):
        Settings.from_env()


def test_the_schedules_first_step_is_the_wait_before_the_first_attempt(env):
    hook, delivery = queued(env)  # the default's first step, 0: at once
    assert env.r.zscore(keys.WEBHOOK_DUE, delivery["id"]) <= time.time()
    env.configure(webhook_retry_schedule=(60, 5))
    made = BUILD_STORE()  # as a process makes its store from the settings (it connects to nothing yet)
    assert made.first_attempt_delay == 60
    env.store.first_attempt_delay = made.first_attempt_delay
    env.store.event("acme:1", "healed", "the host has a free GPU again")
    test = env.api("POST", f"/api/v1/webhooks/{hook['id']}/test").json
    for delivery_id in (env.store.deliveries(hook["id"])[1]["id"], test["id"]):
        due = env.r.zscore(keys.WEBHOOK_DUE, delivery_id)
        assert time.time() + 55 < due <= time.time() + 60
        assert env.store.get_delivery(delivery_id)["next_attempt_at"] is not None
    sent = []
    env.store.relay_outbox(lambda delivery_id, attempt: sent.append(delivery_id), 4)
    assert sent == [delivery["id"]]  # the one queued under the 0 s step; the two others wait their minute
    assert 5 <= next_attempt_at(1, None, 0) <= 5.5  # and the retries follow the steps after it


def test_a_schedule_that_could_outlast_a_delivery_is_refused_at_start(monkeypatch):
    """The worst case counts: every retry 10 % late, or stretched by Retry-After to 10 h."""
    assert sum(WEBHOOK_RETRY_SCHEDULE) / 3600 == pytest.approx(27.6, abs=0.05)
    assert webhook_retry_span(WEBHOOK_RETRY_SCHEDULE) == 7 * WEBHOOK_RETRY_AFTER_MAX + 2 * 3600 <= WEBHOOK_DELIVERY_LIFETIME
    longest = (0,) + (1,) * 16  # 16 retries of 1 s, each one a receiver may stretch to 10 h: 160 h
    assert Settings(webhook_retry_schedule=longest).webhook_retry_schedule == longest
    for bad in ("0" + ",1" * 17, "0,600000", "604801"):
        monkeypatch.setenv("WEBHOOK_RETRY_SCHEDULE", bad)
        with pytest.raises(ValueError, match=r"WEBHOOK_RETRY_SCHEDULE could keep a delivery retrying for .* h"):
            Settings.from_env()


def test_a_410_to_a_test_delivery_disables_the_webhook_with_a_webhook_disabled_event(env, monkeypatch):
    gone = env.store.add_webhook("acme", "https://93.184.216.34/gone", None)
    watcher = env.store.add_webhook("acme", "https://93.184.216.34/watch", ["webhook.disabled"])
    other_tenant = env.store.add_webhook("globex", "https://93.184.216.34/watch", None)
    monkeypatch.setattr("tasks.webhooks.post_pinned", lambda *args: urls.Answer(410, {}))
    test = env.api("POST", f"/api/v1/webhooks/{gone['id']}/test").json
    assert deliver(test["id"], 1) == "gone"
    listed = {h["id"]: h for h in env.api("GET", "/api/v1/webhooks").json["webhooks"]}
    assert listed[gone["id"]]["enabled"] is False and "410" in listed[gone["id"]]["disabled_reason"]
    [told] = env.store.deliveries(watcher["id"])
    payload = json.loads(told["payload"])
    assert told["type"] == payload["type"] == "webhook.disabled" and payload["machine_id"] is None
    assert payload["data"]["webhook_id"] == gone["id"] and "410 Gone" in payload["data"]["message"]
    assert env.store.deliveries(other_tenant["id"]) == []  # another tenant hears nothing
    assert env.r.hget(keys.METRIC_WEBHOOK_DELIVERIES, "gone") == "1"
    disable_gone_webhook("acme", gone["id"], None)  # another 410 that was in flight beside it: told once only
    assert len(env.store.deliveries(watcher["id"])) == 1
    # a 410 to a pool's event's delivery still records the event on that pool
    env.api("PATCH", f"/api/v1/webhooks/{gone['id']}", json={"enabled": True})
    env.store.event("acme:3", "healed", "the host has a free GPU again")
    [healed] = [d for d in env.store.deliveries(gone["id"]) if d["type"] == "pool.healed"]
    assert deliver(healed["id"], 1) == "gone"
    assert [e["webhook_id"] for e in env.store.events("acme:3") if e["event"] == "webhook_disabled"] == [gone["id"]]
    assert [d["machine_id"] for d in env.store.deliveries(watcher["id"])] == [3, None]


def test_a_rotated_secret_signs_beside_the_new_one_for_a_day(env):
    hook = env.store.add_webhook("acme", "https://93.184.216.34/hook", None)
    rotated = env.store.rotate_secret("acme", hook["id"])
    assert rotated["secret"] != hook["secret"]
    now = time.time()
    assert signing_secrets(rotated, now) == [rotated["secret"], hook["secret"]]
    assert signing_secrets(rotated, now + PREVIOUS_SECRET_SECONDS + 1) == [rotated["secret"]]
    assert env.store.rotate_secret("globex", hook["id"]) is None
    stored = json.loads(env.r.hget(keys.webhooks("acme"), hook["id"]))
    assert stored["secret"] == rotated["secret"]
    listed = env.api("GET", "/api/v1/webhooks").json["webhooks"][0]
    assert not {"secret", "previous_secret", "previous_secret_until"} & set(listed)


class StuckNameServer:
    """A resolver the test controls: every lookup hangs until the test releases it (10 s at most, so a lookup
    nothing bounds still ends), then answers a public address."""

    def __init__(self, monkeypatch):
        self.released, self.answered = threading.Event(), 0
        monkeypatch.setattr(urls, "resolve", self)

    def __call__(self, host: str, port: int) -> list[str]:
        self.released.wait(10)
        self.answered += 1
        return ["93.184.216.34"]


def test_a_name_server_that_never_answers_is_under_the_attempts_deadline(env, monkeypatch):
    env.configure(webhook_timeout=0.2)
    name_server = StuckNameServer(monkeypatch)
    try:
        hook, delivery = queued(env, url="https://slow-dns.example/hook")
        assert deliver(delivery["id"], 1) == "retrying"
        assert name_server.answered == 0  # the attempt ended while its lookup still hung
        [attempt] = env.store.get_delivery(delivery["id"])["attempts"]
        assert attempt["status_code"] is None and attempt["error"] == "no complete answer within 0.2 s"
    finally:
        name_server.released.set()


def test_a_non_ascii_url_is_refused_and_any_unexpected_failure_is_a_recorded_attempt(env, monkeypatch):
    rv = env.api("POST", "/api/v1/webhooks", json={"url": "https://93.184.216.34/h\u00e9"})
    assert rv.status_code == 422 and "ASCII" in rv.json["errors"]["json"]["url"][0]
    hook, delivery = queued(env)

    def broken(*args):
        raise UnicodeEncodeError("ascii", "h\u00e9", 1, 2, "ordinal not in range")
    monkeypatch.setattr("tasks.webhooks.post_pinned", broken)
    assert deliver(delivery["id"], 1) == "retrying"  # not an exception that leaves the claim and loops
    [attempt] = env.store.get_delivery(delivery["id"])["attempts"]
    assert attempt["error"] == "UnicodeEncodeError" and attempt["status_code"] is None


def test_registering_a_webhook_resolves_no_name(env, monkeypatch):
    """A POST or PATCH never waits on DNS (a silent name server would hold an API thread); literal
    addresses and special-use names are still refused at once, and every attempt checks the name."""
    name_server = StuckNameServer(monkeypatch)
    try:
        rv = env.api("POST", "/api/v1/webhooks", json={"url": "https://slow-dns.example/hook"})
        assert rv.status_code == 201
        rv = env.api("PATCH", f"/api/v1/webhooks/{rv.json['id']}", json={"url": "https://slower.example/"})
        assert rv.status_code == 200
        assert name_server.answered == 0 and not name_server.released.is_set()
        for refused in ("https://10.0.0.1/", "http://[::1]/", "http://localhost:8000/", "http://app.localhost/",
                        "https://no-such-host.invalid/"):
            rv = env.api("POST", "/api/v1/webhooks", json={"url": refused})
            assert rv.status_code == 422 and "loopback, private" in rv.json["errors"]["json"]["url"][0], refused
    finally:
        name_server.released.set()


@pytest.mark.parametrize("address", ["64:ff9b::a9fe:a9fe", "64:ff9b::a00:1", "2002:7f00:1::1", "2002:a9fe:a9fe::",
                                     "::ffff:10.0.0.1", "2001:0:4136:e378:8000:63bf:80ff:fffe", "64:ff9b:1::5db8:d822"])
def test_a_private_ipv4_inside_ipv6_is_refused(env, address):
    """NAT64, 6to4, Teredo and IPv4-mapped addresses reach the IPv4 inside them (Teredo's client, 127.0.0.1 here)."""
    rv = env.api("POST", "/api/v1/webhooks", json={"url": f"https://[{address}]/hook"})
    assert rv.status_code == 422 and "url" in rv.json["errors"]["json"]
    with pytest.raises(urls.UnsafeDestination, match="loopback, private"):  # and at every attempt
        urls.check_destination(f"https://[{address}]/hook", allow_private=False, within=1)


def test_a_public_ipv4_inside_nat64_is_allowed(env):
    assert env.api("POST", "/api/v1/webhooks", json={"url": "https://[64:ff9b::5db8:d822]/hook"}).status_code == 201
