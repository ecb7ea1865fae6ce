"""The HTTP API with the Flask test client: fakeredis for the store, enqueueing recorded (tests/unit/fakes.py)."""

import contextlib
import importlib
import time

import pytest

from app.pools import State, pool_id
from app.runtime import Throttled
from app.settings import Settings
from app.store import keys
from app.vast import ProviderUnavailable
from tests.unit.fakes import snapshot

ACTIVE, DEGRADED, DISABLED, PROVISIONING, SEARCHING, FAILOVER = (
    State.ACTIVE, State.DEGRADED, State.DISABLED, State.PROVISIONING, State.SEARCHING, State.FAILOVER)

AUTHED = [("GET", "/api/v1/warmpool/status/123"), ("GET", "/api/v1/warmpool/pools"),
          ("GET", "/api/v1/warmpool/events/123"), ("GET", "/api/v1/warmpool/hosts"),
          ("POST", "/api/v1/warmpool/provision"), ("POST", "/api/v1/warmpool/enable/123"),
          ("POST", "/api/v1/warmpool/disable/123"), ("POST", "/api/v1/warmpool/failover/test/123"),
          ("DELETE", "/api/v1/warmpool/cleanup/123"), ("GET", "/api/v1/tasks/" + "a" * 32)]
SEED_STATUS = {"machine_id", "state", "host_machine_id", "volume_id", "primary_gpu_id", "standby_gpu_id",
               "standby_state", "primary_ssh_host", "primary_ssh_port", "last_health_check", "failover_count",
               "last_failover_at", "error_message"}
operations = importlib.import_module("app.operations")


def assert_error(rv, code):
    assert rv.status_code == code, rv.get_data(as_text=True)
    assert rv.is_json and rv.json["code"] == code and rv.json["status"]
    assert "message" in rv.json or "errors" in rv.json, rv.json
    return rv.json


def provision(env, machine_id=123, tenant="acme", query="", **fields):
    return env.api("POST", "/api/v1/warmpool/provision" + query, tenant=tenant,
                   json={"machine_id": machine_id, "host_machine_id": 88888, **fields})


# -- auth ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method, path", AUTHED)
@pytest.mark.parametrize("key", [None, "Bearer nope", "Bearer ", "Basic acme-key", "acme-key", "Bearer acme-key2"])
def test_401_without_or_with_a_wrong_key(env, method, path, key):
    env.add_pool(123)
    before = snapshot(env.r)
    rv = env.api(method, path, tenant=None, key=key, json={"machine_id": 123, "host_machine_id": 88888})
    body = assert_error(rv, 401)
    assert rv.headers["WWW-Authenticate"] == "Bearer" and "API key" in body["message"]
    assert env.enqueued == [] and snapshot(env.r) == before and env.vast.searches == []


def test_a_key_created_by_the_cli_is_found_by_its_hash(env):
    env.store.add_api_key("initech", "cli-made-key")
    rv = env.api("GET", "/api/v1/warmpool/pools", tenant=None, key="Bearer cli-made-key")
    assert rv.status_code == 200 and rv.json == {"pools": [], "count": 0, "cost_per_hour": 0.0}
    assert env.api("GET", "/api/v1/warmpool/pools", tenant=None, key="bearer  cli-made-key ").status_code == 200


def test_probes_need_no_key(env):
    assert env.client.get("/healthz").json == {"status": "ok"}
    assert env.client.get("/readyz").status_code == 503  # no worker seen in the fake Redis
    env.store.mark_worker_seen()
    rv = env.client.get("/readyz")
    assert rv.status_code == 200 and rv.json["checks"] == {"redis": "ok", "worker": "ok"}


# -- tenants -------------------------------------------------------------------------------------------------


def test_another_tenants_machine_is_404_everywhere(env):
    env.add_pool(123, tenant="acme")
    env.add_pool(124, tenant="acme", state=ACTIVE)
    env.hold_lock(124, tenant="acme")  # an operation runs on it: a queued disable/cleanup must still be 404
    before = snapshot(env.r)
    for method, path in [("GET", "/api/v1/warmpool/status/123"), ("GET", "/api/v1/warmpool/events/123"),
                         ("POST", "/api/v1/warmpool/disable/123"), ("POST", "/api/v1/warmpool/failover/test/123"),
                         ("DELETE", "/api/v1/warmpool/cleanup/123"), ("POST", "/api/v1/warmpool/disable/124"),
                         ("DELETE", "/api/v1/warmpool/cleanup/124")]:
        assert_error(env.api(method, path, tenant="globex"), 404)
    assert env.api("GET", "/api/v1/warmpool/pools", tenant="globex").json == {"pools": [], "count": 0, "cost_per_hour": 0.0}
    assert env.enqueued == [] and snapshot(env.r) == before


def test_another_tenants_task_is_404(env):
    rv = provision(env, tenant="acme")
    task = rv.headers["Location"]
    assert env.api("GET", task, tenant="acme").status_code == 200
    body = assert_error(env.api("GET", task, tenant="globex"), 404)
    assert rv.json["task_id"] in body["message"]


def test_the_same_machine_id_is_a_different_pool_per_tenant(env):
    assert provision(env, tenant="acme").status_code == 202
    assert provision(env, tenant="globex").status_code == 202  # globex's own machine 123
    assert {e[1]["pid"] for e in env.enqueued} == {"acme:123", "globex:123"}
    assert env.api("GET", "/api/v1/warmpool/pools", tenant="acme").json["count"] == 1


# -- status, pools, events ---------------------------------------------------------------------------------------


def test_status_has_the_seed_fields(env):
    env.add_pool(123, failover_count=2, created_at="2024-12-20T15:00:00.000Z")
    env.r.set(keys.SWEEP_LAST, "2024-12-20T15:30:00.000Z")
    rv = env.api("GET", "/api/v1/warmpool/status/123")
    assert rv.status_code == 200 and SEED_STATUS <= set(rv.json)
    assert rv.json["state"] == ACTIVE and rv.json["failover_count"] == 2 and rv.json["primary_gpu_id"] == 1123
    assert rv.json["last_health_check"] == "2024-12-20T15:30:00.000Z"
    assert "tenant" not in rv.json and "heal_attempts" not in rv.json  # internals stay inside


def test_last_health_check_is_null_before_the_pool_existed(env):
    env.r.set(keys.SWEEP_LAST, "2024-12-20T15:30:00.000Z")  # a sweep ran before the pool was made
    env.add_pool(123)
    assert env.api("GET", "/api/v1/warmpool/status/123").json["last_health_check"] is None
    assert env.api("GET", "/api/v1/warmpool/pools").json["pools"][0]["last_health_check"] is None
    env.r.set(keys.SWEEP_LAST, "2999-01-01T00:00:00.000Z")
    assert env.api("GET", "/api/v1/warmpool/status/123").json["last_health_check"] == "2999-01-01T00:00:00.000Z"


@pytest.mark.parametrize("state", [PROVISIONING, SEARCHING, FAILOVER, DISABLED])
def test_last_health_check_is_null_while_the_sweep_does_not_watch_the_pool(env, state):
    env.add_pool(123, state=state)
    env.r.set(keys.SWEEP_LAST, "2999-01-01T00:00:00.000Z")
    assert env.api("GET", "/api/v1/warmpool/status/123").json["last_health_check"] is None


def test_status_404_for_an_unknown_machine(env):
    body = assert_error(env.api("GET", "/api/v1/warmpool/status/999"), 404)
    assert "999" in body["message"]


def test_pools_lists_the_tenants_pools(env):
    env.add_pool(7)
    env.add_pool(3, state=DEGRADED)
    env.add_pool(5, tenant="globex")
    rv = env.api("GET", "/api/v1/warmpool/pools")
    assert rv.json["count"] == 2 and [p["machine_id"] for p in rv.json["pools"]] == [3, 7]


def test_events_newest_first_and_404(env):
    env.add_pool(123)
    for i in range(3):
        env.store.event("acme:123", "tick", f"event {i}")
    rv = env.api("GET", "/api/v1/warmpool/events/123")
    assert rv.status_code == 200 and rv.json["machine_id"] == 123
    assert [e["message"] for e in rv.json["events"]] == ["event 2", "event 1", "event 0"]
    assert_error(env.api("GET", "/api/v1/warmpool/events/124"), 404)


# -- hosts -------------------------------------------------------------------------------------------------------


def offer(id, machine_id, num_gpus, dph):
    return {"id": id, "machine_id": machine_id, "num_gpus": num_gpus, "dph_total": dph, "gpu_frac": num_gpus / 4,
            "reliability": 0.98, "verification": "verified", "gpu_name": "RTX 4090", "geolocation": "US"}


def test_hosts_groups_offers_as_the_seed_shows(env):
    env.vast.offers = [offer(1, 88888, 1, 0.45), offer(2, 88888, 3, 1.35), offer(3, 77777, 1, 0.2),
                       offer(4, 66666, 4, 2.5)]
    rv = env.api("GET", "/api/v1/warmpool/hosts?gpu_name=RTX_4090&max_price=2&verified=false")
    assert rv.status_code == 200 and rv.json["count"] == 1
    host = rv.json["hosts"][0]
    assert (host["machine_id"], host["total_gpus"], host["available_gpus"], host["gpu_name"]) == (88888, 4, 3, "RTX_4090")
    assert host["can_create_warm_pool"] and host["offers"][0]["offer_id"] == 1
    query, = env.vast.searches
    assert query["gpu_name"] == {"eq": "RTX 4090"} and "dph_total" not in query and "verified" not in query
    rv = env.api("GET", "/api/v1/warmpool/hosts?min_gpus=1")
    assert rv.json["count"] == 3 and env.vast.searches[1]["verified"] == {"eq": True}  # verified by default


def test_hosts_are_cached_briefly(env):
    env.configure(hosts_cache_seconds=15)
    env.vast.offers = [offer(1, 88888, 2, 0.9)]
    first = env.api("GET", "/api/v1/warmpool/hosts").json
    assert env.api("GET", "/api/v1/warmpool/hosts").json == first and len(env.vast.searches) == 1
    env.api("GET", "/api/v1/warmpool/hosts?gpu_name=A100")  # another GPU is another search
    assert len(env.vast.searches) == 2
    # a fresh max_price or min_gpus filters the cached search: a client cannot make every request a miss
    assert env.api("GET", "/api/v1/warmpool/hosts?max_price=0.5").json["count"] == 0
    assert env.api("GET", "/api/v1/warmpool/hosts?max_price=0.91&min_gpus=1").json == first
    assert len(env.vast.searches) == 2


@pytest.mark.parametrize("holders_per_tenant", [0, 4])
def test_hosts_503_with_retry_after_when_the_rate_budget_has_no_slot_now(env, monkeypatch, holders_per_tenant):
    """The budget has no slot now: past the tenant's wait slots the miss answers 503 at once; holding one, it
    may wait for a slot (as the real throttle does outside ``without_waiting``)."""
    from app import runtime

    env.configure(wait_max_holders_per_tenant=holders_per_tenant)
    searched = env.vast.search_offers

    def busy_budget(query):
        if runtime.reserve_within.get() == 0:  # may not wait: what the real throttle raises
            raise Throttled(7.2)
        return searched(query)

    monkeypatch.setattr(env.vast, "search_offers", busy_budget)
    rv = env.api("GET", "/api/v1/warmpool/hosts")
    if holders_per_tenant:
        assert rv.status_code == 200
        return
    assert_error(rv, 503)
    assert rv.headers["Retry-After"] == "8" and "rate budget" in rv.json["message"]


def test_hosts_503_when_the_provider_fails(env):
    env.vast.error = ProviderUnavailable("down", 502)
    rv = env.api("GET", "/api/v1/warmpool/hosts")
    assert_error(rv, 503)
    assert rv.headers["Retry-After"] and env.r.keys(keys.offers_cache("*")) == []


def test_hosts_422_names_the_field(env):
    body = assert_error(env.api("GET", "/api/v1/warmpool/hosts?min_gpus=two&verified=maybe"), 422)
    assert set(body["errors"]["query"]) == {"min_gpus", "verified"} and env.vast.searches == []


# -- provision ------------------------------------------------------------------------------------------------------


def test_provision_202_with_location_and_one_chain(env):
    rv = provision(env, gpu_name="RTX_4090", disk_size=60)
    assert rv.status_code == 202, rv.json
    task_id = rv.json["task_id"]
    assert rv.headers["Location"] == f"/api/v1/tasks/{task_id}"
    assert rv.json["success"] is True and rv.json["status"]["state"] == PROVISIONING
    assert rv.json["status"]["task_id"] == task_id and rv.json["status"]["machine_id"] == 123
    (kind, ctx), = env.enqueued
    assert kind == "provision" and ctx["search"] is False
    assert ctx["steps"] == ["warmpool.provision.create_volume", "warmpool.provision.create_primary",
                            "warmpool.provision.await_primary", "warmpool.provision.create_standby"]
    assert (ctx["pid"], ctx["operation"], ctx["op_id"]) == ("acme:123", "provision", task_id)
    assert ctx["epoch"] == env.store.epoch("acme:123") and env.store.is_locked("acme:123")
    pool = env.store.get_pool("acme:123")
    assert (pool["state"], pool["host_machine_id"], pool["gpu_name"], pool["disk_size"], pool["volume_size"]) == (
        PROVISIONING, 88888, "RTX_4090", 60, 100)
    assert pool["op_id"] == task_id and ctx["seq"] == pool["seq"]
    assert pool["image"] == Settings().default_image
    task = env.api("GET", rv.headers["Location"]).json
    assert (task["task_id"], task["state"], task["operation"], task["machine_id"]) == (task_id, "PENDING",
                                                                                       "provision", 123)


def test_priority_is_kept_from_the_spec_and_shown_in_status(env):
    assert provision(env, priority=7).status_code == 202
    assert env.store.get_pool("acme:123")["priority"] == 7
    assert env.api("GET", "/api/v1/warmpool/status/123").json["priority"] == 7
    assert provision(env, machine_id=124).json["status"]["priority"] == 0  # the default


def test_provision_twice_409_while_the_first_runs(env):
    assert provision(env).status_code == 202
    before = snapshot(env.r)
    body = assert_error(provision(env), 409)
    assert "in flight" in body["message"]
    assert len(env.enqueued) == 1 and snapshot(env.r) == before


@pytest.mark.parametrize("state", [ACTIVE, PROVISIONING, SEARCHING, FAILOVER])
def test_provision_409_when_the_machine_has_a_pool(env, state):
    pool = env.add_pool(123, state=state)
    body = assert_error(provision(env), 409)
    assert "already has a warm pool" in body["message"]
    assert env.enqueued == [] and env.store.get_pool("acme:123") == pool
    assert not env.store.is_locked("acme:123")  # the lock taken for the check is given back


def test_provision_409_on_another_host_while_the_volume_exists(env):
    env.add_pool(123, state=DEGRADED, host_machine_id=77777)
    assert_error(provision(env), 409)
    assert env.enqueued == []


@pytest.mark.parametrize("fields, failovers", [
    ({"state": DEGRADED}, 4),  # the same volume and instances: the count stays
    ({"state": DISABLED, "enabled": False, "volume_id": None, "host_machine_id": None, "primary_gpu_id": None,
      "standby_gpu_id": None}, 0),  # cleaned up: provisioned from nothing, counted from 0
])
def test_provision_again_after_degraded_or_cleaned_up(env, fields, failovers):
    last = {"at": "2026-11-29T20:22:18.390Z", "trigger": "manual", "recovery_time_seconds": 11.7, "phases": {}}
    before = env.add_pool(123, failover_count=4, last_failover_at=last["at"], last_failover=last, **fields)
    epoch = env.store.epoch("acme:123")
    rv = provision(env)
    assert rv.status_code == 202, rv.json
    pool = env.store.get_pool("acme:123")
    assert pool["state"] == PROVISIONING and pool["enabled"] and pool["failover_count"] == failovers
    assert (pool["last_failover_at"], pool["last_failover"]) == ((last["at"], last) if failovers else (None, None))
    # the record goes on (rule 13: the fencing epoch only goes up); only what described the old resources starts over
    assert pool["created_at"] == before["created_at"] and env.store.epoch("acme:123") > epoch
    assert env.kinds() == ["provision"]


def finish_at_once(env, monkeypatch, result: dict):
    """Operations that end as soon as their first step is sent, with ``result``."""
    send = operations.enqueue

    def finishing(name, message):
        send(name, message)
        env.store.update_op(message["op_id"], state="SUCCESS", step="done", result=result)

    monkeypatch.setattr(operations, "enqueue", finishing)


def test_provision_wait_answers_200_with_the_result_when_it_ends(env, monkeypatch):
    finish_at_once(env, monkeypatch, {"success": True, "message": "Warm pool provisioned successfully"})
    rv = provision(env, query="?wait=30")  # a wait that timed out would answer 202
    assert rv.status_code == 200 and rv.json == {"success": True, "message": "Warm pool provisioned successfully"}
    assert "Location" not in rv.headers


def test_provision_wait_answers_202_when_it_does_not_end_in_time(env):
    started = time.monotonic()
    rv = provision(env, query="?wait=0.3")
    assert rv.status_code == 202 and rv.headers["Location"].endswith(rv.json["task_id"])
    assert time.monotonic() - started >= 0.3  # it waited its whole ?wait


def test_a_tenant_past_its_pool_limit_gets_a_clear_403(env):
    env.configure(max_pools_per_tenant=2)
    assert [provision(env, m).status_code for m in (1, 2)] == [202, 202]
    before = snapshot(env.r)
    for rv in (provision(env, 3), env.api("POST", "/api/v1/warmpool/enable/3", json={})):
        assert rv.status_code == 403 and "WARMPOOL_MAX_POOLS_PER_TENANT" in rv.json["message"]
    assert snapshot(env.r) == before  # nothing written, nothing enqueued
    assert provision(env, 3, tenant="globex").status_code == 202  # another tenant has its own limit
    assert env.api("POST", "/api/v1/warmpool/disable/1").status_code == 200  # its own pools stay usable
    assert env.store.claim_machine("acme", 1, 2) and not env.store.claim_machine("acme", 4, 2)


def test_past_the_wait_caps_the_202_answers_at_once(env, monkeypatch):
    env.configure(wait_max_holders=3, wait_max_holders_per_tenant=2)
    finish_at_once(env, monkeypatch, {"success": True, "message": "done"})  # a request that waits gets 200
    with contextlib.ExitStack() as holding:
        for _ in range(2):  # acme's two waiting requests
            assert holding.enter_context(env.store.wait_slot("acme", 60, 3, 2))
        rv = provision(env, 1, query="?wait=30")
        assert rv.status_code == 202 and rv.headers["Location"].endswith(rv.json["task_id"])
        assert provision(env, 2, tenant="globex", query="?wait=30").status_code == 200  # another tenant waits
        assert holding.enter_context(env.store.wait_slot("initech", 60, 3, 2))  # now 3 wait overall
        assert provision(env, 3, tenant="globex", query="?wait=30").status_code == 202
        rv = env.api("POST", "/api/v1/warmpool/enable/4?wait=30", tenant="globex", json={})
        assert rv.status_code == 202 and rv.headers["Location"].endswith(rv.json["task_id"])
    assert env.store.wait_holders() == 0 and env.store.wait_holders("acme") == 0  # every slot given back
    assert provision(env, 5, query="?wait=30").status_code == 200


def test_a_wait_slot_of_a_killed_holder_frees_itself(env):
    with env.store.wait_slot("acme", 0.05, 1, 1) as holding:
        assert holding
        env.r.zadd(keys.WAIT_HOLDERS, {"stale": 0})  # a web worker killed while waiting: its deadline is long gone
        env.r.zadd(keys.wait_holders("acme"), {"stale": 0})
    with env.store.wait_slot("acme", 1, 1, 1) as holding:
        assert holding


# -- enable / disable ------------------------------------------------------------------------------------------------


def test_enable_without_a_pool_searches_a_host(env):
    rv = env.api("POST", "/api/v1/warmpool/enable/123", json={"gpu_name": "RTX_4090", "max_price": 0.5})
    assert rv.status_code == 202 and rv.json["status"] == "enabled" and rv.json["task_id"]
    assert rv.headers["Location"] == f"/api/v1/tasks/{rv.json['task_id']}"
    (kind, ctx), = env.enqueued
    assert kind == "provision" and ctx["search"] is True and ctx["op_id"] == rv.json["task_id"]
    assert ctx["steps"][0] == "warmpool.provision.find_host"
    pool = env.store.get_pool("acme:123")
    assert (pool["state"], pool["gpu_name"], pool["max_price"]) == (SEARCHING, "RTX_4090", 0.5)


def test_enable_without_a_body(env):
    rv = env.api("POST", "/api/v1/warmpool/enable/123")
    assert rv.status_code == 202 and rv.json["message"] == "Warm pool enabled for machine 123"
    assert env.kinds() == ["provision"]


def test_enable_a_disabled_pool_with_resources_goes_back_to_active(env):
    env.add_pool(123, state=DISABLED, enabled=False, fallback="cpu_standby")
    rv = env.api("POST", "/api/v1/warmpool/enable/123")
    assert rv.status_code == 200 and "task_id" not in rv.json
    pool = env.store.get_pool("acme:123")
    assert (pool["state"], pool["enabled"], pool["fallback"]) == (ACTIVE, True, None)
    assert env.enqueued == [] and not env.store.is_locked("acme:123")
    assert env.store.watched_pool_ids() == ["acme:123"]


def test_enable_a_disabled_pool_on_a_host_provisions_what_is_missing(env):
    env.add_pool(123, state=DISABLED, enabled=False, standby_gpu_id=None)
    rv = env.api("POST", "/api/v1/warmpool/enable/123")
    assert rv.status_code == 202 and rv.headers["Location"].endswith(rv.json["task_id"])
    assert env.enqueued[0][1]["search"] is False
    assert env.store.get_pool("acme:123")["state"] == PROVISIONING


def test_enable_keeps_the_pools_own_sizes_and_priority_unless_the_body_names_them(env):
    env.add_pool(123, state=DISABLED, enabled=False, standby_gpu_id=None, disk_size=200, volume_size=500, priority=9)
    assert env.api("POST", "/api/v1/warmpool/enable/123").status_code == 202
    pool = env.store.get_pool("acme:123")
    assert (pool["disk_size"], pool["volume_size"], pool["priority"]) == (200, 500, 9)
    new = env.api("POST", "/api/v1/warmpool/enable/124").status_code  # a new pool: provision's defaults
    fresh = env.store.get_pool("acme:124")
    assert new == 202 and (fresh["disk_size"], fresh["volume_size"], fresh["priority"]) == (50, 100, 0)


def test_enable_409_while_an_operation_runs(env):
    env.add_pool(123, state=DISABLED, enabled=False)
    env.hold_lock(123)
    before = snapshot(env.r)
    assert_error(env.api("POST", "/api/v1/warmpool/enable/123"), 409)
    assert env.enqueued == [] and snapshot(env.r) == before


def test_disable_keeps_resources_and_reports_the_fallback(env):
    env.add_pool(123)
    rv = env.api("POST", "/api/v1/warmpool/disable/123")
    assert rv.status_code == 200
    assert rv.json == {"status": "disabled", "message": "Warm pool disabled for machine 123", "fallback": "cpu_standby"}
    pool = env.store.get_pool("acme:123")
    assert (pool["state"], pool["enabled"], pool["fallback"]) == (DISABLED, False, "cpu_standby")
    assert pool["primary_gpu_id"] == 1123 and pool["volume_id"] == 12345
    assert env.store.watched_pool_ids() == [] and env.enqueued == [] and not env.store.is_locked("acme:123")


def test_disable_while_locked_queues_behind_the_operation(env):
    env.add_pool(123, op_id="b" * 32)  # the running operation
    env.hold_lock(123)
    rv = env.api("POST", "/api/v1/warmpool/disable/123")
    assert rv.status_code == 200 and rv.json["status"] == "disabled" and rv.json["fallback"] == "cpu_standby"
    (kind, queued), = env.enqueued
    assert kind == "when_unlocked" and queued == {"pid": "acme:123", "operation": "disable",
                                                  "op_id": rv.json["task_id"], "behind": "b" * 32}
    assert env.store.get_pool("acme:123")["state"] == ACTIVE  # the running operation is not disturbed
    assert env.api("GET", f"/api/v1/tasks/{rv.json['task_id']}").json["operation"] == "disable"


# -- failover test -------------------------------------------------------------------------------------------------------


def test_failover_test_202_with_location(env):
    env.add_pool(123)
    rv = env.api("POST", "/api/v1/warmpool/failover/test/123")
    assert rv.status_code == 202, rv.json
    assert rv.headers["Location"] == f"/api/v1/tasks/{rv.json['task_id']}"
    task_id = rv.json["task_id"]
    assert rv.json["status"]["task_id"] == task_id and rv.json["status"]["state"] == FAILOVER
    (kind, launched), = env.enqueued
    assert kind == "failover" and launched["pid"] == "acme:123" and launched["trigger"] == "manual"
    assert launched["op_id"] == task_id and launched["epoch"] == env.store.epoch("acme:123")
    assert launched["steps"][0] == "warmpool.failover.stop_primary"  # a manual test does not confirm first
    assert env.store.is_locked("acme:123") and env.store.get_op(task_id)["trigger"] == "manual"


@pytest.mark.parametrize("state", [DEGRADED, DISABLED, PROVISIONING, SEARCHING, FAILOVER])
def test_failover_test_409_unless_active(env, state):
    env.add_pool(123, state=state)
    body = assert_error(env.api("POST", "/api/v1/warmpool/failover/test/123"), 409)
    assert body["message"] == f"Cannot test failover in state {state}"
    assert env.enqueued == [] and not env.store.is_locked("acme:123")


def test_failover_test_409_while_an_operation_runs(env):
    env.add_pool(123)
    env.hold_lock(123)
    assert_error(env.api("POST", "/api/v1/warmpool/failover/test/123"), 409)
    assert env.enqueued == []


# -- cleanup ---------------------------------------------------------------------------------------------------------------


def test_cleanup_202_with_location(env):
    env.add_pool(123)
    rv = env.api("DELETE", "/api/v1/warmpool/cleanup/123")
    assert rv.status_code == 202, rv.json
    assert rv.headers["Location"] == f"/api/v1/tasks/{rv.json['task_id']}"
    (kind, ctx), = env.enqueued
    assert kind == "cleanup" and (ctx["pid"], ctx["operation"], ctx["op_id"]) == ("acme:123", "cleanup",
                                                                                   rv.json["task_id"])
    assert ctx["steps"] == ["warmpool.cleanup.destroy_instances", "warmpool.cleanup.delete_volume"]
    assert env.store.is_locked("acme:123") and env.store.get_pool("acme:123")["op_id"] == rv.json["task_id"]


def test_cleanup_while_locked_queues_behind_the_operation(env):
    env.add_pool(123, op_id="b" * 32)
    env.hold_lock(123)
    rv = env.api("DELETE", "/api/v1/warmpool/cleanup/123")
    assert rv.status_code == 202 and rv.headers["Location"].endswith(rv.json["task_id"])
    (kind, queued), = env.enqueued
    assert kind == "when_unlocked" and queued == {"pid": "acme:123", "operation": "cleanup",
                                                  "op_id": rv.json["task_id"], "behind": "b" * 32}
    assert env.store.get_pool("acme:123")["op_id"] == "b" * 32  # the running operation is not disturbed


@pytest.mark.parametrize("method, path", [("POST", "/api/v1/warmpool/disable/5"),
                                          ("POST", "/api/v1/warmpool/failover/test/5"),
                                          ("DELETE", "/api/v1/warmpool/cleanup/5")])
def test_404_for_a_machine_never_seen(env, method, path):
    assert_error(env.api(method, path), 404)
    assert env.enqueued == [] and env.r.keys("*") == []


def test_cleanup_wait_answers_the_seed_body(env, monkeypatch):
    result = {"success": True, "message": "Warm pool for machine 123 cleaned up"}
    finish_at_once(env, monkeypatch, result)
    env.add_pool(123)
    rv = env.api("DELETE", "/api/v1/warmpool/cleanup/123?wait=10")
    assert rv.status_code == 200 and rv.json == result


# -- tasks ------------------------------------------------------------------------------------------------------------------


def test_task_resource_shows_state_step_and_result(env):
    op_id = env.store.new_op("acme", 123, "failover")
    env.store.update_op(op_id, state="SUCCESS", step="done", result={"recovery_time_seconds": 35.2})
    rv = env.api("GET", f"/api/v1/tasks/{op_id}")
    assert rv.status_code == 200
    assert {k: rv.json[k] for k in ("task_id", "state", "operation", "machine_id", "step", "result", "error")} == {
        "task_id": op_id, "state": "SUCCESS", "operation": "failover", "machine_id": 123, "step": "done",
        "result": {"recovery_time_seconds": 35.2}, "error": None}
    assert "tenant" not in rv.json


@pytest.mark.parametrize("task_id", ["0" * 32, "short", "x" * 33])
def test_unknown_tasks_404(env, task_id):
    assert env.api("GET", f"/api/v1/tasks/{task_id}").status_code == 404


def test_every_operation_is_recorded_with_the_pool_id(env):
    pid = pool_id("acme", 123)
    provision(env)
    assert env.enqueued[0][1]["pid"] == pid


def test_a_key_from_the_setting_can_be_revoked(env):
    """WARMPOOL_API_KEYS keys are listed and revoked like created ones ."""
    listed = env.store.api_keys(env.settings.api_keys)
    acme, = [k for k in listed if k["tenant"] == "acme"]
    assert acme["source"] == "WARMPOOL_API_KEYS" and "acme-key" not in repr(listed)
    assert env.store.revoke_api_key(acme["id"], env.settings.api_keys) == {"id": acme["id"], "tenant": "acme"}
    assert env.api("GET", "/api/v1/warmpool/pools").status_code == 401
    assert env.api("GET", "/api/v1/warmpool/pools", tenant="globex").status_code == 200
    assert [k["tenant"] for k in env.store.api_keys(env.settings.api_keys)] == ["globex"]
    assert env.store.revoke_api_key(acme["id"][:3], env.settings.api_keys) is None  # too short to name one key
    assert env.store.revoke_api_key("no-such-key", env.settings.api_keys) is None
    # a second revoke of it (still in the setting) says so, by id, and revokes nothing else
    assert env.store.revoke_api_key(acme["id"], env.settings.api_keys) == {"id": acme["id"], "already_revoked": True}
    assert env.api("GET", "/api/v1/warmpool/pools", tenant="globex").status_code == 200


def test_a_short_id_that_names_two_working_keys_and_a_revoked_one_revokes_nothing(env):
    # three stored digests sharing their first six hex digits (a real collision is out of reach): two working, one
    # revoked before
    shared = "abcdef"
    for n, tenant in ((1, "initech"), (2, "initech"), (3, "umbrella")):
        env.store.r.hset(keys.API_KEYS, f"{shared}{n:058x}", tenant)
    env.store.r.sadd(keys.REVOKED_KEYS, f"{shared}{3:058x}")
    env.store.r.hdel(keys.API_KEYS, f"{shared}{3:058x}")
    assert env.store.revoke_api_key(shared, {}) is None  # neither revoked, nor "already revoked"
    assert [k["tenant"] for k in env.store.api_keys({}) if k["id"].startswith(shared)] == ["initech", "initech"]
    one = f"{shared}{1:058x}"  # its whole digest names it alone
    assert env.store.revoke_api_key(one, {}) == {"id": one[:12], "tenant": "initech"}
