"""The state store on fakeredis: its repositories of pools and their indexes (fenced writes), operations, events
and API keys."""

import json
import threading
import time

import pytest

from app.pools import State, new_pool, pool_id
from app.store import EVENTS_KEPT, FencedOut, keys
from app.store.operations import OP_TTL
from tests.conftest import wait_until
from tests.unit.fakes import snapshot

PID = "acme:123"
ACTIVE, DEGRADED, DISABLED = State.ACTIVE, State.DEGRADED, State.DISABLED


def save(store, pool):
    pid = pool_id(pool["tenant"], pool["machine_id"])
    held = store.acquire(pid, 10)
    store.save_pool(pool, held)
    store.release(pid, held, 10)


# -- pools and indexes -------------------------------------------------------------------------------


def test_save_and_get_pool(store):
    pool = new_pool("acme", 123, host_machine_id=88888)
    save(store, pool)
    got = store.get_pool(PID)
    assert got["host_machine_id"] == 88888 and got["tenant"] == "acme"
    assert store.get_pool("acme:999") is None
    assert store.all_pool_ids() == [PID]
    assert [p["machine_id"] for p in store.tenant_pools("acme")] == [123]
    assert store.tenant_pools("globex") == []


def test_tenant_pools_sorted_by_machine_and_get_pools_skips_missing(store):
    for machine in (30, 4, 200):
        save(store, new_pool("acme", machine))
    save(store, new_pool("globex", 5))
    assert [p["machine_id"] for p in store.tenant_pools("acme")] == [4, 30, 200]
    assert [p["machine_id"] for p in store.get_pools(["acme:4", "acme:77", "globex:5"])] == [4, 5]
    assert store.get_pools([]) == []


def test_watched_and_primaries_indexes_follow_the_state(store):
    pool = new_pool("acme", 123, state=ACTIVE, primary_gpu_id=111)
    save(store, pool)
    assert store.watched_pool_ids() == [PID]
    assert store.primaries([111, 222]) == {111: PID}

    # failover promotes 222: the old primary leaves the index, the new one enters
    pool.update(primary_gpu_id=222)
    save(store, pool)
    assert store.primaries([111, 222]) == {222: PID}

    # a degraded pool's primary is still watched
    pool.update(state=DEGRADED)
    save(store, pool)
    assert store.watched_pool_ids() == [PID] and store.primaries([222]) == {222: PID}

    for state in (DISABLED, "failover", "provisioning", "searching"):
        pool.update(state=state)
        save(store, pool)
        assert store.watched_pool_ids() == [], state
        assert store.primaries([111, 222]) == {}, state
        pool.update(state=ACTIVE)
        save(store, pool)
        assert store.watched_pool_ids() == [PID]

    # a pool that is not enabled is not watched, whatever its state says
    pool.update(enabled=False)
    save(store, pool)
    assert store.watched_pool_ids() == [] and store.primaries([222]) == {}
    pool.update(enabled=True, primary_gpu_id=None)  # nor one without a primary
    save(store, pool)
    assert store.watched_pool_ids() == [] and store.primaries([222]) == {}
    assert store.primaries([]) == {}


def test_save_pool_with_a_stale_epoch_is_fenced_out_and_writes_nothing(store):
    old = store.acquire(PID, 0.1)
    save_pool = new_pool("acme", 123, state=ACTIVE, primary_gpu_id=111)
    store.save_pool(save_pool, old)
    wait_until(lambda: not store.is_locked(PID), timeout=5, message="the lock to expire")
    new = store.acquire(PID, 10)
    store.save_pool(new_pool("acme", 123, state=DEGRADED, primary_gpu_id=111), new)
    before = snapshot(store.r)

    stale = new_pool("acme", 123, state=ACTIVE, primary_gpu_id=999)
    with pytest.raises(FencedOut):
        store.save_pool(stale, old)
    assert snapshot(store.r) == before
    assert store.get_pool(PID)["state"] == DEGRADED and store.primaries([999, 111]) == {111: PID}


def test_the_healer_index_holds_only_unsettled_enabled_pools(store):
    pool = new_pool("acme", 123, state="provisioning")
    save(store, pool)
    assert store.unsettled_pool_ids() == [PID]
    for state, unsettled in ((ACTIVE, False), (DEGRADED, True), ("failover", True), (DISABLED, False),
                             ("searching", True)):
        pool.update(state=state)
        save(store, pool)
        assert store.unsettled_pool_ids() == ([PID] if unsettled else []), state
    pool.update(state=DEGRADED, enabled=False)
    save(store, pool)
    assert store.unsettled_pool_ids() == []


def test_save_pool_fenced_out_for_a_new_pool_writes_no_index(store):
    old = store.acquire(PID, 10)
    store.r.incr(keys.epoch(PID))  # a newer holder took the machine
    with pytest.raises(FencedOut):
        store.save_pool(new_pool("acme", 123, state=ACTIVE, primary_gpu_id=5), old)
    assert store.get_pool(PID) is None
    assert store.all_pool_ids() == [] and store.watched_pool_ids() == [] and store.tenant_pools("acme") == []


def test_save_pool_with_an_expected_step_refuses_a_duplicate_delivery(store):
    held = store.acquire(PID, 10)
    store.save_pool(new_pool("acme", 123, seq=1), held, expect_seq=0)  # first write: no record yet
    store.save_pool(new_pool("acme", 123, seq=2, volume_id=7), held, expect_seq=1)
    before = snapshot(store.r)
    with pytest.raises(FencedOut):  # a second delivery of the step that wrote seq 2
        store.save_pool(new_pool("acme", 123, seq=2, volume_id=8), held, expect_seq=1)
    assert snapshot(store.r) == before and store.get_pool(PID)["volume_id"] == 7


def test_create_pool_writes_only_where_there_is_no_record(store):
    held = store.acquire(PID, 10)
    assert store.create_pool(new_pool("acme", 123, volume_id=7), held)
    before = snapshot(store.r)
    assert not store.create_pool(new_pool("acme", 123, volume_id=8, state=DISABLED), held)
    assert snapshot(store.r) == before and store.get_pool(PID)["volume_id"] == 7


# -- operations ---------------------------------------------------------------------------------------------


def test_new_op_is_pending_with_a_ttl(store):
    op_id = store.new_op("acme", 123, "provision")
    op = store.get_op(op_id)
    assert len(op_id) == 32 and op["task_id"] == op_id
    assert (op["tenant"], op["machine_id"], op["operation"], op["state"], op["step"]) == (
        "acme", 123, "provision", "PENDING", "queued")
    assert 0 < store.r.ttl(keys.op(op_id)) <= OP_TTL
    assert store.new_op("acme", 123, "provision") != op_id
    assert store.get_op("0" * 32) is None


@pytest.mark.parametrize("final", ["SUCCESS", "FAILURE"])
def test_final_op_states_are_final(store, final):
    op_id = store.new_op("acme", 123, "failover")
    store.update_op(op_id, state="STARTED", step="stop_primary")
    assert store.get_op(op_id)["step"] == "stop_primary"
    store.update_op(op_id, state=final, step="done", result={"success": final == "SUCCESS"})
    outcome = {k: store.get_op(op_id)[k] for k in ("state", "result", "error")}
    # a redelivered step does not reopen it, nor change its outcome (only follow-up steps may show)
    store.update_op(op_id, state="STARTED", step="stop_primary")
    store.update_op(op_id, state="SUCCESS" if final == "FAILURE" else "FAILURE", error="late", result={"x": 1})
    assert {k: store.get_op(op_id)[k] for k in outcome} == outcome and outcome["state"] == final


def test_update_of_an_unknown_op_creates_nothing(store):
    store.update_op("f" * 32, state="SUCCESS")
    assert store.get_op("f" * 32) is None and store.r.keys("*") == []


def test_update_op_never_writes_back_over_a_context_saved_between_its_read_and_its_write(store, monkeypatch):
    """A step's advance saves the operation's context in the op record (``save_pool``) while another writer
    (a fenced-out step's ``op.step``) updates the same record: the update is retried on what is there now."""
    op_id = store.new_op("acme", 123, "failover")
    real_transaction, meddled = store.r.transaction, []

    def meddling(write, *watched, **kwargs):
        def write_after_a_save(pipe):
            real_get = pipe.get

            def get(key):
                raw = real_get(key)
                if not meddled:  # the first read: the newer holder's advance lands right after it
                    meddled.append(key)
                    saved = json.loads(raw)
                    store.r.set(key, json.dumps({**saved, "context": {"phases": {"fence_old_primary": 1.0}}}))
                return raw
            pipe.get = get
            return write(pipe)
        return real_transaction(write_after_a_save, *watched, **kwargs)

    monkeypatch.setattr(store.r, "transaction", meddling)
    store.update_op(op_id, state="STARTED", step="await_stopped")
    op = store.get_op(op_id)
    assert meddled and op["step"] == "await_stopped" and op["context"] == {"phases": {"fence_old_primary": 1.0}}


def test_wait_op_returns_when_the_op_ends(store):
    op_id = store.new_op("acme", 123, "cleanup")
    channel = keys.op_done(op_id)

    def finish():
        wait_until(lambda: store.r.pubsub_numsub(channel)[0][1] > 0, timeout=5, interval=0.01,
                   message="the waiter to subscribe")
        store.update_op(op_id, state="SUCCESS", step="done", result={"success": True})

    threading.Thread(target=finish, daemon=True).start()
    op = store.wait_op(op_id, 600)  # past pytest's timeout: only the end wakes it in time
    assert op["state"] == "SUCCESS" and op["result"] == {"success": True}


def test_wait_op_returns_at_once_for_an_ended_op(store):
    op_id = store.new_op("acme", 123, "cleanup")
    store.update_op(op_id, state="FAILURE", error="boom")
    assert store.wait_op(op_id, 600)["error"] == "boom"  # past pytest's timeout: it must not wait at all


def test_wait_op_times_out_with_the_running_record(store):
    op_id = store.new_op("acme", 123, "cleanup")
    store.update_op(op_id, state="STARTED", step="destroy_instances")
    started = time.monotonic()
    op = store.wait_op(op_id, 0.3)
    elapsed = time.monotonic() - started
    assert op["state"] == "STARTED" and op["step"] == "destroy_instances"
    assert elapsed >= 0.3  # it waited its whole timeout
    assert store.wait_op("e" * 32, 5) is None  # unknown: no wait at all


# -- events ----------------------------------------------------------------------------------------------------


def test_events_newest_first_and_capped(store):
    for i in range(EVENTS_KEPT + 30):
        store.event(PID, "tick", f"event {i}", n=i)
    assert store.r.llen(keys.events(PID)) == EVENTS_KEPT
    events = store.events(PID, limit=EVENTS_KEPT + 100)
    assert len(events) == EVENTS_KEPT
    assert events[0]["n"] == EVENTS_KEPT + 29 and events[-1]["n"] == 30
    assert events[0]["event"] == "tick" and events[0]["message"] == f"event {EVENTS_KEPT + 29}" and events[0]["at"]
    assert [e["n"] for e in store.events(PID, limit=3)] == [EVENTS_KEPT + 29, EVENTS_KEPT + 28, EVENTS_KEPT + 27]
    assert store.events("acme:1") == []


def test_an_events_details_never_replace_when_it_happened(store):
    store.event(PID, "tick", "planned", at="2099-01-01T00:00:00Z", event="other")
    recorded, = store.events(PID)
    assert recorded["at"] < "2099" and (recorded["event"], recorded["message"]) == ("tick", "planned")
    assert list(recorded) == ["at", "event", "message"]


# -- API keys ------------------------------------------------------------------------------------------------------


def test_api_keys_are_stored_hashed(store):
    raw = "s3cret-key-Zq9"
    store.add_api_key("acme", raw)
    assert store.tenant_for_key(raw, {}) == "acme"
    assert store.tenant_for_key("s3cret-key-Zq8", {}) is None and store.tenant_for_key("", {}) is None
    dump = repr(snapshot(store.r))
    assert raw not in dump and "acme" in dump

