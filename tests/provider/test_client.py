"""Unit tests of the Vast.ai client (app/vast.py) against `responses`."""

from __future__ import annotations

import json
import logging
import time
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses
from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError

from app import vast
from app.vast import (
    InstanceListing,
    NotFound,
    OfferUnavailable,
    ProviderUnavailable,
    RateLimited,
    RequestRejected,
    VastClient,
    VastError,
)

BASE = "https://vast.test"
KEY = "sk-very-secret-4f9a"


def make_client(**kw) -> VastClient:
    opts = dict(connect_timeout=0.5, read_timeout=2.0, max_attempts=4, backoff_base=0.001,
                backoff_max=0.004, total_timeout=5.0)
    opts.update(kw)
    return VastClient(BASE, KEY, **opts)


@pytest.fixture
def rsps():
    with responses.RequestsMock() as r:
        yield r


@pytest.fixture
def client() -> VastClient:
    return make_client()


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    """Record backoff sleeps instead of sleeping."""
    recorded: list[float] = []
    monkeypatch.setattr(vast.time, "sleep", recorded.append)
    return recorded


def body_of(call) -> object:
    return json.loads(call.request.body)


def query_of(call) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(call.request.url).query, keep_blank_values=True).items()}


def path_of(call) -> str:
    return urlsplit(call.request.url).path


def refused() -> requests.ConnectionError:
    """What requests raises when the TCP connect is refused (the request never left)."""
    return requests.ConnectionError(MaxRetryError(None, "/", NewConnectionError(None, "Connection refused")))


def dropped() -> requests.ConnectionError:
    """What requests raises when the connection dies after the request was sent."""
    return requests.ConnectionError(ProtocolError("Connection aborted.", ConnectionResetError(104, "reset")))


# ---- every call: method, path, query, body, headers -------------------------------------------


def test_search_offers_posts_query_as_body(rsps, client):
    query = {"gpu_name": {"eq": "RTX 4090"}, "num_gpus": {"gte": "2"}, "order": [["dph_total", "asc"]]}
    rsps.post(f"{BASE}/api/v0/bundles/", json={"offers": [{"id": 1}, {"id": 2}]})
    assert client.search_offers(query) == [{"id": 1}, {"id": 2}]
    call = rsps.calls[0]
    assert body_of(call) == query
    assert call.request.headers["Authorization"] == f"Bearer {KEY}"
    assert call.request.headers["Content-Type"] == "application/json"
    assert call.request.req_kwargs["timeout"] == (0.5, 2.0)


def test_create_instance_sends_cli_body(rsps, client):
    rsps.put(f"{BASE}/api/v0/asks/4242/", json={"success": True, "new_contract": 9001, "instance_api_key": "x"})
    new_id = client.create_instance(4242, image="pytorch/pytorch", disk=20, label="warmpool-t-m-primary",
                                    onstart="echo hi", env={"FOO": "bar", "-p 8080:8080": "1"})
    assert new_id == 9001
    assert body_of(rsps.calls[0]) == {
        "client_id": "me", "image": "pytorch/pytorch", "env": {"FOO": "bar", "-p 8080:8080": "1"},
        "price": None, "disk": 20.0, "label": "warmpool-t-m-primary", "extra": None, "onstart": "echo hi",
        "image_login": None, "python_utf8": False, "lang_utf8": False, "use_jupyter_lab": False,
        "jupyter_dir": None, "force": False, "cancel_unavail": False, "template_hash_id": None,
        "user": None, "runtype": "ssh", "target_state": "running",
    }
    assert rsps.calls[0].request.headers["Content-Type"] == "application/json"


def test_create_instance_stopped_with_volume(rsps, client):
    rsps.put(f"{BASE}/api/v0/asks/7/", json={"success": True, "new_contract": 12})
    volume = {"mount_path": "/data", "create_new": False, "volume_id": 7001}
    assert client.create_instance(7, image="img", disk=10.5, label="l", target_state="stopped",
                                  volume_info=volume) == 12
    sent = body_of(rsps.calls[0])
    assert sent["target_state"] == "stopped"
    assert sent["volume_info"] == volume
    assert sent["env"] == {} and sent["onstart"] is None and sent["disk"] == 10.5


def test_show_instance(rsps, client):
    rsps.get(f"{BASE}/api/v0/instances/55/", json={"instances": {"id": 55, "actual_status": "running"}})
    assert client.show_instance(55) == {"id": 55, "actual_status": "running"}
    assert query_of(rsps.calls[0]) == {"owner": "me"}
    assert "Content-Type" not in rsps.calls[0].request.headers


def test_show_instance_gone_is_none(rsps, client):
    rsps.get(f"{BASE}/api/v0/instances/55/", json={"instances": None})
    rsps.get(f"{BASE}/api/v0/instances/56/", status=404,
             json={"success": False, "error": "no_such_instance", "msg": "Instance not found"})
    assert client.show_instance(55) is None
    assert client.show_instance(56) is None


def test_list_instances_follows_next_token(rsps, client):
    url = f"{BASE}/api/v1/instances/"
    rsps.get(url, json={"success": True, "instances": [{"id": 1}, {"id": 2}], "next_token": "tok1",
                        "label_counts": {"a": 2, "": 1}, "total_instances": 3, "instances_found": 2})
    rsps.get(url, json={"success": True, "instances": [{"id": 3}], "next_token": None,
                        "label_counts": {"ignored": 9}, "total_instances": 99})
    filters = {"actual_status": {"notin": ["running"]}, "label": {"in": ["warmpool-a", None]}}
    listing = client.list_instances(filters)
    assert listing == InstanceListing(instances=[{"id": 1}, {"id": 2}, {"id": 3}],
                                      label_counts={"a": 2, "": 1}, total_instances=3)
    first, second = rsps.calls
    assert "after_token" not in query_of(first)
    assert query_of(second)["after_token"] == "tok1"
    for call in (first, second):
        q = query_of(call)
        assert json.loads(q["select_filters"]) == filters
        assert json.loads(q["order_by"]) == [{"col": "id", "dir": "asc"}]
        assert q["limit"] == "25"
    # encoded as the CLI does: json.dumps default separators, then form encoding ("+" for spaces)
    assert "select_filters=%7B%22actual_status%22%3A+%7B%22notin%22%3A+%5B%22running%22%5D%7D" in first.request.url


def test_list_instances_default_filters(rsps, client):
    rsps.get(f"{BASE}/api/v1/instances/", json={"instances": [], "next_token": None})
    # no total_instances in the answer: the client does not guess one (the sweep then judges no vanished pool)
    assert client.list_instances() == InstanceListing([], {}, None)
    assert query_of(rsps.calls[0])["select_filters"] == "{}"


def test_list_instances_repeated_token_is_unavailable(rsps, client):
    rsps.get(f"{BASE}/api/v1/instances/", json={"instances": [{"id": 1}], "next_token": "same"})
    with pytest.raises(ProviderUnavailable):
        client.list_instances()


@pytest.mark.parametrize("call, body", [
    (lambda c: c.start_instance(77), {"state": "running"}),
    (lambda c: c.stop_instance(77), {"state": "stopped"}),
    (lambda c: c.label_instance(77, "warmpool-t-1-primary"), {"label": "warmpool-t-1-primary"}),
])
def test_manage_instance(rsps, client, call, body):
    rsps.put(f"{BASE}/api/v0/instances/77/", json={"success": True})
    assert call(client) is None
    assert body_of(rsps.calls[0]) == body


def test_stop_missing_instance_is_not_found(rsps, client):
    rsps.put(f"{BASE}/api/v0/instances/77/", status=404, json={"error": "not_found", "msg": "Instance not found"})
    with pytest.raises(NotFound) as info:
        client.stop_instance(77)
    assert info.value.status == 404


def test_destroy_instance(rsps, client):
    rsps.delete(f"{BASE}/api/v0/instances/77/", json={"success": True})
    client.destroy_instance(77)
    call = rsps.calls[0]
    assert body_of(call) == {}
    assert call.request.headers["Content-Type"] == "application/json"


@pytest.mark.parametrize("error", ["no_such_instance", "not_found"])
def test_destroy_already_gone_succeeds(rsps, client, error):
    rsps.delete(f"{BASE}/api/v0/instances/77/", status=404, json={"success": False, "error": error, "msg": "gone"})
    client.destroy_instance(77)


def test_search_volume_offers(rsps, client):
    query = {"disk_space": {"gte": 1}, "machine_id": {"eq": "777"}}
    rsps.post(f"{BASE}/api/v0/volumes/search/", json={"offers": [{"id": 6001}]})
    assert client.search_volume_offers(query) == [{"id": 6001}]
    assert body_of(rsps.calls[0]) == query


def test_create_volume(rsps, client):
    rsps.put(f"{BASE}/api/v0/volumes/", json={"success": True, "volume_name": "V.20118481"})
    assert client.create_volume(6001, 50, "warmpool-vol") == 20118481
    assert body_of(rsps.calls[0]) == {"size": 50, "id": 6001, "name": "warmpool-vol"}


def test_create_volume_unparseable_name(rsps, client):
    rsps.put(f"{BASE}/api/v0/volumes/", json={"success": True, "volume_name": "weird"})
    with pytest.raises(ProviderUnavailable):
        client.create_volume(6001, 50, "v")


def test_show_volumes(rsps, client):
    rsps.get(f"{BASE}/api/v0/volumes", json={"volumes": [{"id": 3, "machine_id": 777}]})
    assert client.show_volumes() == [{"id": 3, "machine_id": 777}]
    assert path_of(rsps.calls[0]) == "/api/v0/volumes"
    assert query_of(rsps.calls[0]) == {"owner": "me", "type": "all_volume"}


def test_delete_volume(rsps, client):
    rsps.delete(f"{BASE}/api/v0/volumes/", json={"success": True})
    client.delete_volume(3)
    assert query_of(rsps.calls[0]) == {"id": "3"}
    assert body_of(rsps.calls[0]) == {}


def test_delete_volume_already_gone_succeeds(rsps, client):
    rsps.delete(f"{BASE}/api/v0/volumes/", status=404,
                json={"success": False, "error": "no_such_volume", "msg": "Volume with that ID does not exist."})
    client.delete_volume(3)


def test_delete_volume_in_use_is_rejected(rsps, client):
    rsps.delete(f"{BASE}/api/v0/volumes/", status=400, json={"error": "invalid_args", "msg": "volume in use"})
    with pytest.raises(RequestRejected) as info:
        client.delete_volume(3)
    assert (info.value.error, info.value.msg, info.value.status) == ("invalid_args", "volume in use", 400)


def test_no_key_no_authorization_header(rsps):
    rsps.post(f"{BASE}/api/v0/bundles/", json={"offers": []})
    VastClient(BASE + "/").search_offers({})
    assert "Authorization" not in rsps.calls[0].request.headers
    assert rsps.calls[0].request.url == f"{BASE}/api/v0/bundles/"


def test_session_is_pooled(rsps, client):
    adapter = client._session.get_adapter(BASE)
    assert adapter._pool_maxsize == 32
    rsps.get(f"{BASE}/api/v0/volumes", json={"volumes": []})
    client.show_volumes()
    client.show_volumes()
    assert len(rsps.calls) == 2


# ---- retries ----------------------------------------------------------------------------------


def test_429_without_retry_after_backs_off_then_succeeds(rsps, client, sleeps, caplog):
    url = f"{BASE}/api/v0/bundles/"
    rsps.post(url, status=429, body="API requests too frequent endpoint threshold=2.0")
    rsps.post(url, status=429, json={"detail": "slow down"})
    rsps.post(url, json={"offers": []})
    with caplog.at_level(logging.WARNING, logger="app.vast"):
        assert client.search_offers({}) == []
    assert len(rsps.calls) == 3
    assert len(sleeps) == 2
    assert 0 <= sleeps[0] <= 0.001 and 0 <= sleeps[1] <= 0.002  # full jitter under base * 2**n
    assert [r.levelname for r in caplog.records] == ["WARNING", "WARNING"]
    assert "POST /api/v0/bundles/" in caplog.records[0].getMessage()


def test_429_honours_retry_after(rsps, client, sleeps):
    url = f"{BASE}/api/v0/instances/1/"
    rsps.put(url, status=429, headers={"Retry-After": "1.5"}, body="API requests too frequent")
    rsps.put(url, json={"success": True})
    client.start_instance(1)
    assert sleeps == [1.5]


def test_429_retry_after_beyond_total_time_raises_at_once(rsps, sleeps):
    rsps.put(f"{BASE}/api/v0/instances/1/", status=429, headers={"Retry-After": "30"})
    with pytest.raises(RateLimited) as info:
        make_client(total_timeout=5).start_instance(1)
    assert info.value.retry_after == 30
    assert len(rsps.calls) == 1 and sleeps == []


def test_429_exhausted_is_rate_limited(rsps, client, sleeps):
    rsps.get(f"{BASE}/api/v0/instances/1/", status=429, headers={"Retry-After": "0.25"},
             json={"detail": "API requests too frequent"})
    with pytest.raises(RateLimited) as info:
        client.show_instance(1)
    assert len(rsps.calls) == 4
    assert sleeps == [0.25, 0.25, 0.25]
    assert (info.value.status, info.value.retry_after) == (429, 0.25)


def test_http_date_retry_after_is_ignored(rsps, client, sleeps):
    url = f"{BASE}/api/v0/instances/1/"
    rsps.get(url, status=429, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})
    rsps.get(url, json={"instances": None})
    assert client.show_instance(1) is None
    assert 0 <= sleeps[0] <= 0.001


@pytest.mark.parametrize("with_reset", [True, False])
def test_search_quota_is_never_retried(rsps, client, sleeps, with_reset):
    headers = {"X-RateLimit-Reset": str(time.time() + 3600)} if with_reset else {}
    rsps.post(f"{BASE}/api/v0/bundles/", status=429, headers=headers,
              json={"success": False, "error": "search_quota_exceeded", "msg": "daily quota"})
    with pytest.raises(RateLimited) as info:
        client.search_offers({})
    assert len(rsps.calls) == 1 and sleeps == []
    if with_reset:
        assert 3500 < info.value.retry_after <= 3600
    else:
        assert info.value.retry_after is None


@pytest.mark.parametrize("status", [502, 503, 504])
def test_gateway_errors_are_retried(rsps, client, sleeps, status):
    url = f"{BASE}/api/v1/instances/"
    rsps.get(url, status=status, body="<html>bad gateway</html>")
    rsps.get(url, json={"instances": [{"id": 1}], "next_token": None, "total_instances": 1})
    assert client.list_instances().instances == [{"id": 1}]
    assert len(rsps.calls) == 2 and len(sleeps) == 1


@pytest.mark.parametrize("status", [502, 503, 504])
def test_gateway_errors_exhausted_are_unavailable(rsps, client, sleeps, status):
    rsps.get(f"{BASE}/api/v0/volumes", status=status)
    with pytest.raises(ProviderUnavailable) as info:
        client.show_volumes()
    assert info.value.status == status
    assert len(rsps.calls) == 4 and len(sleeps) == 3


def test_500_is_unavailable_without_retry(rsps, client, sleeps):
    rsps.get(f"{BASE}/api/v0/volumes", status=500, json={"error": "server_error"})
    with pytest.raises(ProviderUnavailable) as info:
        client.show_volumes()
    assert info.value.status == 500
    assert len(rsps.calls) == 1 and sleeps == []


@pytest.mark.parametrize("exc", [refused(), dropped(), requests.ConnectTimeout("connect timed out"),
                                 requests.ReadTimeout("read timed out")])
def test_transport_errors_are_retried(rsps, client, sleeps, exc):
    url = f"{BASE}/api/v0/instances/5/"
    rsps.delete(url, body=exc)
    rsps.delete(url, json={"success": True})
    client.destroy_instance(5)
    assert len(rsps.calls) == 2 and len(sleeps) == 1


def test_transport_errors_exhausted_are_unavailable(rsps, client, sleeps):
    rsps.get(f"{BASE}/api/v0/instances/5/", body=requests.ReadTimeout("read timed out"))
    with pytest.raises(ProviderUnavailable) as info:
        client.show_instance(5)
    assert info.value.status is None
    assert isinstance(info.value.__cause__, requests.ReadTimeout)
    assert len(rsps.calls) == 4


def test_max_attempts_one_means_no_retry(rsps, sleeps):
    rsps.get(f"{BASE}/api/v0/volumes", status=503)
    with pytest.raises(ProviderUnavailable):
        make_client(max_attempts=1).show_volumes()
    assert len(rsps.calls) == 1 and sleeps == []


def test_total_timeout_bounds_the_retries(rsps):
    rsps.get(f"{BASE}/api/v0/volumes", status=503)
    c = make_client(max_attempts=1000, backoff_base=0.05, backoff_max=0.05, total_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(ProviderUnavailable):
        c.show_volumes()
    assert time.monotonic() - started < 5  # the retries stop at the deadline (1000 attempts would take ~25 s)
    assert 2 <= len(rsps.calls) < 1000


def test_per_attempt_timeout_never_exceeds_time_left(rsps):
    rsps.get(f"{BASE}/api/v0/volumes", json={"volumes": []})
    make_client(connect_timeout=3.05, read_timeout=30, total_timeout=2.0).show_volumes()
    connect, read = rsps.calls[0].request.req_kwargs["timeout"]
    assert connect <= 2.0 and read <= 2.0


# ---- creates are not idempotent ---------------------------------------------------------------


def _create_instance(c: VastClient) -> int:
    return c.create_instance(1, image="img", disk=10, label="warmpool-t-m-standby", target_state="stopped")


def _create_volume(c: VastClient) -> int:
    return c.create_volume(1, 50, "warmpool-t-m-vol")


CREATES = [
    pytest.param(_create_instance, f"{BASE}/api/v0/asks/1/", {"success": True, "new_contract": 9}, 9, id="instance"),
    pytest.param(_create_volume, f"{BASE}/api/v0/volumes/", {"success": True, "volume_name": "V.9"}, 9, id="volume"),
]


@pytest.mark.parametrize("create, url, ok, new_id", CREATES)
@pytest.mark.parametrize("failure", [
    {"status": 502}, {"status": 503}, {"status": 504}, {"status": 500},
    {"body": requests.ReadTimeout("read timed out")}, {"body": dropped()},
], ids=["502", "503", "504", "500", "read-timeout", "connection-dropped"])
def test_create_not_retried_when_request_may_have_arrived(rsps, client, sleeps, create, url, ok, new_id, failure):
    rsps.put(url, **failure)
    with pytest.raises(ProviderUnavailable):
        create(client)
    assert len(rsps.calls) == 1 and sleeps == []


@pytest.mark.parametrize("create, url, ok, new_id", CREATES)
@pytest.mark.parametrize("failure", [
    {"status": 429, "body": "API requests too frequent"},
    {"body": refused()},
    {"body": requests.ConnectTimeout("connect timed out")},
], ids=["429", "connection-refused", "connect-timeout"])
def test_create_retried_when_request_surely_not_processed(rsps, client, sleeps, create, url, ok, new_id, failure):
    rsps.put(url, **failure)
    rsps.put(url, json=ok)
    assert create(client) == new_id
    assert len(rsps.calls) == 2 and len(sleeps) == 1


# ---- error mapping ----------------------------------------------------------------------------


@pytest.mark.parametrize("status, body", [
    (401, {"success": False, "error": "auth_error", "msg": "Invalid user key"}),
    (403, {"success": False, "error": "forbidden", "msg": "no"}),
    (404, {"success": False, "error": "auth_error", "msg": "Invalid user key"}),
])
def test_auth_errors_are_rejected(rsps, client, status, body):
    rsps.get(f"{BASE}/api/v0/instances/1/", status=status, json=body)
    with pytest.raises(RequestRejected) as info:
        client.show_instance(1)
    assert type(info.value) is RequestRejected
    assert (info.value.error, info.value.status) == ("auth_error", status)


@pytest.mark.parametrize("status, body", [
    (404, {"success": False, "error": "invalid_args",
           "msg": "error 404/3603: no_such_ask Instance type by id 1 is not available.", "ask_id": 1}),
    (410, {"success": False, "error": "no_such_ask", "msg": "no longer available"}),
])
def test_offer_gone_on_create(rsps, client, status, body):
    rsps.put(f"{BASE}/api/v0/asks/1/", status=status, json=body)
    with pytest.raises(OfferUnavailable) as info:
        _create_instance(client)
    assert isinstance(info.value, RequestRejected)
    assert (info.value.error, info.value.msg, info.value.status) == (body["error"], body["msg"], status)


def test_other_4xx_is_rejected_with_vast_error_and_msg(rsps, client):
    rsps.put(f"{BASE}/api/v0/asks/1/", status=400, json={"error": "invalid_args", "msg": "disk too small"})
    with pytest.raises(RequestRejected) as info:
        _create_instance(client)
    assert type(info.value) is RequestRejected
    assert (info.value.error, info.value.msg) == ("invalid_args", "disk too small")
    assert "PUT /api/v0/asks/1/: 400 invalid_args: disk too small" in str(info.value)


def test_4xx_with_message_key_and_plain_text(rsps, client):
    url = f"{BASE}/api/v0/instances/1/"
    rsps.put(url, status=400, json={"error": "label_too_long", "message": "label too long"})
    rsps.put(url, status=410, body="gone")
    with pytest.raises(RequestRejected) as info:
        client.start_instance(1)
    assert (info.value.error, info.value.msg) == ("label_too_long", "label too long")
    with pytest.raises(RequestRejected) as info:
        client.start_instance(1)
    assert (info.value.error, info.value.msg, info.value.status) == (None, None, 410)


def test_404_without_not_found_marker_is_not_treated_as_gone(rsps, client):
    """A proxy's HTML 404 must never look like "the instance is gone" (that would trigger a failover)."""
    rsps.get(f"{BASE}/api/v0/instances/1/", status=404, body="<html>Not Found</html>")
    with pytest.raises(RequestRejected):
        client.show_instance(1)


def test_success_false_is_rejected(rsps, client):
    rsps.put(f"{BASE}/api/v0/instances/1/", json={"success": False, "msg": "cannot start"})
    with pytest.raises(RequestRejected) as info:
        client.start_instance(1)
    assert (info.value.status, info.value.msg) == (200, "cannot start")


@pytest.mark.parametrize("kwargs", [
    {"body": "<html>oops</html>"}, {"json": [1, 2]}, {"json": {"no_offers": []}}, {"json": {"offers": None}},
], ids=["html", "list", "missing-key", "null"])
def test_garbage_2xx_is_unavailable(rsps, client, kwargs):
    rsps.post(f"{BASE}/api/v0/bundles/", **kwargs)
    with pytest.raises(ProviderUnavailable):
        client.search_offers({})


def test_all_errors_share_the_base(rsps, client):
    for cls in (NotFound, RateLimited, ProviderUnavailable, RequestRejected, OfferUnavailable):
        assert issubclass(cls, VastError)


# ---- the API key never leaks ------------------------------------------------------------------


def test_key_never_in_logs_errors_or_repr(rsps, client, sleeps, caplog):
    echo = {"success": False, "error": "auth_error", "msg": f"Invalid user key {KEY}"}
    rsps.get(f"{BASE}/api/v0/instances/1/", status=503, body=f"upstream said {KEY}")
    rsps.get(f"{BASE}/api/v0/instances/1/", status=401, json=echo)
    rsps.put(f"{BASE}/api/v0/instances/2/", body=requests.ConnectionError(f"failed for Bearer {KEY}"))
    errors: list[VastError] = []
    with caplog.at_level(logging.DEBUG):
        for call in (lambda: client.show_instance(1), lambda: client.stop_instance(2)):
            with pytest.raises(VastError) as info:
                call()
            errors.append(info.value)
    assert caplog.records  # the retries were logged ...
    assert KEY not in caplog.text  # ... without the key
    for err in errors:
        assert KEY not in str(err) and KEY not in repr(err)
        assert KEY not in repr(err.args)
    assert KEY not in repr(client) and "hidden" in repr(client)


# ---- throttle ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name, method, url, reply, call", [
    ("search_offers", "POST", "/api/v0/bundles/", {"offers": []}, lambda c: c.search_offers({})),
    ("create_instance", "PUT", "/api/v0/asks/1/", {"new_contract": 1}, _create_instance),
    ("show_instance", "GET", "/api/v0/instances/1/", {"instances": None}, lambda c: c.show_instance(1)),
    ("list_instances", "GET", "/api/v1/instances/", {"instances": []}, lambda c: c.list_instances()),
    ("manage_instance", "PUT", "/api/v0/instances/1/", {"success": True}, lambda c: c.start_instance(1)),
    ("manage_instance", "PUT", "/api/v0/instances/1/", {"success": True}, lambda c: c.stop_instance(1)),
    ("destroy_instance", "DELETE", "/api/v0/instances/1/", {"success": True}, lambda c: c.destroy_instance(1)),
    ("search_volumes", "POST", "/api/v0/volumes/search/", {"offers": []}, lambda c: c.search_volume_offers({})),
    ("volumes", "PUT", "/api/v0/volumes/", {"volume_name": "V.1"}, _create_volume),
    ("volumes", "GET", "/api/v0/volumes", {"volumes": []}, lambda c: c.show_volumes()),
    ("volumes", "DELETE", "/api/v0/volumes/", {"success": True}, lambda c: c.delete_volume(1)),
])
def test_throttle_called_before_every_attempt(rsps, sleeps, name, method, url, reply, call):
    seen: list[str] = []
    rsps.add(method, BASE + url, status=429)
    rsps.add(method, BASE + url, json=reply)
    call(make_client(throttle=seen.append))
    assert seen == [name, name]


def test_throttle_called_per_page(rsps):
    seen: list[str] = []
    rsps.get(f"{BASE}/api/v1/instances/", json={"instances": [{"id": 1}], "next_token": "t"})
    rsps.get(f"{BASE}/api/v1/instances/", json={"instances": [{"id": 2}], "next_token": None})
    make_client(throttle=seen.append).list_instances()
    assert seen == ["list_instances", "list_instances"]


def test_throttle_errors_propagate(rsps):
    def refuse(name: str) -> None:
        raise RuntimeError("budget exhausted")

    with pytest.raises(RuntimeError):
        make_client(throttle=refuse).show_volumes()
    assert len(rsps.calls) == 0


def test_list_instances_attempts_override(rsps):
    """A periodic check asks once: its next run is the retry."""
    rsps.get(f"{BASE}/api/v1/instances/", status=503, json={"error": "unavailable"})
    with pytest.raises(ProviderUnavailable):
        make_client().list_instances({}, attempts=1)
    assert len(rsps.calls) == 1
