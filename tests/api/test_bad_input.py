"""Bad input at the API (issue 4, case 9): only 4xx JSON errors in flask-smorest's shape, never a 5xx or a
traceback, nothing enqueued, nothing written in Redis. Plus a property-based run over every route.

The store is fakeredis and every enqueue is recorded (tests/unit/fakes.py).
"""

import json
import math
import socket
import uuid
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from app.api.schemas import MAX_ID
from app.store import keys
from tests.unit.fakes import make_env, snapshot

TASK = "f" * 32  # acme's task, seeded below
WEBHOOK = "wh_" + "e" * 32  # acme's webhook, seeded below
DELIVERY = "msg_" + "d" * 32  # a delivery of it
MACHINE = 123  # acme's active pool; globex has none of that id
PROVISION = {"machine_id": 456, "host_machine_id": 88888}

# every route under /api/v1 with how it is called; test_openapi.py checks this list is the app's
ROUTES = {
    "status": ("GET", "/api/v1/warmpool/status/{m}"),
    "pools": ("GET", "/api/v1/warmpool/pools"),
    "events": ("GET", "/api/v1/warmpool/events/{m}"),
    "hosts": ("GET", "/api/v1/warmpool/hosts"),
    "provision": ("POST", "/api/v1/warmpool/provision"),
    "enable": ("POST", "/api/v1/warmpool/enable/{m}"),
    "disable": ("POST", "/api/v1/warmpool/disable/{m}"),
    "failover": ("POST", "/api/v1/warmpool/failover/test/{m}"),
    "cleanup": ("DELETE", "/api/v1/warmpool/cleanup/{m}"),
    "switchover": ("POST", "/api/v1/warmpool/switchover/{m}"),
    "unschedule": ("DELETE", "/api/v1/warmpool/switchover/{m}"),
    "task": ("GET", "/api/v1/tasks/{t}"),
    "webhooks": ("GET", "/api/v1/webhooks"),
    "subscribe": ("POST", "/api/v1/webhooks"),
    "unsubscribe": ("DELETE", "/api/v1/webhooks/{w}"),
    "deliveries": ("GET", "/api/v1/webhooks/{w}/deliveries"),
    "change_webhook": ("PATCH", "/api/v1/webhooks/{w}"),
    "test_webhook": ("POST", "/api/v1/webhooks/{w}/test"),
    "resend": ("POST", "/api/v1/webhooks/{w}/deliveries/{d}/resend"),
    "rotate_secret": ("POST", "/api/v1/webhooks/{w}/rotate-secret"),
}
METHODS = {path: {m for m, p in ROUTES.values() if p == path} for _, path in ROUTES.values()}


def url(route: str, m=MACHINE, t=TASK, w=WEBHOOK, d=DELIVERY) -> str:
    return ROUTES[route][1].format(m=m, t=t, w=w, d=d)


def seed(env):
    """acme: an active pool 123, a finished task and a webhook; globex: a pool 777."""
    env.add_pool(MACHINE)
    with mock.patch("app.store.webhooks.uuid.uuid4", return_value=uuid.UUID(WEBHOOK[3:])):
        env.store.add_webhook("acme", "https://example.com/hooks/warmpool", None)
    env.add_pool(777, tenant="globex")
    with mock.patch("app.store.operations.uuid.uuid4", return_value=uuid.UUID(TASK)):
        env.store.new_op("acme", MACHINE, "provision")
    env.store.update_op(TASK, state="SUCCESS", step="done", result={"success": True})


@pytest.fixture
def seeded(env):
    seed(env)
    return env


def assert_rejected(env, before, rv, *codes, named=None):
    """A 4xx in flask-smorest's error shape; nothing enqueued, nothing written."""
    text = rv.get_data(as_text=True)
    assert rv.status_code in codes, (rv.status_code, text)
    assert rv.is_json, text
    body = rv.json
    assert body["code"] == rv.status_code and isinstance(body["status"], str) and body["status"]
    assert set(body) <= {"code", "status", "message", "errors"}, body
    assert "Traceback" not in text
    if named:
        assert named in json.dumps(body.get("errors", {})) or named in body.get("message", ""), body
    assert env.enqueued == [], env.enqueued
    assert snapshot(env.r) == before
    return body


def call(env, route, tenant="acme", m=MACHINE, t=TASK, w=WEBHOOK, query="", **kwargs):
    method, _ = ROUTES[route]
    return env.api(method, url(route, m, t, w) + query, tenant=tenant, **kwargs)


# -- wrong types, missing, unknown and huge fields in JSON bodies -----------------------------------------------

BAD_IDS = ["123", 1.5, True, None, [], {}, -1, 0, MAX_ID + 1, 10**30, math.inf, -math.inf]
BAD_FIELDS = {
    "gpu_name": [123, True, [], {}, "", "RTX 4090!", "a" * 65, "-RTX", "RTX\x00"],
    "image": [5, "", "my image", "-bad", "x" * 1025, ["pytorch"]],
    "disk_size": [7, 4097, "50", 50.5, True, None, -50, 10**20, math.nan],
    "volume_size": [0, 65537, "100", 1.25, False, None, -1],
    "priority": [1001, -1001, "1", 0.5, True, None],
    "onstart": [5, ["echo"], {}, "x" * 4049],
    "env": ["A=1", ["A", "1"], {"A": 1}, {"A": None}, {"1A": "x"}, {"A B": "x"}, {"-p 80:80; rm": "1"},
            {"A": "x" * 257}, {f"V{i}": "x" for i in range(65)}],
}


@pytest.mark.parametrize("field", ["machine_id", "host_machine_id"])
@pytest.mark.parametrize("value", BAD_IDS, ids=repr)
def test_provision_bad_ids(seeded, field, value):
    before = snapshot(seeded.r)
    rv = call(seeded, "provision", json={**PROVISION, field: value})
    assert_rejected(seeded, before, rv, 422, named=field)


@pytest.mark.parametrize("field, value", [(f, v) for f, vs in BAD_FIELDS.items() for v in vs], ids=repr)
def test_provision_bad_fields(seeded, field, value):
    before = snapshot(seeded.r)
    rv = call(seeded, "provision", json={**PROVISION, field: value})
    assert_rejected(seeded, before, rv, 422, named=field)


@pytest.mark.parametrize("field, value", [(f, v) for f, vs in BAD_FIELDS.items() for v in vs]
                         + [("max_price", v) for v in (-0.01, 1000.5, "cheap", True, math.nan, math.inf, [])],
                         ids=repr)
def test_enable_bad_fields(seeded, field, value):
    before = snapshot(seeded.r)
    rv = call(seeded, "enable", m=999, json={field: value})
    assert_rejected(seeded, before, rv, 422, named=field)


@pytest.mark.parametrize("body, named", [({}, "machine_id"), ({"machine_id": 5}, "host_machine_id"),
                                         ({"host_machine_id": 5}, "machine_id")])
def test_provision_missing_fields(seeded, body, named):
    before = snapshot(seeded.r)
    assert_rejected(seeded, before, call(seeded, "provision", json=body), 422, named=named)


@pytest.mark.parametrize("route, body, named", [("provision", {**PROVISION, "extra": 1}, "extra"),
                                                ("provision", {**PROVISION, "max_price": 1.0}, "max_price"),
                                                ("provision", {**PROVISION, "state": "active"}, "state"),
                                                ("enable", {"machine_id": 5}, "machine_id"),
                                                ("enable", {"gpu_name": "RTX_4090", "tenant": "globex"}, "tenant")])
def test_unknown_fields(seeded, route, body, named):
    before = snapshot(seeded.r)
    assert_rejected(seeded, before, call(seeded, route, m=999, json=body), 422, named=named)


@pytest.mark.parametrize("route, body", [(r, b) for r in ("provision", "enable")
                                         for b in ([], [PROVISION], "text", 7, True, None)
                                         if (r, b) != ("enable", None)],  # null is no body: enable allows that
                         ids=repr)
def test_bodies_that_are_not_objects(seeded, route, body):
    before = snapshot(seeded.r)
    rv = call(seeded, route, m=999, data=json.dumps(body), content_type="application/json")
    assert_rejected(seeded, before, rv, 422, 400)


@pytest.mark.parametrize("route", ["provision", "enable"])
@pytest.mark.parametrize("data", ['{"machine_id": 1,', "{'machine_id': 1}", "nul", b"\xff\xfe\x00", "[1, 2"],
                         ids=repr)
def test_malformed_json(seeded, route, data):
    before = snapshot(seeded.r)
    rv = call(seeded, route, m=999, data=data, content_type="application/json")
    assert_rejected(seeded, before, rv, 400, 422)


def test_provision_with_a_non_json_body(seeded):
    before = snapshot(seeded.r)
    for data, content_type in [("machine_id=456&host_machine_id=88888", "application/x-www-form-urlencoded"),
                               (json.dumps(PROVISION), "text/plain"), (json.dumps(PROVISION), None)]:
        assert_rejected(seeded, before, call(seeded, "provision", data=data, content_type=content_type), 422, 415)


@pytest.mark.parametrize("data, content_type", [
    ('{"gpu_name": "RTX_4090", "max_price": 0.5}', "application/x-www-form-urlencoded"),
    ('{"gpu_name": "RTX_4090", "max_price": 0.5}', None),
    ("gpu_name=RTX_4090&max_price=0.5", "application/x-www-form-urlencoded"),
])
def test_enable_with_a_non_json_body_is_refused(seeded, data, content_type):
    before = snapshot(seeded.r)
    rv = call(seeded, "enable", m=999, data=data, content_type=content_type)
    assert_rejected(seeded, before, rv, 415, 422, 400)


@pytest.mark.parametrize("route", ["provision", "enable"])
def test_deeply_nested_json_is_a_4xx(seeded, route):
    before = snapshot(seeded.r)
    rv = call(seeded, route, m=999, data="[" * 100_000 + "]" * 100_000, content_type="application/json")
    assert_rejected(seeded, before, rv, 400, 413, 422)


@pytest.mark.parametrize("route, body", [("provision", {**PROVISION, "gpu_name": "RTX_4090\n"}),
                                         ("provision", {**PROVISION, "image": "pytorch/pytorch\n"}),
                                         ("enable", {"gpu_name": "RTX_4090\n"})])
def test_a_trailing_newline_is_not_a_valid_name(seeded, route, body):
    before = snapshot(seeded.r)
    assert_rejected(seeded, before, call(seeded, route, m=999, json=body), 422)


def test_a_huge_body_is_rejected(seeded):
    before = snapshot(seeded.r)
    rv = call(seeded, "provision", json={**PROVISION, "gpu_name": "A" * 2_000_000})
    assert_rejected(seeded, before, rv, 413, named="MAX_CONTENT_LENGTH")


@pytest.mark.parametrize("route", ["provision", "enable", "subscribe", "failover", "cleanup", "notifications"])
def test_a_body_past_max_content_length_is_413_on_every_route(seeded, route):
    """Flask's MAX_CONTENT_LENGTH answers from the Content-Length, before the body is read: even unsigned."""
    seeded.configure(vast_webhook_secret="notification-secret")
    before = snapshot(seeded.r)
    body = {"data": b"x" * (5 << 20), "content_type": "application/json"}
    rv = seeded.client.post("/api/v1/provider/notifications", **body) if route == "notifications" else \
        call(seeded, route, **body)
    assert_rejected(seeded, before, rv, 413, named="MAX_CONTENT_LENGTH")


# -- query strings -------------------------------------------------------------------------------------------------

BAD_WAITS = ["-1", "121", "abc", "nan", "inf", "1e309", "", "1,5", "0x10"]


@pytest.mark.parametrize("route", ["provision", "failover", "cleanup", "enable"])
@pytest.mark.parametrize("wait", BAD_WAITS, ids=repr)
def test_bad_wait(seeded, route, wait):
    before = snapshot(seeded.r)
    body = PROVISION if route == "provision" else None
    rv = call(seeded, route, query=f"?wait={wait}", json=body)
    assert_rejected(seeded, before, rv, 422, named="wait")


@pytest.mark.parametrize("query, named", [
    ("min_gpus=0", "min_gpus"), ("min_gpus=65", "min_gpus"), ("min_gpus=-2", "min_gpus"), ("min_gpus=2.5", "min_gpus"),
    ("min_gpus=99999999999999999999999", "min_gpus"), ("min_gpus=two", "min_gpus"), ("max_price=-1", "max_price"),
    ("max_price=1001", "max_price"), ("max_price=nan", "max_price"), ("max_price=1e999", "max_price"),
    ("max_price=cheap", "max_price"), ("verified=maybe", "verified"), ("verified=2", "verified"),
    ("gpu_name=RTX%204090!", "gpu_name"), ("gpu_name=" + "A" * 65, "gpu_name"), ("gpu_name=%ff", "gpu_name"),
])
def test_hosts_bad_query(seeded, query, named):
    before = snapshot(seeded.r)
    assert_rejected(seeded, before, call(seeded, "hosts", query="?" + query), 422, named=named)
    assert seeded.vast.searches == []  # the provider is not asked


# -- paths: negative, zero, huge and malformed ids -----------------------------------------------------------------

BAD_PATH_IDS = ["-1", "-123", str(MAX_ID + 1), "99999999999999999999999999", "1.5", "1e3", "0x7b", "abc", "%20123",
                "123abc", "", "%F0%9F%92%A9"]


@pytest.mark.parametrize("route", ["status", "events", "enable", "disable", "failover", "cleanup", "switchover",
                                   "unschedule"])
@pytest.mark.parametrize("machine", BAD_PATH_IDS, ids=repr)
def test_bad_machine_ids_in_the_path(seeded, route, machine):
    before = snapshot(seeded.r)
    assert_rejected(seeded, before, call(seeded, route, m=machine), 404, 405)


@pytest.mark.parametrize("task", ["-1", "0", "f" * 31, "f" * 33, "../" + "f" * 29, "%00" * 32])
def test_bad_task_ids(seeded, task):
    before = snapshot(seeded.r)
    assert_rejected(seeded, before, call(seeded, "task", t=task), 404)


@pytest.mark.parametrize("route", ["unsubscribe", "deliveries", "change_webhook", "test_webhook", "resend",
                                   "rotate_secret"])
@pytest.mark.parametrize("webhook", ["wh_" + "e" * 31, "wh_" + "e" * 33, "e" * 35, "wh_" + "0" * 32, "%00" * 35])
def test_bad_webhook_ids(seeded, route, webhook):
    before = snapshot(seeded.r)
    assert_rejected(seeded, before, call(seeded, route, w=webhook), 404)


def test_machine_zero_is_not_a_machine(seeded):
    before = snapshot(seeded.r)
    assert_rejected(seeded, before, call(seeded, "enable", m=0), 404, 422)


@pytest.mark.parametrize("route", ["status", "events", "disable", "failover", "cleanup"])
def test_machine_zero_is_unknown_where_a_pool_must_exist(seeded, route):
    before = snapshot(seeded.r)
    assert_rejected(seeded, before, call(seeded, route, m=0), 404)


# -- wrong methods ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("route, method", [(r, m) for r in sorted(ROUTES) for m in ("GET", "POST", "PUT", "PATCH",
                                                                                     "DELETE")
                                           if m not in METHODS[ROUTES[r][1]]])
def test_wrong_methods(seeded, route, method):
    before = snapshot(seeded.r)
    rv = seeded.api(method, url(route), json=PROVISION)
    assert_rejected(seeded, before, rv, 405)


@pytest.mark.parametrize("route", ["provision", "status"])
def test_405_names_the_allowed_methods(seeded, route):
    rv = seeded.api("PUT", url(route))
    assert rv.status_code == 405
    assert ROUTES[route][0] in rv.headers.get("Allow", "")


@pytest.mark.parametrize("path", ["/api/v1/nowhere", "/api/v1/webhooks/wh_1/deliveries/msg_short/resend"])
def test_a_url_no_route_matches_is_a_404_that_says_so(seeded, path):
    before = snapshot(seeded.r)
    rv = seeded.api("POST", path, json={})
    assert_rejected(seeded, before, rv, 404)
    assert rv.json["message"] == "Nothing at this URL; the routes are listed at /api/v1/docs"


# -- keys: none, wrong, another tenant's -----------------------------------------------------------------------------


@pytest.mark.parametrize("route", sorted(ROUTES))
@pytest.mark.parametrize("key", [None, "Bearer globex", "Bearer acme-key\x00", "Bearer " + "k" * 10_000, "Token acme-key"])
def test_without_a_valid_key(seeded, route, key):
    before = snapshot(seeded.r)
    rv = call(seeded, route, tenant=None, key=key, json=PROVISION if route == "provision" else None)
    assert_rejected(seeded, before, rv, 401)
    assert rv.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("route", ["status", "events", "disable", "failover", "cleanup", "task", "unsubscribe",
                                   "deliveries", "switchover", "unschedule"])
def test_with_another_tenants_key(seeded, route):
    before = snapshot(seeded.r)
    assert_rejected(seeded, before, call(seeded, route, tenant="globex"), 404)


def test_another_tenants_pools_are_not_listed(seeded):
    rv = call(seeded, "pools", tenant="globex")
    assert rv.status_code == 200 and [p["machine_id"] for p in rv.json["pools"]] == [777]


# -- property-based: arbitrary bodies and query strings on every route ----------------------------------------------

FIELDS = ["machine_id", "host_machine_id", "gpu_name", "image", "disk_size", "volume_size", "max_price", "wait",
          "min_gpus", "verified", "onstart", "env", "at"]
scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.sampled_from([0, 1, 123, 456, MAX_ID])
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30)
           | st.sampled_from(["RTX_4090", "pytorch/pytorch", "50", "true", "1e309", "NaN"]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=10), inner, max_size=4),
                           max_leaves=12)
bodies = (st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=10), json_values, max_size=6) | json_values)
query_values = st.text(max_size=20) | st.integers(-(2**70), 2**70).map(str) | st.floats().map(str) | st.sampled_from(
    ["0", "1", "0.01", "120", "121", "-1", "true", "false", "RTX_4090"])
queries = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), query_values, max_size=4)
machines = st.sampled_from([MACHINE, 777, 456, 0]) | st.integers(-(2**64), 2**64)
tasks = st.sampled_from([TASK, "0" * 32]) | st.text("0123456789abcdef", min_size=0, max_size=40)
webhooks = st.sampled_from([WEBHOOK, "wh_" + "0" * 32]) | st.text("wh_0123456789abcdef", min_size=0, max_size=40)


@pytest.fixture
def property_env(monkeypatch):
    """One app and one fakeredis for the whole run, reset before every example.

    ?wait= is capped at 10 ms: enqueued work never runs here, and a valid wait would block. No webhook URL
    resolves: a unit test never reaches the network.
    """
    env = make_env(monkeypatch)
    monkeypatch.setattr(socket, "getaddrinfo", mock.Mock(side_effect=socket.gaierror("no network here")))
    wait_op = env.store.wait_op
    env.store.wait_op = lambda op_id, timeout: wait_op(op_id, min(timeout, 0.01))
    return env


@pytest.mark.parametrize("route", sorted(ROUTES))
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(body=bodies, query=queries, machine=machines, task=tasks, webhook=webhooks,
       encode=st.sampled_from(["json", "raw", "form"]), tenant=st.sampled_from(["acme", "acme", "globex", None]))
def test_arbitrary_input_never_5xx(property_env, route, body, query, machine, task, webhook, encode, tenant):
    env = property_env
    env.reset()
    seed(env)
    before = snapshot(env.r)
    method, _ = ROUTES[route]
    if encode == "json":
        kwargs = {"data": json.dumps(body), "content_type": "application/json"}
    elif encode == "raw":
        kwargs = {"data": json.dumps(body)}
    else:
        kwargs = {"data": {str(k): str(v) for k, v in body.items()} if isinstance(body, dict) else str(body)}
    rv = env.api(method, url(route, machine, task, webhook), tenant=tenant, query_string=query, **kwargs)
    text = rv.get_data(as_text=True)
    assert rv.status_code < 500, (rv.status_code, text)
    assert rv.is_json and "Traceback" not in text
    if rv.status_code >= 400:
        assert rv.json["code"] == rv.status_code and rv.json["status"]
        assert env.enqueued == [], env.enqueued
        if rv.status_code == 409:  # the check took the machine's lock (a new epoch) and gave it back
            after = {k: v for k, v in snapshot(env.r).items() if not k.startswith(keys.epoch(""))}
            assert after == {k: v for k, v in before.items() if not k.startswith(keys.epoch(""))}
        else:
            assert snapshot(env.r) == before
    if tenant is None:
        assert rv.status_code in (401, 404, 405)


def test_every_route_of_the_app_is_exercised_here():
    from app import create_app
    from tests.api.test_openapi import api_routes

    ours = {(m, p.replace("{m}", "{machine_id}").replace("{t}", "{task_id}").replace("{w}", "{webhook_id}").replace("{d}", "{delivery_id}"))
            for m, p in ROUTES.values()}
    # Vast's notifications are signed, not keyed: their bad input is tests/api/test_provider_notifications.py's
    signed = {("POST", "/api/v1/provider/notifications"), ("POST", "/api/v1/provider/notifications/{account}")}
    assert ours == api_routes(create_app()) - signed, "a route was added: add it to ROUTES"
