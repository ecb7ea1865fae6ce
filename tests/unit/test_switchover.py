"""Planned switchovers (tasks/switchover.py): the API plans and cancels, the record keeps the plan, the check
starts the failover path with trigger ``switchover`` once it is due and not before, and a rebuild keeps or drops
a plan."""

import json
import time

import celeryconfig
from app.pools import State, iso_at, new_pool
from app.store import keys
from tasks import rebuild
from tasks.switchover import check_switchovers

PID = "acme:1"


def plan(env, at: float | None = None):
    return env.api("POST", "/api/v1/warmpool/switchover/1", json={} if at is None else {"at": iso_at(at)})


def test_a_planned_switchover_starts_once_due_and_not_before(env):
    env.add_pool(1)
    at = time.time() + 600
    rv = plan(env, at)
    assert rv.status_code == 200, rv.json
    assert rv.json["status"]["scheduled_switchover"]["at"] == iso_at(at)
    assert env.api("GET", "/api/v1/warmpool/status/1").json["scheduled_switchover"]["at"] == iso_at(at)
    # the event is stamped when it happened (events are newest first), the planned time is a detail of it
    scheduled = env.store.events(PID)[0]
    assert scheduled["event"] == "switchover_scheduled" and scheduled["scheduled_for"] == iso_at(at)
    assert scheduled["at"] <= iso_at(time.time())
    assert check_switchovers() == {} and env.of("failover") == []
    env.r.zadd(keys.SWITCHOVERS, {PID: time.time() - 1})  # the clock reaches it
    assert check_switchovers() == {PID: "switchover"}
    started, = env.of("failover")
    assert started["trigger"] == "switchover" and started["steps"][0] == "warmpool.failover.stop_primary"
    assert env.store.get_pool(PID)["scheduled_switchover"] is None and env.store.due_switchovers(time.time()) == []
    assert check_switchovers() == {}  # once
    # the check runs every health-check interval, so a plan starts within one interval of its time
    schedule = celeryconfig.beat_schedule
    assert schedule["switchovers"]["schedule"] == schedule["health-sweep"]["schedule"]


def test_a_planned_switchover_can_be_cancelled_and_waits_for_an_active_pool(env):
    env.add_pool(1)
    hook = env.store.add_webhook("acme", "https://93.184.216.34/hook", None)
    assert plan(env).status_code == 200  # at once
    rv = env.api("DELETE", "/api/v1/warmpool/switchover/1")
    assert rv.status_code == 200 and rv.json["status"]["scheduled_switchover"] is None
    assert check_switchovers() == {} and env.of("failover") == []
    assert env.api("DELETE", "/api/v1/warmpool/switchover/1").status_code == 404
    assert [e["event"] for e in env.store.events(PID)][:2] == ["switchover_cancelled", "switchover_scheduled"]
    # a degraded pool's plan waits for it to be active; a disabled one's is dropped
    plan(env)
    change(env, state=State.DEGRADED)
    assert check_switchovers() == {PID: "waiting: degraded"} and env.of("failover") == []
    change(env, state=State.DISABLED, enabled=False)
    assert check_switchovers() == {PID: "dropped"} and env.of("failover") == []
    assert env.store.get_pool(PID)["scheduled_switchover"] is None
    assert env.store.events(PID)[0]["event"] == "switchover_dropped"
    # each is published to the tenant's webhooks, with the planned time
    delivered = [(d["type"], json.loads(d["payload"])["data"]["scheduled_for"])
                 for d in env.store.deliveries(hook["id"])]
    assert sorted(t for t, _ in delivered) == ["switchover.cancelled", "switchover.dropped", "switchover.scheduled",
                                               "switchover.scheduled"] and all(at for _, at in delivered)


def change(env, **fields) -> None:
    held = env.store.acquire(PID, 10)
    env.store.save_pool({**env.store.get_pool(PID), **fields}, held)
    env.store.release(PID, held, 10)


def test_bad_switchover_times_are_422_and_unknown_pools_404(env):
    env.add_pool(1)
    for at in ("tomorrow", iso_at(time.time() - 3600), iso_at(time.time() + 400 * 86400), 5):
        rv = env.api("POST", "/api/v1/warmpool/switchover/1", json={"at": at})
        assert rv.status_code == 422 and "at" in rv.json["errors"]["json"], (at, rv.json)
    assert plan(env).status_code == 200
    assert env.api("POST", "/api/v1/warmpool/switchover/2", json={}).status_code == 404
    assert env.api("DELETE", "/api/v1/warmpool/switchover/1", tenant="globex").status_code == 404
    env.add_pool(3, state=State.DISABLED, enabled=False)
    assert env.api("POST", "/api/v1/warmpool/switchover/3", json={}).status_code == 409


def test_a_rebuild_keeps_a_plan_when_it_can_or_drops_it_with_an_event(env):
    env.add_pool(1)
    at = time.time() + 600
    plan(env, at)
    env.r.delete(keys.pool(PID))  # the record lost; its index kept
    rebuilt = new_pool("acme", 1, state=State.ACTIVE, primary_gpu_id=1001, standby_gpu_id=2001)
    assert rebuild._write(PID, rebuilt, []) == rebuild.REBUILT
    assert env.store.get_pool(PID)["scheduled_switchover"]["at"] == iso_at(at)
    env.r.delete(keys.pool(PID))
    assert rebuild._write(PID, new_pool("acme", 1, state=State.DEGRADED, primary_gpu_id=1001), []) == rebuild.REBUILT
    assert env.store.get_pool(PID)["scheduled_switchover"] is None and env.store.switchover_at(PID) is None
    assert "switchover_dropped" in [e["event"] for e in env.store.events(PID)]
