"""Vast's notifications: only a signed one is taken; an offline primary gets the failover's direct check, an
offline standby the lost-standby recheck."""

import hashlib
import hmac
import json

import pytest

from app.settings import account_name
from tests.unit.fakes import snapshot

SECRET = "vast-notification-secret"
ROUTE = "/api/v1/provider/notifications"
GLOBEX_SECRET = "globex-notification-secret"
GLOBEX_ROUTE = f"{ROUTE}/{account_name('globex-vast-key')}"


def signed(body: dict, secret: str = SECRET) -> dict:
    raw = json.dumps(body).encode()
    return {"data": raw, "content_type": "application/json",
            "headers": {"X-Vast-Signature-256": "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()}}


def test_an_offline_primary_gets_the_failover_check(env):
    env.configure(vast_webhook_secret=SECRET)
    pool = env.add_pool(123)
    rv = env.client.post(ROUTE, **signed({"event": "instance_offline", "instance_id": pool["primary_gpu_id"]}))
    assert rv.status_code == 200 and rv.json["action"] == "failover check"
    kind, trigger = env.enqueued[0]
    assert kind == "trigger" and trigger["pid"] == "acme:123" and trigger["primary"] == pool["primary_gpu_id"]
    assert trigger["source"] == "notification"
    assert [e["event"] for e in env.store.events("acme:123")] == ["provider_notice"]


def test_an_offline_standby_gets_the_lost_standby_recheck_within_the_same_limits(env):
    env.configure(vast_webhook_secret=SECRET, notification_check_interval=60.0)
    pool = env.add_pool(123)
    offline = {"event": "instance_offline", "instance_id": pool["standby_gpu_id"]}
    answers = [env.client.post(ROUTE, **signed(offline)).json["action"] for _ in range(3)]
    assert answers == ["standby check"] + ["dropped: the same notification came before"] * 2
    again = env.client.post(ROUTE, **signed({**offline, "at": "later"}))  # another body: within the interval
    assert again.json["action"].startswith("dropped: this pool was checked")
    assert env.enqueued == [("recheck_standby", {"pid": "acme:123"})]  # confirmed by a direct call, under the lock
    notice, = env.store.events("acme:123")
    assert notice["event"] == "provider_notice" and notice["role"] == "standby"
    # a host failing: Vast tells of the primary too, whose failover check the standby's never holds back
    primary = env.client.post(ROUTE, **signed({"event": "instance_offline", "instance_id": pool["primary_gpu_id"]}))
    assert primary.json["action"] == "failover check" and env.kinds() == ["recheck_standby", "trigger"]


def test_other_instances_and_events_start_nothing(env):
    env.configure(vast_webhook_secret=SECRET)
    pool = env.add_pool(123)
    assert env.client.post(ROUTE, **signed({"event": "instance_offline", "instance_id": 999})).json["action"] \
        .startswith("ignored")
    assert env.client.post(ROUTE, **signed({"event": "rental_expiring", "instance_id": pool["primary_gpu_id"],
                                             "end_date": 1.0})).json["action"] == "recorded"
    assert env.enqueued == []


@pytest.mark.parametrize("headers", [{}, {"X-Vast-Signature-256": "sha256=00"}, "wrong secret"])
def test_an_unsigned_or_badly_signed_notification_is_refused(env, headers):
    env.configure(vast_webhook_secret=SECRET)
    pool = env.add_pool(123)
    body = {"event": "instance_offline", "instance_id": pool["primary_gpu_id"]}
    request = signed(body, "another") if headers == "wrong secret" else {
        "data": json.dumps(body), "content_type": "application/json", "headers": headers}
    rv = env.client.post(ROUTE, **request)
    assert rv.status_code == 401 and rv.json["code"] == 401
    assert env.enqueued == [] and env.store.events("acme:123") == []


def test_the_receiver_is_off_without_a_secret(env):
    rv = env.client.post(ROUTE, **signed({"event": "instance_offline", "instance_id": 1}))
    assert rv.status_code == 404 and "VAST_WEBHOOK_SECRET" in rv.json["message"]


def test_a_signed_body_that_is_not_a_notification_is_a_422(env):
    env.configure(vast_webhook_secret=SECRET)
    rv = env.client.post(ROUTE, **signed({"instance_id": "x"}))
    assert rv.status_code == 422 and "event" in rv.json["errors"]["json"]


def test_a_replayed_notification_is_dropped_and_checks_are_limited_per_pool(env):
    env.configure(vast_webhook_secret=SECRET, notification_check_interval=60.0)
    pool, other = env.add_pool(123), env.add_pool(7, tenant="globex")
    offline = {"event": "instance_offline", "instance_id": pool["primary_gpu_id"]}
    answers = [env.client.post(ROUTE, **signed(offline)).json["action"] for _ in range(12)]
    assert answers == ["failover check"] + ["dropped: the same notification came before"] * 11
    # another body about the same pool (Vast's fields vary): within the interval, no second check
    again = env.client.post(ROUTE, **signed({**offline, "at": "later"}))
    assert again.status_code == 200 and again.json["action"].startswith("dropped: this pool was checked")
    assert env.client.post(ROUTE, **signed({"event": "instance_offline", "instance_id": other["primary_gpu_id"]})) \
        .json["action"] == "failover check"  # another pool's check is never held back by this one's
    assert [t["pid"] for kind, t in env.enqueued if kind == "trigger"] == ["acme:123", "globex:7"]
    assert [e["event"] for e in env.store.events("acme:123")] == ["provider_notice"]


def two_accounts(env) -> tuple[dict, dict]:
    """acme on the default account (VAST_WEBHOOK_SECRET), globex on its own with its own secret."""
    env.configure(vast_webhook_secret=SECRET, vast_accounts={"globex": "globex-vast-key"},
                  vast_webhook_secrets={"globex": GLOBEX_SECRET})
    return env.add_pool(1), env.add_pool(2, tenant="globex")


def test_each_vast_account_notifies_on_its_own_url_signed_with_its_own_secret(env):
    acme, globex = two_accounts(env)
    offline = {"event": "instance_offline", "instance_id": globex["primary_gpu_id"]}
    rv = env.client.post(GLOBEX_ROUTE, **signed(offline, GLOBEX_SECRET))
    assert rv.status_code == 200 and rv.json["action"] == "failover check"
    rv = env.client.post(ROUTE, **signed({"event": "instance_offline", "instance_id": acme["primary_gpu_id"]}))
    assert rv.status_code == 200 and rv.json["action"] == "failover check"  # the default account: today's URL
    assert [t["pid"] for kind, t in env.enqueued if kind == "trigger"] == ["globex:2", "acme:1"]


@pytest.mark.parametrize("route, secret, code", [
    (GLOBEX_ROUTE, SECRET, 401),                       # the default account's secret on globex's URL
    (ROUTE, GLOBEX_SECRET, 401),                       # globex's secret on the default account's URL
    (GLOBEX_ROUTE, "forged", 401),                     # no account's secret
    (f"{ROUTE}/0123456789ab", GLOBEX_SECRET, 404),     # an account that is not the service's
])
def test_a_forged_or_cross_account_notification_is_refused_and_changes_nothing(env, route, secret, code):
    acme, globex = two_accounts(env)
    before = snapshot(env.r)
    for pool in (acme, globex):
        rv = env.client.post(route, **signed({"event": "instance_offline", "instance_id": pool["primary_gpu_id"]},
                                             secret))
        assert rv.status_code == code and rv.json["code"] == code
    assert env.enqueued == [] and snapshot(env.r) == before


def test_an_accounts_notification_never_acts_on_another_accounts_pool(env):
    """Signed for globex but naming acme's instances: looked up among globex's pools only, so it is ignored like an
    instance warmpool does not watch (telling it apart would show globex's secret holders acme's instance ids),
    and the same body from acme's own account still acts: the replay window is each account's."""
    acme, _ = two_accounts(env)
    for instance in (acme["primary_gpu_id"], acme["standby_gpu_id"]):
        rv = env.client.post(GLOBEX_ROUTE, **signed({"event": "instance_offline", "instance_id": instance},
                                                    GLOBEX_SECRET))
        assert rv.status_code == 200 and rv.json["action"] == "ignored: not an instance warmpool watches"
    assert env.enqueued == [] and env.store.events("acme:1") == []
    rv = env.client.post(ROUTE, **signed({"event": "instance_offline", "instance_id": acme["primary_gpu_id"]}))
    assert rv.json["action"] == "failover check" and [t["pid"] for _, t in env.enqueued] == ["acme:1"]
