"""The health sweep's logic with a fake store and a `responses`-mocked provider; the failover trigger."""

import json
import time
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses

from app.store import ACTIVE, DEGRADED, DISABLED, label, pool_id
from app.vast import VastClient
from tasks import failover, health
from tests.unit.fakes import REAL_LAUNCH, settings

VAST = "http://vast.test"
LIST = f"{VAST}/api/v1/instances/"
THRESHOLD = 3


@pytest.fixture
def sweep_env(env, monkeypatch):
    """The fake store and recorded enqueues (see fakes.install), a real client against a mocked provider."""
    cfg = settings(failover_threshold=THRESHOLD, failovers_per_minute=2)
    client = VastClient(VAST, "vast-key", max_attempts=1)
    for module in (health, failover):
        monkeypatch.setattr(module, "settings", lambda: cfg)
        monkeypatch.setattr(module, "vast", lambda: client)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        env.mock = mock
        yield env


def listing(unhealthy=(), label_counts=None, total=None):
    rows = [{"id": i, "actual_status": "offline", "intended_status": "running"} for i in unhealthy]
    return {"success": True, "instances_found": len(rows), "total_instances": 100 if total is None else total,
            "label_counts": label_counts or {}, "next_token": None, "instances": rows}


def counts_for(env, *pools, skip=()):
    """Label counts of healthy pools: one primary and one standby each (minus ``skip`` labels)."""
    out = {}
    for pool in pools:
        for role in ("primary", "standby"):
            name = label(pool["tenant"], pool["machine_id"], role)
            if name not in skip:
                out[name] = 1
    return out


def run_sweep(env, body=None, status=200, exc=None):
    """One sweep against this provider answer, as if its interval had passed since the last one."""
    env.r.delete(*env.r.keys("wp:sweep:slot:*") or ["-"])
    env.mock.remove(responses.GET, LIST)
    if exc:
        env.mock.add(responses.GET, LIST, body=exc)
    else:
        env.mock.add(responses.GET, LIST, json=body, status=status)
    return health.sweep()


def triggers(env):
    return [e[1] for e in env.enqueued if e[0] == "trigger"]


# -- labels -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, parsed", [
    ("warmpool-acme-123-primary", ("acme:123", "primary")),
    ("warmpool-acme-123-standby", ("acme:123", "standby")),
    ("warmpool-acme-123-volume", ("acme:123", "volume")),
    ("warmpool-big-co-7-primary", ("big-co:7", "primary")),
    ("warmpool-acme-x1-primary", None),
    ("warmpool-acme-123-spare", None),
    ("warmpool--123-primary", None),
    ("warmpool-123-primary", None),
    ("warmpool-acme--primary", None),
    ("ML job", None),
    ("", None),
])
def test_parse_label(name, parsed):
    assert health._parse_label(name) == parsed


def test_labels_round_trip():
    for tenant, machine, role in (("acme", 1, "primary"), ("a-b-c", 99999, "standby"), ("t", 5, "volume")):
        assert health._parse_label(label(tenant, machine, role)) == (pool_id(tenant, machine), role)


# -- the sweep -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("failure", [
    {"status": 500, "body": {"error": "server_error"}},
    {"status": 503, "body": {}},
    {"status": 429, "body": {"error": "rate_limited"}},
    {"exc": requests.ConnectionError("refused")},
    {"status": 200, "body": {"success": True}},  # no instances list: an answer we cannot read
])
def test_a_provider_failure_is_unknown_and_triggers_nothing(sweep_env, failure):
    env = sweep_env
    pool = env.add_pool(123)
    pid = pool_id("acme", 123)
    env.r.hset("wp:health:fails", pid, THRESHOLD - 1)  # one more failed sweep would fail it over
    assert run_sweep(env, failure.get("body"), failure.get("status", 200), failure.get("exc")) == "unknown"
    assert triggers(env) == [] and env.kinds() == []
    assert env.r.hget("wp:health:fails", pid) == str(THRESHOLD - 1)  # neither counted nor reset
    assert env.r.get("wp:metrics:unknown_sweeps") == "1"
    assert json.loads(env.r.get("wp:health:provider"))["ok"] is False
    assert env.r.get("wp:sweep:last") is None
    assert env.store.get_pool(pid)["state"] == ACTIVE and pool["state"] == ACTIVE


def test_many_unknown_sweeps_never_fail_over(sweep_env):
    env = sweep_env
    env.add_pool(123)
    for _ in range(THRESHOLD * 3):
        assert run_sweep(env, {"error": "x"}, 502) == "unknown"
    assert triggers(env) == [] and env.r.get("wp:metrics:unknown_sweeps") == str(THRESHOLD * 3)


def test_failed_for_threshold_sweeps_triggers_one_failover(sweep_env):
    env = sweep_env
    pool = env.add_pool(123)
    other = env.add_pool(124)
    pid, primary = pool_id("acme", 123), pool["primary_gpu_id"]
    before = time.time()
    body = listing([primary], counts_for(env, pool, other))
    for n in range(1, THRESHOLD):
        assert run_sweep(env, body) == "1 failed of 2"
        assert env.r.hget("wp:health:fails", pid) == str(n) and triggers(env) == []
    run_sweep(env, body)
    fired, = triggers(env)
    assert fired["pid"] == pid and fired["primary"] == primary
    assert before <= fired["detected_at"] <= time.time()  # when the failure was first seen
    assert env.r.hget("wp:health:fails", pid) is None  # counting starts over
    assert env.store.events(pid)[0]["event"] == "primary_failed"
    assert env.r.get("wp:sweep:last") and json.loads(env.r.get("wp:health:provider"))["ok"] is True


def test_a_recovered_pool_starts_counting_again(sweep_env):
    env = sweep_env
    pool = env.add_pool(123)
    pid, primary = pool_id("acme", 123), pool["primary_gpu_id"]
    failed, healthy = listing([primary], counts_for(env, pool)), listing([], counts_for(env, pool))
    for body in [failed] * (THRESHOLD - 1) + [healthy] + [failed] * (THRESHOLD - 1):
        run_sweep(env, body)
    assert triggers(env) == []
    assert env.r.hget("wp:health:fails", pid) == str(THRESHOLD - 1)
    run_sweep(env, healthy)
    assert env.r.hget("wp:health:fails", pid) is None and env.r.hget("wp:health:since", pid) is None


def test_unknown_sweeps_do_not_count_as_failed(sweep_env):
    env = sweep_env
    pool = env.add_pool(123)
    failed = listing([pool["primary_gpu_id"]], counts_for(env, pool))
    run_sweep(env, failed)
    for _ in range(THRESHOLD):
        run_sweep(env, {}, 500)
    run_sweep(env, failed)
    assert triggers(env) == [] and env.r.hget("wp:health:fails", pool_id("acme", 123)) == "2"


def test_a_vanished_primary_counts_as_failed(sweep_env):
    env = sweep_env
    pool = env.add_pool(123)
    body = listing([], counts_for(env, pool, skip={label("acme", 123, "primary")}))
    for _ in range(THRESHOLD):
        run_sweep(env, body)
    fired, = triggers(env)
    assert fired["primary"] == pool["primary_gpu_id"]  # from the record: the provider has no row


def test_a_missing_standby_degrades_the_pool(sweep_env):
    env = sweep_env
    pool, other = env.add_pool(123), env.add_pool(124)
    run_sweep(env, listing([], counts_for(env, pool, other, skip={label("acme", 123, "standby")})))
    degraded = env.store.get_pool(pool_id("acme", 123))
    assert degraded["state"] == DEGRADED and "standby" in degraded["error_message"]
    assert degraded["standby_gpu_id"] is None and degraded["standby_state"] == "none"
    assert env.store.get_pool(pool_id("acme", 124))["state"] == ACTIVE
    assert not env.store.is_locked(pool_id("acme", 123)) and triggers(env) == []


def test_a_locked_pool_is_not_degraded_by_the_sweep(sweep_env):
    env = sweep_env
    pool = env.add_pool(123)
    env.hold_lock(123)  # an operation runs: it decides the state
    run_sweep(env, listing([], counts_for(env, pool, skip={label("acme", 123, "standby")})))
    assert env.store.get_pool(pool_id("acme", 123))["state"] == ACTIVE


def test_pools_not_watched_are_not_checked(sweep_env):
    env = sweep_env
    disabled = env.add_pool(123, state=DISABLED, enabled=False)
    provisioning = env.add_pool(124, state="provisioning")
    body = listing([disabled["primary_gpu_id"], provisioning["primary_gpu_id"]], {"ML job": 2})
    for _ in range(THRESHOLD + 1):
        assert run_sweep(env, body) == "0 failed of 0"
    assert triggers(env) == [] and env.r.hgetall("wp:health:fails") == {}


def test_the_sweep_costs_one_call_whatever_the_number_of_healthy_pools(sweep_env):
    env = sweep_env
    pools = [env.add_pool(m, tenant) for tenant in ("acme", "globex") for m in range(1, 41)]
    assert run_sweep(env, listing([], counts_for(env, *pools))) == "0 failed of 80"
    assert len(env.mock.calls) == 1
    sent = env.mock.calls[0].request
    assert json.loads(parse_qs(urlsplit(sent.url).query)["select_filters"][0]) == health.UNHEALTHY
    assert triggers(env) == [] and {p["state"] for p in env.store.get_pools(env.store.all_pool_ids())} == {ACTIVE}


def test_a_second_sweep_in_the_same_interval_is_skipped(sweep_env):
    env = sweep_env
    env.add_pool(123)
    env.mock.add(responses.GET, LIST, json=listing())
    assert health.sweep() != "skipped"
    assert health.sweep() == "skipped"  # a second beat, same interval
    assert len(env.mock.calls) == 1


def test_the_sweep_asks_for_a_capacity_check_now_and_then(sweep_env):
    env = sweep_env
    env.add_pool(123)
    run_sweep(env, listing([], counts_for(env, env.store.get_pool("acme:123"))))
    run_sweep(env, listing([], counts_for(env, env.store.get_pool("acme:123"))))
    assert env.kinds() == ["check_capacity"]  # the interval is an hour here


# -- the failover trigger ------------------------------------------------------------------------------------


def launches(env):
    return [e[1] for e in env.enqueued if e[0] == "failover"]


def test_trigger_fails_over_what_it_saw(sweep_env):
    env = sweep_env
    pool = env.add_pool(123)
    op_id = failover.trigger(pool_id("acme", 123), pool["primary_gpu_id"], time.time())
    launched, = launches(env)
    assert launched["trigger"] == "health" and launched["op_id"] == op_id
    assert env.store.is_locked(pool_id("acme", 123))  # the failover holds the machine


@pytest.mark.parametrize("change", [{"primary_gpu_id": 999}, {"state": DISABLED, "enabled": False},
                                    {"state": "provisioning"}])
def test_trigger_for_a_pool_that_moved_on_does_nothing(sweep_env, change):
    env = sweep_env
    pool = env.add_pool(123)
    seen = pool["primary_gpu_id"]
    env.add_pool(123, **change)
    assert failover.trigger(pool_id("acme", 123), seen, time.time()) == "stale"
    assert launches(env) == [] and not env.store.is_locked(pool_id("acme", 123))


def test_trigger_while_an_operation_runs_is_dropped(sweep_env):
    env = sweep_env
    pool = env.add_pool(123)
    env.hold_lock(123)
    assert failover.trigger(pool_id("acme", 123), pool["primary_gpu_id"], time.time()) == "busy"
    assert launches(env) == []


def test_automatic_failovers_per_minute_are_capped(sweep_env, monkeypatch):
    env = sweep_env
    monkeypatch.setattr(failover, "launch", REAL_LAUNCH)
    chains = []
    monkeypatch.setattr(failover, "chain", lambda *steps: type("Chain", (), {"delay": lambda self, ctx: chains.append(
        [s.task for s in steps])})())
    pools = [env.add_pool(m) for m in (1, 2, 3)]
    results = [failover.trigger(pool_id("acme", p["machine_id"]), p["primary_gpu_id"], time.time()) for p in pools]
    assert results[2] == "capped" and len(chains) == 2  # at most 2 a minute here
    assert chains[0][0] == "warmpool.failover.confirm_failure"  # a health failover asks once more first
    assert env.store.events(pool_id("acme", 3))[0]["event"] == "failover_deferred"
    assert not env.store.is_locked(pool_id("acme", 3))
    assert env.store.is_locked(pool_id("acme", 1)) and env.store.is_locked(pool_id("acme", 2))
    # a manual failover test is not counted against the cap
    held = env.store.acquire(pool_id("acme", 3), 10)
    assert REAL_LAUNCH(env.store, pool_id("acme", 3), held, "manual") is not None and len(chains) == 3
