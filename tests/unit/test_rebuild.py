"""The rebuild's write (tasks/rebuild.py) on the in-memory provider: a record is written only where there is none,
checked in the write's own transaction. What the provider's rows form is tested in tests/integration/test_rebuild.py."""

import json

import redis

from app.pools import State, label, new_pool
from app.store import keys
from tasks import rebuild

PID = "acme:1"


def test_a_record_written_during_the_listing_is_never_overwritten(env, monkeypatch):
    volume = env.vast.add_volume("warmpool_acme_1_volume")
    link = {"volume_info": [{"id": volume}]}
    env.vast.add_instance(label("acme", 1, "primary"), **link)
    env.vast.add_instance(label("acme", 1, "standby"), "stopped", **link)
    listing = env.vast.show_volumes

    def cleanup_ends_meanwhile():
        # a cleanup finishes while the rebuild lists (80 s at 1,000 pools): its record, disabled, is back
        env.add_pool(1, state=State.DISABLED, enabled=False, volume_id=None, primary_gpu_id=None,
                     standby_gpu_id=None)
        return listing()

    monkeypatch.setattr(env.vast, "show_volumes", cleanup_ends_meanwhile)
    done, = rebuild.rebuild([PID])
    assert done.outcome == rebuild.HAS_RECORD
    pool = env.store.get_pool(PID)
    assert (pool["state"], pool["enabled"], pool["volume_id"]) == (State.DISABLED, False, None)
    assert "pool_rebuilt" not in [e["event"] for e in env.store.events(PID)] and not env.store.is_locked(PID)


def test_a_missing_record_is_rebuilt(env):
    volume = env.vast.add_volume("warmpool_acme_1_volume")
    link = {"volume_info": [{"id": volume}]}
    primary = env.vast.add_instance(label("acme", 1, "primary"), **link)
    standby = env.vast.add_instance(label("acme", 1, "standby"), "stopped", **link)
    done, = rebuild.rebuild([PID])
    pool = env.store.get_pool(PID)
    assert done.outcome == rebuild.REBUILT and (pool["state"], pool["primary_gpu_id"], pool["standby_gpu_id"]) == (
        State.ACTIVE, primary, standby)


def test_a_rebuild_that_finds_two_instances_up_on_the_volume_sends_the_split_brain_guard(env):
    volume = env.vast.add_volume("warmpool_acme_1_volume")
    link = {"volume_info": [{"id": volume}]}
    primary = env.vast.add_instance(label("acme", 1, "primary"), **link)
    beside = env.vast.add_instance(label("acme", 1, "standby"), **link)  # running too
    done, = rebuild.rebuild([PID])
    assert done.outcome == rebuild.REBUILT and env.store.get_pool(PID)["primary_gpu_id"] == primary
    guarded, = env.of("guard_split_brain")
    assert guarded["pid"] == PID and str([beside]) in guarded["reason"]


def test_a_record_written_between_the_rebuilds_check_and_its_write_is_kept(env, monkeypatch):
    """Another writer's record lands after the rebuild last found none, at the moment its write is sent (a
    writer the fence does not stop: a raw write). The check and the write are one transaction (``create_pool``),
    so the rebuild sees that record and leaves it; a check made apart from the write would overwrite it."""
    volume = env.vast.add_volume("warmpool_acme_1_volume")
    link = {"volume_info": [{"id": volume}]}
    env.vast.add_instance(label("acme", 1, "primary"), **link)
    env.vast.add_instance(label("acme", 1, "standby"), "stopped", **link)
    theirs = new_pool("acme", 1, state=State.DISABLED, enabled=False)
    queue_command, landed = redis.client.Pipeline.pipeline_execute_command, []

    def their_write_lands_first(pipe, *args, **options):
        if not landed and args[:2] == ("SET", keys.pool(PID)):  # the rebuild's write, queued in its MULTI
            landed.append(env.r.set(keys.pool(PID), json.dumps(theirs)))
        return queue_command(pipe, *args, **options)

    monkeypatch.setattr(redis.client.Pipeline, "pipeline_execute_command", their_write_lands_first)
    done, = rebuild.rebuild([PID])
    assert landed == [True], "the rebuild wrote no record: this test no longer puts a writer before its write"
    assert done.outcome == rebuild.HAS_RECORD
    pool = env.store.get_pool(PID)
    assert (pool["state"], pool["enabled"], pool["primary_gpu_id"]) == (State.DISABLED, False, None)
    assert "pool_rebuilt" not in [e["event"] for e in env.store.events(PID)] and not env.store.is_locked(PID)
