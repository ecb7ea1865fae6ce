"""The healer (tasks/heal.py): which pools it visits, and every branch of ``repair``."""

import json
import time

import pytest

from app.pools import State, label
from app.store import keys
from app.vast import ProviderUnavailable
from tasks import heal

PID = "acme:1"


def pool_at(env, primary: str | None = "running", standby: bool = True, **fields) -> dict:
    """A pool whose primary (in the given status) and stopped standby exist at the provider."""
    primary_id = primary and env.vast.add_instance(label("acme", 1, "primary"), primary)
    standby_id = standby and env.vast.add_instance(label("acme", 1, "standby"), "stopped") or None
    return env.add_pool(1, **{"state": State.DEGRADED, "primary_gpu_id": primary_id, "standby_gpu_id": standby_id,
                              "primary_ssh_host": "ssh4.vast.ai" if primary else None, **fields})


def running_op(env, operation: str, **fields) -> str:
    op_id = env.store.new_op("acme", 1, operation)
    env.store.update_op(op_id, state="STARTED", step="interrupted", **fields)
    return op_id


def started(env) -> list[tuple]:
    return [(kind, {k: record.get(k) for k in ("op_id", "trigger", "search", "steps")})
            for kind, record in env.enqueued]


# -- repair: nothing to do -------------------------------------------------------------------------------


@pytest.mark.parametrize("fields", [{"state": State.ACTIVE}, {"state": State.DISABLED, "enabled": False},
                                    {"state": State.DEGRADED, "enabled": False}])
def test_repair_leaves_settled_or_disabled_pools_alone(env, fields):
    pool = pool_at(env, **fields)
    assert heal.repair(PID) == "nothing to do"
    assert env.store.get_pool(PID) == pool and env.enqueued == [] and not env.store.is_locked(PID)


def test_repair_of_a_pool_that_does_not_exist_does_nothing(env):
    assert heal.repair(PID) == "nothing to do" and env.enqueued == []


def test_repair_leaves_a_busy_pool_to_its_operation(env):
    pool_at(env, primary="exited")
    env.hold_lock(1)
    assert heal.repair(PID) == "nothing to do"
    assert env.enqueued == [] and env.vast.calls == []


# -- repair: interrupted operations go on under their task id -----------------------------------------------------


def test_repair_finishes_an_unfinished_cleanup(env):
    op_id = running_op(env, "cleanup")
    pool_at(env, state=State.DISABLED, enabled=False, cleanup_pending=True, op_id=op_id)
    assert heal.repair(PID) == "cleanup"
    assert started(env) == [("cleanup", {"op_id": op_id, "trigger": None, "search": None, "steps": [
        "warmpool.cleanup.destroy_instances", "warmpool.cleanup.delete_volume"]})]
    assert env.store.is_locked(PID)  # handed to the cleanup's steps


def test_repair_finishes_a_cleanup_accepted_before_any_step_ran(env):
    """The cleanup starter marks the pool: a worker killed before the first step leaves an active pool that
    the healer must not take for settled."""
    op_id = running_op(env, "cleanup")
    pool_at(env, state=State.ACTIVE, cleanup_pending=True, op_id=op_id)
    assert env.store.unsettled_pool_ids() == [PID]
    assert heal.repair(PID) == "cleanup"
    assert [name for name, _ in started(env)] == ["cleanup"]


def test_repair_of_a_cleanup_whose_task_ended_starts_it_under_a_new_one(env):
    op_id = env.store.new_op("acme", 1, "cleanup")
    env.store.update_op(op_id, state="FAILURE", error="volume in use")
    pool_at(env, state=State.DISABLED, enabled=False, cleanup_pending=True, op_id=op_id)
    assert heal.repair(PID) == "cleanup"
    assert env.of("cleanup")[0]["op_id"] not in (None, op_id)
    assert env.store.get_op(op_id)["state"] == "FAILURE"  # an ended task keeps its outcome


def test_repair_finishes_a_failover_stopped_after_its_promotion(env):
    op_id = running_op(env, "failover")
    pool_at(env, state=State.PROVISIONING, standby=False, retire_gpu_id=77, op_id=op_id)
    assert heal.repair(PID) == "finish failover"
    assert started(env) == [("finish_failover", {"op_id": op_id, "trigger": None, "search": None, "steps": [
        "warmpool.failover.retire_old_primary", "warmpool.provision.create_standby"]})]


@pytest.mark.parametrize("trigger, expected", [("health", "health"), ("manual", "manual"), (None, "heal")])
def test_repair_resumes_a_failover_decided_then_interrupted(env, trigger, expected):
    op_id = running_op(env, "failover", **({"trigger": trigger} if trigger else {}))
    pool_at(env, state=State.FAILOVER, op_id=op_id)
    assert heal.repair(PID) == "resume failover"
    launched, = env.of("failover")
    assert (launched["op_id"], launched["trigger"]) == (op_id, expected)
    assert env.store.get_op(op_id)["state"] == "STARTED"


# -- repair: degraded pools ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["exited", "offline", None])
def test_repair_fails_over_a_primary_that_does_not_run(env, status):
    pool = pool_at(env, primary=status or "running")
    if status is None:
        env.vast.destroy_instance(pool["primary_gpu_id"])  # gone
    assert heal.repair(PID) == "failover"
    launched, = env.of("failover")
    assert launched["trigger"] == "heal" and launched["old_primary"] == pool["primary_gpu_id"]
    assert env.store.get_pool(PID)["state"] == State.FAILOVER


def test_repair_makes_a_pool_active_again_when_its_host_has_a_free_gpu(env):
    pool_at(env, error_message="host 88888 has no free GPU", heal_attempts=3)
    env.vast.offers = [{"id": 1, "machine_id": 88888}]
    assert heal.repair(PID) == "active"
    pool = env.store.get_pool(PID)
    assert (pool["state"], pool["error_message"], pool["heal_attempts"]) == (State.ACTIVE, None, 0)
    assert env.store.events(PID)[0]["event"] == "healed" and env.enqueued == [] and not env.store.is_locked(PID)
    assert env.vast.searches[0]["machine_id"] == {"eq": 88888}


def test_repair_backs_off_while_the_host_has_no_free_gpu(env):
    pool_at(env, heal_attempts=2)
    before = time.time()
    assert heal.repair(PID) == "retry later"
    pool = env.store.get_pool(PID)
    assert pool["state"] == State.DEGRADED and "host 88888 still has no free GPU" in pool["error_message"]
    assert pool["heal_attempts"] == 3 and pool["next_heal_at"] >= before + 5.0 * 2 ** 2 * 0.8
    assert env.enqueued == [] and not env.store.is_locked(PID)


def test_repair_when_the_provider_fails_backs_off(env):
    pool_at(env)
    env.vast.fail["show_instance"] = ProviderUnavailable("502 from Vast", 502)
    assert heal.repair(PID) == "retry later"
    pool = env.store.get_pool(PID)
    assert pool["state"] == State.DEGRADED and "provider unavailable" in pool["error_message"]
    assert env.enqueued == [] and not env.store.is_locked(PID)


def test_repair_provisions_what_a_pool_on_a_host_lacks(env):
    op_id = running_op(env, "provision")
    pool_at(env, standby=False, state=State.PROVISIONING, op_id=op_id)
    assert heal.repair(PID) == "provision"
    assert started(env) == [("provision", {"op_id": op_id, "trigger": None, "search": False, "steps": [
        "warmpool.provision.create_volume", "warmpool.provision.create_primary", "warmpool.provision.await_primary",
        "warmpool.provision.create_standby"]})]


def test_repair_of_a_pool_without_a_host_searches_one(env):
    pool_at(env, primary=None, standby=False, host_machine_id=None, volume_id=None)
    assert heal.repair(PID) == "provision"
    assert env.store.get_pool(PID)["state"] == State.SEARCHING
    assert env.of("provision")[0]["search"] is True and env.vast.calls == []


def test_a_pool_that_never_held_anything_stops_being_healed_after_a_few_failures(env):
    never = {"primary": None, "standby": False, "host_machine_id": None, "volume_id": None,
             "error_message": "no host has RTX_9999"}
    pool_at(env, **never, heal_attempts=2)
    assert heal.repair(PID) == "provision"  # a few tries first
    env.reset()
    pool_at(env, **never, heal_attempts=3)  # the third failed: given up
    hook = env.store.add_webhook("acme", "https://93.184.216.34/hook", ["pool.heal_given_up"])
    assert heal.repair(PID) == "given up"
    pool = env.store.get_pool(PID)
    assert pool["state"] == State.DEGRADED and "healing stopped" in pool["error_message"]
    assert "no host has RTX_9999" in pool["error_message"] and not env.store.is_locked(PID)
    assert env.store.events(PID)[0]["event"] == "heal_given_up"
    [delivery] = env.store.deliveries(hook["id"])  # the tenant is told
    assert delivery["type"] == "pool.heal_given_up" and "healing stopped" in delivery["payload"]
    assert env.store.unsettled_pool_ids() == [] and heal.heal() == 0 and env.enqueued == []  # never visited again
    rv = env.api("POST", "/api/v1/warmpool/enable/1", json={"gpu_name": "RTX_4090"})  # an operator starts over
    assert rv.status_code == 202 and env.store.unsettled_pool_ids() == [PID]


def test_a_pool_that_held_resources_is_healed_however_often_it_failed(env):
    pool_at(env, primary=None, standby=False, host_machine_id=None, heal_attempts=10)  # its volume is left
    assert heal.repair(PID) == "provision"


# -- heal: which pools are visited --------------------------------------------------------------------------------------


def repairs(env) -> list[str]:
    return [e["args"][0] for e in env.of("apply_async") if e["task"] == "warmpool.heal.repair"]


def test_heal_visits_unsettled_pools_that_are_due_and_free(env):
    env.add_pool(1, state=State.DEGRADED, next_heal_at=0)  # due
    env.add_pool(2, state=State.DEGRADED, next_heal_at=time.time() + 600)  # backing off
    env.add_pool(3, state=State.DEGRADED, next_heal_at=0)
    env.hold_lock(3)  # an operation runs
    env.add_pool(4, state=State.PROVISIONING, op_id=env.store.new_op("acme", 4, "provision"))  # just started
    stale = env.store.new_op("acme", 5, "provision")
    env.add_pool(5, state=State.PROVISIONING, op_id=stale)
    interrupted = {**env.store.get_op(stale), "state": "STARTED", "updated_at": "2000-01-01T00:00:00.000Z"}
    env.r.set(keys.op(stale), json.dumps(interrupted))  # its worker died long ago
    env.add_pool(6)  # active: not even looked at
    assert heal.heal() == 2
    assert repairs(env) == ["acme:1", "acme:5"]
