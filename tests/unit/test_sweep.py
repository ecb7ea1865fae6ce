"""The health sweep (tasks/sweep.py) and what it enqueues: the failover trigger, the standby recheck, the split-brain
guard and the capacity check. The provider is the in-memory fake (it honours the list's filters and counts labels),
or, where the wire matters, the real client against ``responses``."""

import json
import time
import types
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses
from celery.exceptions import Ignore

from app import runtime
from app.pools import State, label, pool_id
from app.store import keys
from app.vast import OfferUnavailable, ProviderUnavailable
from tasks import sweep
from tests.unit.fakes import VAST_URL, real_client, run_steps

LIST = f"{VAST_URL}/api/v1/instances/"
THRESHOLD = 3


@pytest.fixture
def env(env):
    env.configure(failover_threshold=THRESHOLD, failover_min_seconds=0.0, failovers_per_minute=2)
    return env


def protected(env, machine_id: int, tenant: str = "acme", primary: str = "running", **fields) -> dict:
    """An active pool whose primary and standby exist at the provider."""
    primary_id = env.vast.add_instance(label(tenant, machine_id, "primary"), primary)
    standby_id = env.vast.add_instance(label(tenant, machine_id, "standby"), "stopped")
    return env.add_pool(machine_id, tenant, primary_gpu_id=primary_id, standby_gpu_id=standby_id, **fields)


def run_sweep(env) -> str:
    """One sweep, as if its interval had passed since the last one."""
    env.r.delete(*env.r.keys(keys.sweep_slot("*")) or ["-"])
    return sweep.sweep()


def fail(env, pool: dict, status: str, intended: str = "running") -> None:
    env.vast.instances[pool["primary_gpu_id"]].update(actual_status=status, intended_status=intended)


def triggers(env) -> list[dict]:
    return env.of("trigger")


def acted(env) -> list:
    """What the sweeps enqueued besides the capacity check (due at the first sweep, then hourly here)."""
    return [e for e in env.enqueued if e[0] != "check_capacity"]


# -- what counts as a failure ---------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["loading", "created", "scheduling", "rebooting", None])  # Vast's, not ours
def test_a_transitional_status_never_counts(env, status):
    pool = protected(env, 123)
    fail(env, pool, status)
    for _ in range(THRESHOLD * 2):
        assert run_sweep(env) == "0 failed of 1"
    assert triggers(env) == [] and env.r.hgetall(keys.HEALTH_FAILS) == {}


@pytest.mark.parametrize("status", ["offline", "exited"])
def test_a_definitive_status_triggers_at_the_first_sweep(env, status):
    pool = protected(env, 123)
    fail(env, pool, status)
    before = time.time()
    assert run_sweep(env) == "1 failed of 1"
    fired, = triggers(env)
    assert fired["pid"] == "acme:123" and fired["primary"] == pool["primary_gpu_id"]
    assert before <= fired["detected_at"] <= fired["triggered_at"] <= time.time()
    assert env.r.hget(keys.HEALTH_FAILS, "acme:123") is None  # counting starts over
    assert env.store.events("acme:123")[0]["event"] == "primary_failed"


def test_a_vanished_primary_is_gone_at_the_first_sweep(env):
    pool = protected(env, 123)
    env.vast.destroy_instance(pool["primary_gpu_id"])
    run_sweep(env)
    fired, = triggers(env)
    assert fired["primary"] == pool["primary_gpu_id"]  # from the record: the provider has no row


def test_a_primary_stopped_by_someone_else_triggers_at_the_first_sweep(env):
    pool = protected(env, 123)
    fail(env, pool, "stopped", intended="stopped")
    run_sweep(env)
    assert [t["primary"] for t in triggers(env)] == [pool["primary_gpu_id"]]


@pytest.mark.parametrize("status", ["unknown", "stopped", "frozen"])
def test_another_status_needs_the_threshold_of_sweeps(env, status):
    pool = protected(env, 123)
    fail(env, pool, status)
    for n in range(1, THRESHOLD):
        assert run_sweep(env) == "1 failed of 1"
        assert env.r.hget(keys.HEALTH_FAILS, "acme:123") == str(n) and triggers(env) == []
    run_sweep(env)
    assert [t["primary"] for t in triggers(env)] == [pool["primary_gpu_id"]]


def test_another_status_also_needs_the_minimum_time(env, monkeypatch):
    env.configure(failover_threshold=THRESHOLD, failover_min_seconds=3600.0)
    pool = protected(env, 123)
    fail(env, pool, "unknown")
    for _ in range(THRESHOLD + 2):
        run_sweep(env)
    assert triggers(env) == []  # enough sweeps, not long enough
    monkeypatch.setattr(sweep, "time", types.SimpleNamespace(time=lambda: time.time() + 3601))
    run_sweep(env)
    assert [t["primary"] for t in triggers(env)] == [pool["primary_gpu_id"]]


def test_the_minimum_time_alone_is_not_enough(env, monkeypatch):
    env.configure(failover_threshold=THRESHOLD, failover_min_seconds=3600.0)
    monkeypatch.setattr(sweep, "time", types.SimpleNamespace(time=lambda: time.time() + 3601))
    pool = protected(env, 123)
    fail(env, pool, "unknown")
    for _ in range(THRESHOLD - 1):
        run_sweep(env)
    assert triggers(env) == []
    run_sweep(env)
    assert len(triggers(env)) == 1


def test_the_trigger_says_when_the_primary_was_last_seen_healthy(env):
    pool = protected(env, 123)
    run_sweep(env)
    healthy_at = env.store.last_sweep_time()
    fail(env, pool, "offline")
    run_sweep(env)
    fired, = triggers(env)
    assert fired["healthy_at"] == pytest.approx(healthy_at)


def test_a_recovered_pool_starts_counting_again(env):
    pool = protected(env, 123)
    for status in ["unknown"] * (THRESHOLD - 1) + ["running"] + ["unknown"] * (THRESHOLD - 1):
        fail(env, pool, status)
        run_sweep(env)
    assert triggers(env) == []
    assert env.r.hget(keys.HEALTH_FAILS, "acme:123") == str(THRESHOLD - 1)
    fail(env, pool, "running")
    run_sweep(env)
    assert env.r.hget(keys.HEALTH_FAILS, "acme:123") is None and env.r.hget(keys.HEALTH_SINCE, "acme:123") is None


def test_pools_not_watched_are_not_checked(env):
    disabled = protected(env, 123, state=State.DISABLED, enabled=False)
    provisioning = protected(env, 124, state=State.PROVISIONING)
    fail(env, disabled, "offline")
    fail(env, provisioning, "offline")
    for _ in range(THRESHOLD + 1):
        assert run_sweep(env) == "0 failed of 0"
    assert acted(env) == [] and env.r.hgetall(keys.HEALTH_FAILS) == {}


# -- unknown: the provider could not be asked ------------------------------------------------------------------


@pytest.fixture
def wire(env, monkeypatch):
    """The sweep on the real client, against a provider mocked with ``responses``."""
    monkeypatch.setattr(runtime, "vast", lambda tenant=None: real_client())
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        env.mock = mock
        yield env


def answer(env, body=None, status=200, exc=None):
    env.mock.remove(responses.GET, LIST)
    if exc:
        env.mock.add(responses.GET, LIST, body=exc)
    else:
        env.mock.add(responses.GET, LIST, json=body, status=status)


def listing(unhealthy=(), label_counts=None):
    rows = [{"id": i, "actual_status": "offline", "intended_status": "running"} for i in unhealthy]
    return {"success": True, "instances_found": len(rows), "total_instances": 100,
            "label_counts": label_counts or {}, "next_token": None, "instances": rows}


def counts_for(*pools):
    return {label(p["tenant"], p["machine_id"], role): 1 for p in pools for role in ("primary", "standby")}


@pytest.mark.parametrize("failure", [
    {"status": 500, "body": {"error": "server_error"}},
    {"status": 503, "body": {}},
    {"status": 429, "body": {"error": "rate_limited"}},
    {"exc": requests.ConnectionError("refused")},
    {"status": 200, "body": {"success": True}},  # no instances list: an answer we cannot read
])
def test_a_provider_failure_is_unknown_and_counts_nothing(wire, failure):
    env = wire
    pool = env.add_pool(123)
    env.r.hset(keys.HEALTH_FAILS, "acme:123", THRESHOLD - 1)  # one more failed sweep would fail it over
    answer(env, failure.get("body"), failure.get("status", 200), failure.get("exc"))
    assert run_sweep(env) == "unknown"
    assert env.enqueued == []
    assert env.r.hget(keys.HEALTH_FAILS, "acme:123") == str(THRESHOLD - 1)  # neither counted nor reset
    assert env.store.unknown_sweeps() == 1 and env.store.last_sweep() is None
    assert json.loads(env.r.get(keys.PROVIDER_HEALTH))["ok"] is False
    assert env.store.get_pool("acme:123")["state"] == State.ACTIVE and pool["state"] == State.ACTIVE
    assert len(env.mock.calls) == 1  # one attempt: the next sweep is the retry


def test_many_unknown_sweeps_never_fail_over(wire):
    env = wire
    env.add_pool(123)
    answer(env, {"error": "x"}, 502)
    for _ in range(THRESHOLD * 3):
        assert run_sweep(env) == "unknown"
    assert env.enqueued == [] and env.store.unknown_sweeps() == THRESHOLD * 3


def test_unknown_sweeps_between_failed_ones_count_nothing(wire):
    env = wire
    pool = env.add_pool(123)
    failed = listing([pool["primary_gpu_id"]], counts_for(pool))
    failed["instances"][0]["actual_status"] = "unknown"
    answer(env, failed)
    run_sweep(env)
    answer(env, {}, 500)
    for _ in range(THRESHOLD):
        run_sweep(env)
    answer(env, failed)
    run_sweep(env)
    assert triggers(env) == [] and env.r.hget(keys.HEALTH_FAILS, "acme:123") == "2"


def test_the_sweep_costs_three_calls_whatever_the_number_of_healthy_pools(wire):
    env = wire
    pools = [env.add_pool(m, tenant) for tenant in ("acme", "globex") for m in range(1, 41)]
    answer(env, listing([], counts_for(*pools)))
    assert run_sweep(env) == "0 failed of 80"
    # the instances that should run and do not; one page of primaries looked at directly, in rotation; the
    # standbys that should be stopped and are not
    assert len(env.mock.calls) == 3
    failing, audit, lost = (json.loads(parse_qs(urlsplit(c.request.url).query)["select_filters"][0])
                            for c in env.mock.calls)
    assert failing == sweep.UNHEALTHY and lost == sweep.LOST_STANDBY
    assert 0 < len(audit["id"]["in"]) <= sweep.AUDIT_PAGE
    assert acted(env) == [] and {p["state"] for p in env.store.get_pools(env.store.all_pool_ids())} == {
        State.ACTIVE}


def test_a_second_sweep_in_the_same_interval_is_skipped(wire):
    env = wire
    env.add_pool(123)
    answer(env, listing())
    assert sweep.sweep() != "skipped"
    assert sweep.sweep() == "skipped"  # a second beat, same interval
    assert len(env.mock.calls) == 3  # the first sweep's three calls, and no more


# -- the sweep's own lock --------------------------------------------------------------------------------------


def test_the_sweep_holds_its_lock_briefly(env, monkeypatch):
    protected(env, 123)
    seen = []
    list_instances = env.vast.list_instances

    def listing_seen(*args, **kwargs):
        seen.append(env.r.pttl(keys.SWEEP_RUNNING))
        return list_instances(*args, **kwargs)

    monkeypatch.setattr(env.vast, "list_instances", listing_seen)
    run_sweep(env)
    ttl = seen[0]
    # a killed sweeper stops detection for a few seconds at most, not for a lock's usual lifetime
    assert 0 < ttl <= max(5.0, 3 * env.settings.health_check_interval) * 1000
    assert not env.r.exists(keys.SWEEP_RUNNING)  # released when done


def test_a_sweep_already_running_is_not_run_twice(env):
    protected(env, 123)
    with env.store.sweep_running(ttl=5) as mine:
        assert mine
        assert run_sweep(env) == "skipped"
    assert env.vast.called("list_instances") == []


# -- standbys ---------------------------------------------------------------------------------------------


def test_a_missing_standby_is_rechecked_not_degraded(env):
    pool, other = protected(env, 123), protected(env, 124)
    env.vast.destroy_instance(pool["standby_gpu_id"])
    run_sweep(env)
    assert env.of("recheck_standby") == [{"pid": "acme:123"}]
    assert env.store.get_pool("acme:123")["state"] == State.ACTIVE  # the recheck decides, under the lock
    assert env.store.get_pool("acme:124") == other and triggers(env) == []


def test_the_brake_stops_a_sweep_that_would_act_on_most_pools(env):
    pools = [protected(env, m) for m in range(1, 6)]
    for pool in pools[:4]:  # 4 of 5: more than half, and more than a few
        env.vast.destroy_instance(pool["standby_gpu_id"])
    run_sweep(env)
    assert env.of("recheck_standby") == []
    assert all(env.store.events(f"acme:{m}")[0]["event"] == "sweep_brake" for m in range(1, 5))
    assert env.store.events("acme:5") == []
    env.vast.add_instance(label("acme", 1, "standby"), "stopped")  # the provider's answer comes right again
    env.vast.add_instance(label("acme", 2, "standby"), "stopped")
    run_sweep(env)
    assert [r["pid"] for r in env.of("recheck_standby")] == ["acme:3", "acme:4"]


def test_a_few_missing_standbys_are_no_reason_to_brake(env):
    pools = [protected(env, m) for m in range(1, 4)]
    for pool in pools:  # all of them, but only three
        env.vast.destroy_instance(pool["standby_gpu_id"])
    run_sweep(env)
    assert len(env.of("recheck_standby")) == 3


def test_pools_known_to_lack_a_standby_do_not_pull_the_brake(env):
    for m in range(1, 5):  # a host outage degraded these: their standbys are gone, and their records say so
        env.add_pool(m, state=State.DEGRADED, standby_gpu_id=None, standby_state="none",
                     primary_gpu_id=env.vast.add_instance(label("acme", m, "primary")))
    pool = protected(env, 5)
    env.vast.destroy_instance(pool["standby_gpu_id"])
    run_sweep(env)
    assert env.of("recheck_standby") == [{"pid": "acme:5"}]
    assert not any(e["event"] == "sweep_brake" for m in range(1, 6) for e in env.store.events(f"acme:{m}"))


@pytest.mark.parametrize("status", ["offline", "unknown"])
def test_a_standby_the_provider_shows_lost_is_rechecked_in_one_call_for_the_fleet(env, status):
    pools = [protected(env, m) for m in range(1, 7)]
    env.vast.instances[pools[2]["standby_gpu_id"]]["actual_status"] = status
    env.vast.add_instance("someone else's", status, intended="stopped")  # not a pool's: nothing to do
    run_sweep(env)
    assert env.of("recheck_standby") == [{"pid": "acme:3"}] and triggers(env) == []
    lists = env.vast.called("list_instances")
    assert len(lists) == 3 and ("list_instances", sweep.LOST_STANDBY) in lists  # unhealthy, audit, lost standbys
    env.r.delete(keys.due_at("audit"))
    run_sweep(env)  # not due again before CAPACITY_CHECK_INTERVAL
    assert len(env.vast.called("list_instances")) == 5 and len(env.of("recheck_standby")) == 1


@pytest.mark.parametrize("status", ["stopped", "exited", "created", "loading", "scheduling", None])
def test_a_standby_stopped_or_on_its_way_is_not_lost(env, status):
    pool = protected(env, 123)
    env.vast.instances[pool["standby_gpu_id"]].update(actual_status=status, intended_status="stopped")
    run_sweep(env)
    assert acted(env) == []


def test_the_failures_the_first_list_found_are_triggered_before_the_lost_standby_list(env, monkeypatch):
    pool = protected(env, 123)
    fail(env, pool, "offline")
    triggered_before = []
    list_instances = env.vast.list_instances

    def observed(select_filters=None, **kwargs):
        if select_filters == sweep.LOST_STANDBY:  # a call that may page: nothing found earlier waits for it
            triggered_before.append([t["pid"] for t in triggers(env)])
        return list_instances(select_filters, **kwargs)
    monkeypatch.setattr(env.vast, "list_instances", observed)
    run_sweep(env)
    assert triggered_before == [["acme:123"]]


def test_a_lost_standby_waits_while_its_primary_fails_over(env):
    pool = protected(env, 123)
    fail(env, pool, "offline")  # the host is lost: both instances with it
    env.vast.instances[pool["standby_gpu_id"]]["actual_status"] = "offline"
    run_sweep(env)
    assert [t["pid"] for t in triggers(env)] == ["acme:123"] and env.of("recheck_standby") == []


@pytest.mark.parametrize("status", ["loading", "scheduling", None])
def test_a_standby_found_starting_is_a_split_brain_to_guard(env, status):
    pool = protected(env, 123)
    env.vast.instances[pool["standby_gpu_id"]].update(intended_status="running", actual_status=status)
    run_sweep(env)
    guarded, = env.of("guard_split_brain")
    assert guarded["pid"] == "acme:123" and str(pool["standby_gpu_id"]) in guarded["reason"]
    assert triggers(env) == []


def test_two_instances_with_one_label_are_a_split_brain_to_guard(env):
    protected(env, 123)
    env.vast.add_instance(label("acme", 123, "primary"))
    run_sweep(env)
    guarded, = env.of("guard_split_brain")
    assert guarded["pid"] == "acme:123" and "2 instances carry the label warmpool-acme-123-primary" in \
        guarded["reason"]


def test_a_busy_pool_with_two_labelled_instances_is_left_to_its_operation(env):
    protected(env, 123)
    env.vast.add_instance(label("acme", 123, "standby"), "stopped")  # a failover creating a new standby
    env.hold_lock(123)
    run_sweep(env)
    assert env.of("guard_split_brain") == []


def test_labels_of_a_pool_without_a_record_ask_for_a_rebuild(env):
    protected(env, 123)
    env.vast.add_instance(label("acme", 77, "primary"))  # Redis lost acme:77's record
    run_sweep(env)
    assert [e["args"] for e in env.of("apply_async") if e["task"] == "warmpool.rebuild.rebuild"] == [(["acme:77"],)]


def test_the_sweep_asks_for_a_capacity_check_now_and_then(env):
    protected(env, 123)
    run_sweep(env)
    run_sweep(env)
    assert env.kinds() == ["check_capacity"]  # the interval is an hour here
    assert env.store.label_counts() == {"warmpool-acme-123-primary": 1, "warmpool-acme-123-standby": 1}


# -- the failover trigger ----------------------------------------------------------------------------------


def test_trigger_fails_over_what_it_saw(env):
    pool = protected(env, 123)
    assert sweep.trigger("acme:123", pool["primary_gpu_id"], time.time()) == "failover"
    started, = env.of("failover")
    assert started["trigger"] == "health" and started["epoch"] == env.store.epoch("acme:123")
    assert started["steps"][0] == "warmpool.failover.confirm_failure"  # the provider is asked once more first
    assert env.store.is_locked("acme:123")  # the failover holds the machine
    assert env.store.get_pool("acme:123")["state"] == State.FAILOVER


@pytest.mark.parametrize("change", [{"primary_gpu_id": 999}, {"state": State.DISABLED, "enabled": False},
                                    {"state": State.PROVISIONING}])
def test_trigger_for_a_pool_that_moved_on_does_nothing(env, change):
    pool = protected(env, 123)
    env.add_pool(123, **change)
    assert sweep.trigger("acme:123", pool["primary_gpu_id"], time.time()) == "stale"
    assert env.of("failover") == [] and not env.store.is_locked("acme:123")


def test_trigger_while_an_operation_runs_is_dropped(env):
    pool = protected(env, 123)
    env.hold_lock(123)
    assert sweep.trigger("acme:123", pool["primary_gpu_id"], time.time()) == "busy"
    assert env.of("failover") == []


def test_triggers_past_the_cap_are_never_deferred_and_take_no_slot(env):
    pools = [protected(env, m) for m in (1, 2, 3)]
    results = [sweep.trigger(pool_id("acme", p["machine_id"]), p["primary_gpu_id"], time.time()) for p in pools]
    assert results == ["failover"] * 3  # 2 a minute here: the cap counts confirmed failures (confirm_failure)
    assert env.store.r.zcard(keys.failovers()) == 0
    assert all(started["steps"][0] == "warmpool.failover.confirm_failure" for started in env.of("failover"))


def test_a_manual_failover_is_not_counted_against_the_cap(env):
    pools = [protected(env, m) for m in (1, 2, 3)]
    for p in pools[:2]:
        sweep.trigger(pool_id("acme", p["machine_id"]), p["primary_gpu_id"], time.time())
    rv = env.api("POST", "/api/v1/warmpool/failover/test/3")
    assert rv.status_code == 202 and len(env.of("failover")) == 3


# -- the standby recheck ----------------------------------------------------------------------------------------


def test_recheck_finds_the_standby_there(env):
    pool = protected(env, 123)
    assert sweep.recheck_standby("acme:123") == "there"
    assert env.store.get_pool("acme:123") == pool and not env.store.is_locked("acme:123")
    assert env.vast.called("show_instance") == [("show_instance", pool["standby_gpu_id"])]


@pytest.mark.parametrize("status", ["offline", "unknown", "gone"])
def test_recheck_replaces_a_lost_standby_on_the_same_host(env, status):
    pool = protected(env, 123)
    lost = pool["standby_gpu_id"]
    hook = env.store.add_webhook("acme", "https://hooks.example/", ["standby.lost"])
    if status == "gone":
        env.vast.destroy_instance(lost)
    else:
        env.vast.instances[lost]["actual_status"] = status
    assert sweep.recheck_standby("acme:123") == "replaced"
    assert lost not in env.vast.instances  # an offline one would come back with its host, beside the new one
    after = env.store.get_pool("acme:123")
    assert after["state"] == State.PROVISIONING and after["standby_gpu_id"] is None
    assert after["primary_gpu_id"] == pool["primary_gpu_id"] and after["standby_state"] == "none"
    event = env.store.events("acme:123")[0]
    assert event["event"] == "standby_lost" and event["status"] == status and event["standby_gpu_id"] == lost
    replacing, = env.of("replace_standby")
    assert replacing["steps"] == ["warmpool.provision.create_standby"] and status in replacing["reason"]
    assert env.store.is_locked("acme:123")  # handed to the replacement's step
    assert env.store.metrics()["standbys_lost"] == {status: "1"}
    delivery, = env.store.deliveries(hook["id"])
    assert delivery["type"] == "standby.lost" and json.loads(delivery["payload"])["data"]["status"] == status


@pytest.mark.parametrize("refusal", ["no GPU free on the host", "the provider refuses the rental"])
def test_a_lost_standby_that_cannot_be_replaced_leaves_the_pool_degraded_with_the_reason(env, refusal):
    """The replacement is made on the pool's host or not at all: when the host has no GPU free, or the provider
    refuses the create, the pool is degraded with the reason (the healer takes it from there), and its tenant
    hears of both the loss and the degradation."""
    pool = protected(env, 123)
    lost = pool["standby_gpu_id"]
    hook = env.store.add_webhook("acme", "https://hooks.example/", ["standby.lost", "pool.degraded"])
    env.vast.instances[lost]["actual_status"] = "offline"
    if refusal == "no GPU free on the host":
        env.vast.offers, reason = [], "host 88888 has no rentable GPU or volume offer (for the standby)"
    else:
        env.vast.offers, reason = [{"id": 1, "machine_id": 88888}], "offer 1 was taken"
        env.vast.fail["create_instance"] = OfferUnavailable(reason, 404, "no_such_ask", reason)
    assert sweep.recheck_standby("acme:123") == "replaced"
    with pytest.raises(Ignore):  # the step gave the operation up: compensated and ended, degraded
        run_steps(env)

    after = env.store.get_pool("acme:123")
    assert after["state"] == State.DEGRADED and reason in after["error_message"]
    assert after["standby_gpu_id"] is None and after["primary_gpu_id"] == pool["primary_gpu_id"]
    assert lost not in env.vast.instances and list(env.vast.instances) == [pool["primary_gpu_id"]]
    assert not env.store.is_locked("acme:123") and after["heal_attempts"] == 1  # the healer retries it later
    degraded, standby_lost = env.store.events("acme:123")[:2]
    assert standby_lost["event"] == "standby_lost" and standby_lost["status"] == "offline"
    assert degraded["event"] == "degraded" and degraded["operation"] == "provision"  # replace_standby's kind
    assert reason in degraded["message"]
    assert sorted(d["type"] for d in env.store.deliveries(hook["id"])) == ["pool.degraded", "standby.lost"]


@pytest.mark.parametrize("status, intended", [("exited", "stopped"), ("created", "stopped"), (None, "stopped"),
                                              ("loading", "running"), ("offline", "running")])
def test_recheck_leaves_a_standby_that_is_stopped_on_its_way_or_started(env, status, intended):
    pool = protected(env, 123)
    env.vast.instances[pool["standby_gpu_id"]].update(actual_status=status, intended_status=intended)
    assert sweep.recheck_standby("acme:123") == "there"
    assert env.store.get_pool("acme:123") == pool and env.vast.called("destroy_instance") == []


def test_recheck_of_a_lost_standby_whose_primary_is_down_too_triggers_the_failover(env):
    """A host failing: Vast tells of the standby, maybe before the primary. Replacing the standby on that host now
    would hold the machine while its primary is down; the failover decides for both, triggered at once."""
    pool = protected(env, 123)
    for instance in (pool["standby_gpu_id"], pool["primary_gpu_id"]):
        env.vast.instances[instance]["actual_status"] = "offline"
    assert sweep.recheck_standby("acme:123") == "failover triggered"
    assert env.store.get_pool("acme:123") == pool and not env.store.is_locked("acme:123")
    assert env.vast.called("destroy_instance") == []
    fired, = triggers(env)
    assert fired["pid"] == "acme:123" and fired["primary"] == pool["primary_gpu_id"]
    assert env.store.events("acme:123")[0]["event"] == "primary_failed"


def test_recheck_of_a_lost_standby_whose_primary_is_on_its_way_leaves_it_to_the_sweep(env):
    pool = protected(env, 123)
    env.vast.instances[pool["standby_gpu_id"]]["actual_status"] = "offline"
    env.vast.instances[pool["primary_gpu_id"]]["actual_status"] = "loading"
    assert sweep.recheck_standby("acme:123") == "left to the failover"
    assert triggers(env) == [] and env.vast.called("destroy_instance") == []


def test_a_failover_trigger_during_the_rechecks_provider_calls_is_not_turned_away(env, monkeypatch):
    pool = protected(env, 123)
    env.vast.instances[pool["standby_gpu_id"]]["actual_status"] = "offline"
    show_instance, answers = env.vast.show_instance, []

    def show_then_trigger(instance_id):
        if not answers:  # Vast's notification of the primary arrives while the recheck asks the provider
            answers.append(sweep.trigger("acme:123", pool["primary_gpu_id"], time.time()))
        return show_instance(instance_id)
    monkeypatch.setattr(env.vast, "show_instance", show_then_trigger)
    assert sweep.recheck_standby("acme:123") == "moved on"  # the failover holds the machine: it decides
    assert answers == ["failover"] and env.vast.called("destroy_instance") == []


def test_recheck_that_cannot_destroy_the_lost_standby_changes_nothing(env):
    pool = protected(env, 123)
    env.vast.instances[pool["standby_gpu_id"]]["actual_status"] = "offline"
    env.vast.fail["destroy_instance"] = ProviderUnavailable("down", 503)
    with pytest.raises(ProviderUnavailable):
        sweep.recheck_standby("acme:123")
    assert env.store.get_pool("acme:123") == pool and not env.store.is_locked("acme:123")
    assert env.of("replace_standby") == []


@pytest.mark.parametrize("fields", [{"state": State.DEGRADED}, {"state": State.FAILOVER},
                                    {"standby_gpu_id": None}, None])
def test_recheck_of_a_pool_that_moved_on_does_nothing(env, fields):
    pool = protected(env, 123)
    env.vast.destroy_instance(pool["standby_gpu_id"])
    if fields is None:
        env.hold_lock(123)  # an operation runs: it decides
    else:
        env.add_pool(123, **fields)
    before = env.store.get_pool("acme:123")
    assert sweep.recheck_standby("acme:123") == "moved on"
    assert env.store.get_pool("acme:123") == before and env.vast.called("show_instance") == []


def test_recheck_when_the_provider_fails_decides_nothing_and_frees_the_machine(env):
    pool = protected(env, 123)
    env.vast.fail["show_instance"] = ProviderUnavailable("down", 503)
    with pytest.raises(ProviderUnavailable):
        sweep.recheck_standby("acme:123")
    assert env.store.get_pool("acme:123") == pool and not env.store.is_locked("acme:123")


# -- the split-brain guard ---------------------------------------------------------------------------------------


def test_guard_stops_every_instance_the_pool_does_not_name_as_primary(env):
    pool = protected(env, 123)
    standby = pool["standby_gpu_id"]
    env.vast.start_instance(standby)  # someone started the standby
    leaked = env.vast.add_instance(label("acme", 123, "primary"))  # and a second primary runs
    env.vast.add_instance(label("acme", 123, "standby"), "stopped")  # a second standby, stopped: harmless
    assert sorted(sweep.guard_split_brain("acme:123", "test")) == sorted([standby, leaked])
    assert env.vast.instances[pool["primary_gpu_id"]]["actual_status"] == "running"
    assert sorted(c[1] for c in env.vast.called("stop_instance")) == sorted([standby, leaked])  # not the stopped one
    event = env.store.events("acme:123")[0]
    assert event["event"] == "split_brain_resolved" and sorted(event["stopped"]) == sorted([standby, leaked])
    assert not env.store.is_locked("acme:123")


def test_guard_with_nothing_to_stop_says_nothing(env):
    protected(env, 123)
    assert sweep.guard_split_brain("acme:123", "test") == []
    assert env.vast.called("stop_instance") == [] and env.store.events("acme:123") == []


@pytest.mark.parametrize("busy", ["locked", State.FAILOVER, State.PROVISIONING, State.DISABLED])
def test_guard_leaves_a_busy_pool_to_its_operation(env, busy):
    pool = protected(env, 123)
    env.vast.start_instance(pool["standby_gpu_id"])
    if busy == "locked":
        env.hold_lock(123)
    else:
        env.add_pool(123, state=busy)
    assert sweep.guard_split_brain("acme:123", "test") == []
    assert env.vast.called("stop_instance") == []


def test_guard_that_lost_its_lock_stops_nothing(env, monkeypatch):
    pool = protected(env, 123)
    env.vast.start_instance(pool["standby_gpu_id"])
    list_instances = env.vast.list_instances

    def taken_meanwhile(*args, **kwargs):
        env.r.incr(keys.epoch("acme:123"))  # a newer holder took the machine while the guard looked
        return list_instances(*args, **kwargs)

    monkeypatch.setattr(env.vast, "list_instances", taken_meanwhile)
    assert sweep.guard_split_brain("acme:123", "test") == []  # the newer holder decides
    assert env.vast.called("stop_instance") == []


# -- the capacity check -----------------------------------------------------------------------------------------------


def test_capacity_check_degrades_pools_whose_host_has_no_free_gpu(env):
    protected(env, 1, host_machine_id=11)
    protected(env, 2, host_machine_id=22)
    env.vast.offers = [{"id": 1, "machine_id": 11}]
    assert sweep.check_capacity() == 1
    query, = env.vast.searches
    assert query["machine_id"] == {"in": [11, 22]}  # one search for every host
    assert env.store.get_pool("acme:1")["state"] == State.ACTIVE
    full = env.store.get_pool("acme:2")
    assert full["state"] == State.DEGRADED and "host 22 has no free GPU" in full["error_message"]


def test_capacity_check_when_the_provider_fails_decides_nothing(env):
    protected(env, 1)
    env.vast.error = ProviderUnavailable("down", 503)
    assert sweep.check_capacity() == 0
    assert env.store.get_pool("acme:1")["state"] == State.ACTIVE
