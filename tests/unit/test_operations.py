"""Operations (app/operations.py): what each starter writes and sends, a whole chain run step by step on the
in-memory provider, and the disable or cleanup queued behind a running operation (``when_unlocked``)."""

import dataclasses
import time

import pytest
from celery import shared_task
from celery.exceptions import Retry

from app import operations, runtime
from app.operations import DONE, NEXT, StepOutcome
from app.pools import State, label
from app.store import keys
from app.vast import ProviderUnavailable
from tasks import celery_app, failover
from tasks.base import Operation, Step
from tasks.operations import when_unlocked
from tests.unit.fakes import deliver, run_steps

PID = "acme:1"
CONFIRM = "warmpool.failover.confirm_failure"


def message_of(record: dict) -> dict:
    """The message of a started operation's first step (tests/unit/fakes.py: started_record)."""
    return {k: record[k] for k in ("pid", "op_id", "token", "epoch", "seq")}


def protected(env, **fields) -> dict:
    env.vast.offers = [{"id": 1, "machine_id": 88888}]
    primary = env.vast.add_instance(label("acme", 1, "primary"))
    standby = env.vast.add_instance(label("acme", 1, "standby"), "stopped")
    return env.add_pool(1, **{"primary_gpu_id": primary, "standby_gpu_id": standby, **fields})


# -- starters ---------------------------------------------------------------------------------------------------


def test_a_failover_starter_marks_the_pool_and_the_task(env):
    pool = protected(env)
    held = env.store.acquire(PID, 10)
    op_id = operations.failover(PID, held, "health", detected_at=1.0, healthy_at=0.5, triggered_at=2.0)
    started, = env.of("failover")
    assert (started["op_id"], started["old_primary"], started["state_before"]) == (
        op_id, pool["primary_gpu_id"], State.ACTIVE)
    assert (started["detected_at"], started["healthy_at"], started["triggered_at"]) == (1.0, 0.5, 2.0)
    # a health failover confirms first; no replica, so no host check
    assert started["step"] == CONFIRM and "warmpool.failover.check_host" not in started["steps"]
    assert env.store.get_op(op_id)["context"]["old_primary"] == pool["primary_gpu_id"]  # in the op record
    after = env.store.get_pool(PID)
    assert (after["state"], after["op_id"], started["seq"]) == (State.FAILOVER, op_id, after["seq"])
    assert env.store.get_op(op_id)["trigger"] == "health" and env.store.watched_pool_ids() == []


def test_a_new_standby_is_asked_for_with_its_reason(env):
    protected(env, standby_gpu_id=None)
    operations.replace_standby(PID, env.store.acquire(PID, 10), None, "the standby was given up")
    started, = env.of("replace_standby")
    assert started["step"] == "warmpool.provision.create_standby" and started["reason"] == \
        "the standby was given up"
    assert env.store.get_op(started["op_id"])["operation"] == "replace_standby"  # every operation has a record


# -- whole operations, step after step as the declarations say ------------------------------------------------------


def test_a_manual_failover_runs_to_the_end(env):
    pool = protected(env)
    rv = env.api("POST", "/api/v1/warmpool/failover/test/1")
    assert rv.status_code == 202
    ran = run_steps(env)
    assert ran == operations.FAILOVER.path(env.store.get_op(rv.json["task_id"])["context"])
    after = env.store.get_pool(PID)
    assert after["state"] == State.ACTIVE and after["primary_gpu_id"] == pool["standby_gpu_id"]
    assert after["failover_count"] == 1 and after["retire_gpu_id"] is None and after["seq"] == pool["seq"] + len(ran)
    new_standby = env.vast.instances[after["standby_gpu_id"]]
    assert new_standby["label"] == label("acme", 1, "standby") and new_standby["actual_status"] == "stopped"
    assert pool["primary_gpu_id"] not in env.vast.instances  # the old primary is destroyed
    assert env.vast.instances[after["primary_gpu_id"]]["label"] == label("acme", 1, "primary")
    running = [i for i in env.vast.instances.values() if i["actual_status"] == "running"]
    assert [i["id"] for i in running] == [after["primary_gpu_id"]]
    task = env.store.get_op(rv.json["task_id"])
    assert task["state"] == "SUCCESS" and set(task["result"]["phases"]) >= {"fence_old_primary", "start_standby"}
    assert not env.store.is_locked(PID)


def test_a_health_failover_of_a_primary_that_runs_again_is_cancelled(env):
    pool = protected(env)
    operations.failover(PID, env.store.acquire(PID, 10), "health")
    assert run_steps(env) == [CONFIRM]  # confirm_failure ends the operation
    after = env.store.get_pool(PID)
    assert after["state"] == State.ACTIVE and after["primary_gpu_id"] == pool["primary_gpu_id"]
    assert env.vast.called("stop_instance") == [] and not env.store.is_locked(PID)
    assert env.store.events(PID)[0]["event"] == "failover_cancelled"


def confirming(env, pid: str, **fields):
    """Run the failover's first step for a pool whose health failover was just triggered."""
    operations.failover(pid, env.store.acquire(pid, 10), "health")
    message = message_of(env.of("failover")[-1])
    try:
        return deliver(failover.confirm_failure, message)
    except Retry:  # asked after the last poll round: delivered again once the next is due
        env.store.r.set(keys.awaited_round(), 0)
        return deliver(failover.confirm_failure, message)


def test_the_cap_counts_only_failures_the_provider_confirms(env):
    env.configure(failovers_per_minute=1)
    protected(env)
    for _ in range(3):  # false triggers (a replayed notification, a wrong list): each cancelled, none counted
        assert confirming(env, PID) is DONE
    assert env.store.r.zcard(keys.FAILOVERS) == 0
    env.vast.instances[env.store.get_pool(PID)["primary_gpu_id"]]["actual_status"] = "offline"
    assert confirming(env, PID) is NEXT  # the real failure goes on, and takes the slot
    assert env.store.r.zcard(keys.FAILOVERS) == 1 and len(env.vast.called("show_instance")) == 4


def test_a_confirmed_failure_past_the_cap_is_confirmed_once_more_and_never_deferred(env):
    env.configure(failovers_per_minute=0)
    pool = protected(env)
    env.vast.instances[pool["primary_gpu_id"]]["actual_status"] = "offline"
    direct_show, turns = env.vast.show_instance, []
    env.vast.show_instance = lambda instance_id: turns.append(runtime.ranked.get()) or direct_show(instance_id)
    assert confirming(env, PID) is NEXT
    assert len(env.vast.called("show_instance")) == 2  # past the cap: its own second direct call
    # in a ranked turn, which gives the thread back when far off: never holds threads pools within the cap need
    assert len(turns) == 2 and turns[0] is None and turns[1] is not None  # the first: a slot free now, unranked
    assert env.store.events(PID)[0]["event"] == "failover_cap_exceeded"


def test_the_failover_cap_is_each_vast_accounts_own(env):
    """A correlated failure on one account uses up that account's cap only (rule 17): a failure on another account
    is within its own cap and goes on after one look, with no second call on its account's show budget."""
    env.configure(failovers_per_minute=1, vast_accounts={"globex": "globex-vast-key"})
    for tenant, machine in (("acme", 1), ("acme", 2), ("globex", 3)):
        env.add_pool(machine, tenant, primary_gpu_id=env.vast.add_instance(label(tenant, machine, "primary"), "offline"),
                     standby_gpu_id=env.vast.add_instance(label(tenant, machine, "standby"), "stopped"))
    looks = {}
    for pid in ("acme:1", "acme:2", "globex:3"):
        before = len(env.vast.called("show_instance"))
        assert confirming(env, pid) is NEXT  # every confirmed failure goes on
        looks[pid] = len(env.vast.called("show_instance")) - before
    assert looks == {"acme:1": 1, "acme:2": 2, "globex:3": 1}  # acme:2 past acme's cap; globex within its own
    assert [e["event"] for e in env.store.events("globex:3")].count("failover_cap_exceeded") == 0
    assert env.store.r.zcard(keys.failovers()) == 1 and env.store.r.zcard(
        keys.failovers(env.settings.account_of("globex"))) == 1


def test_a_provider_answering_garbage_for_the_whole_fleet_fails_nothing_over(env):
    """Every primary listed failed, and each direct answer says failed once, then loading."""
    env.configure(failovers_per_minute=1)
    env.vast.offers = [{"id": 1, "machine_id": 88888}]
    for machine in range(1, 6):
        primary = env.vast.add_instance(label("acme", machine, "primary"), "offline")
        env.add_pool(machine, primary_gpu_id=primary,
                     standby_gpu_id=env.vast.add_instance(label("acme", machine, "standby"), "stopped"))
    answers: dict[int, int] = {}

    def flapping(instance_id):
        answers[instance_id] = answers.get(instance_id, 0) + 1
        return {**env.vast.instances[instance_id], "actual_status": "offline" if answers[instance_id] == 1 else
                "loading"}

    env.vast.show_instance = flapping
    env.vast.fail["stop_instance"] = AssertionError("nothing may be stopped")
    confirmed = 0
    for machine in range(1, 6):
        confirmed += confirming(env, f"acme:{machine}") is NEXT
    assert confirmed == 1  # the one within the cap; the other four were asked again and cancelled
    assert [env.store.get_pool(f"acme:{m}")["state"] for m in range(2, 6)] == [State.ACTIVE] * 4
    env.vast.show_instance = lambda instance_id: (_ for _ in ()).throw(ProviderUnavailable("garbage 2xx"))
    # an answer that cannot be read is unknown: cancelled, never a failure
    assert confirming(env, "acme:2") is DONE


def test_one_list_call_confirms_every_pending_failure(env):
    """A correlated failure: the show budget is busy (Vast allows one show a 2 s), so each failover's
    confirmation is answered by the shared poll round, not a call of its own."""
    from app.runtime import Throttled
    from app.store import keys

    env.vast.fail["show_instance"] = Throttled(2.0)

    contexts = []
    for machine in (1, 2, 3):
        primary = env.vast.add_instance(label("acme", machine, "primary"), "offline")
        env.add_pool(machine, primary_gpu_id=primary)
        operations.failover(f"acme:{machine}", env.store.acquire(f"acme:{machine}", 10), "health")
        contexts.append(env.of("failover")[-1])
    confirm = celery_app.tasks[CONFIRM]
    assert deliver(confirm, message_of(contexts[0])) is NEXT  # the first round is due
    for ctx in contexts[1:]:
        with pytest.raises(Retry):  # asked after that round: waits for the next
            deliver(confirm, message_of(ctx))
    env.store.r.set(keys.awaited_round(), 0)  # the round's interval passed
    for ctx in contexts[1:]:
        assert deliver(confirm, message_of(ctx)) is NEXT  # confirmed: on to stop_primary
    rounds = env.vast.called("list_instances")
    assert len(rounds) == 2 and {ctx["old_primary"] for ctx in contexts} <= set(rounds[1][1]["id"]["in"])


def label_filters(env) -> list[dict]:
    return [call[1] for call in env.vast.called("list_instances") if "label" in (call[1] or {})]


def test_a_fence_needs_no_list_of_its_own_when_a_later_sweep_counted_no_other_primary(env):
    pool = protected(env)
    env.vast.instances[pool["primary_gpu_id"]]["actual_status"] = "offline"
    operations.failover(PID, env.store.acquire(PID, 10), "health")
    env.store.record_sweep(0.0, {label("acme", 1, "primary"): 1})  # a sweep after the failover took the lock
    run_steps(env, next_round=True)
    assert label_filters(env) == [] and env.store.get_pool(PID)["primary_gpu_id"] == pool["standby_gpu_id"]


@pytest.mark.parametrize("counted", [None, 2])
def test_an_instance_that_also_carries_the_primary_label_is_stopped_before_the_standby_starts(env, counted):
    """No sweep since the failover started, or one that counted another instance with the label: the fence lists
    the label and stops every one (rule 3)."""
    pool = protected(env)
    env.vast.instances[pool["primary_gpu_id"]]["actual_status"] = "offline"
    leaked = env.vast.add_instance(label("acme", 1, "primary"))
    operations.failover(PID, env.store.acquire(PID, 10), "health")
    if counted:
        env.store.record_sweep(0.0, {label("acme", 1, "primary"): counted})
    run_steps(env, next_round=True)
    assert label_filters(env) and env.vast.called("stop_instance")[:2] == [
        ("stop_instance", pool["primary_gpu_id"]), ("stop_instance", leaked)]
    assert "split_brain_resolved" in [e["event"] for e in env.store.events(PID)]


def test_a_provision_runs_to_the_end(env):
    env.vast.offers = [{"id": 1, "machine_id": 88888}]
    rv = env.api("POST", "/api/v1/warmpool/provision", json={"machine_id": 1, "host_machine_id": 88888})
    assert rv.status_code == 202
    run_steps(env)
    pool = env.store.get_pool(PID)
    assert pool["state"] == State.ACTIVE and env.store.watched_pool_ids() == [PID]
    primary, standby = env.vast.instances[pool["primary_gpu_id"]], env.vast.instances[pool["standby_gpu_id"]]
    assert (primary["label"], primary["actual_status"]) == (label("acme", 1, "primary"), "running")
    assert (standby["label"], standby["actual_status"]) == (label("acme", 1, "standby"), "stopped")
    assert pool["primary_ssh_host"] == primary["ssh_host"] and pool["volume_id"] in env.vast.volumes
    assert env.store.get_op(rv.json["task_id"])["result"]["status"]["state"] == State.ACTIVE


def test_a_cleanup_runs_to_the_end(env):
    protected(env, volume_id=env.vast.add_volume("warmpool_acme_1_volume"))
    leaked = env.vast.add_instance(label("acme", 1, "primary"))  # even what an interrupted attempt made
    rv = env.api("DELETE", "/api/v1/warmpool/cleanup/1")
    run_steps(env)
    pool = env.store.get_pool(PID)
    assert env.vast.instances == {} and env.vast.volumes == {} and leaked not in env.vast.instances
    assert (pool["state"], pool["enabled"], pool["cleanup_pending"], pool["volume_id"]) == (
        State.DISABLED, False, False, None)
    assert env.store.get_op(rv.json["task_id"])["state"] == "SUCCESS" and not env.store.is_locked(PID)


def test_a_pool_cleaned_up_and_provisioned_again_counts_its_failovers_from_0(env):
    """Issue 21: the count and the last failover describe what the cleanup gave back; the pool provisioned again
    starts at 0. The record's seq and the machine's fencing epoch never go back (rule 13), and the events stay."""
    protected(env, volume_id=env.vast.add_volume("warmpool_acme_1_volume"))
    env.api("POST", "/api/v1/warmpool/failover/test/1")
    run_steps(env)
    failed_over = env.store.get_pool(PID)
    assert failed_over["failover_count"] == 1 and failed_over["last_failover"] is not None
    env.api("DELETE", "/api/v1/warmpool/cleanup/1")
    run_steps(env)
    cleaned, epoch = env.store.get_pool(PID), env.store.epoch(PID)
    assert cleaned["failover_count"] == 1  # until the pool is provisioned again, the status still shows them

    rv = env.api("POST", "/api/v1/warmpool/provision", json={"machine_id": 1, "host_machine_id": 88888})
    assert rv.status_code == 202, rv.json
    run_steps(env, next_round=True)  # the poll round that sees the new primary run
    pool = env.store.get_pool(PID)
    assert pool["state"] == State.ACTIVE and pool["primary_gpu_id"] in env.vast.instances
    assert (pool["failover_count"], pool["last_failover_at"], pool["last_failover"]) == (0, None, None)
    assert pool["seq"] > cleaned["seq"] > failed_over["seq"] and env.store.epoch(PID) > epoch
    assert "failover_completed" in [e["event"] for e in env.store.events(PID)]


# -- adding a step: one line in the declaration, and the step -------------------------------------------------------


@shared_task(bind=True, base=Step, name="warmpool.tests.between_stop_and_start")
def between_stop_and_start(self, op: Operation) -> StepOutcome:
    """A no-op step that the test below declares between the fence and the standby's start."""
    op.step("between_stop_and_start")
    return NEXT


def test_a_step_added_to_the_failover_declaration_runs_in_its_place_and_the_failover_completes(env, monkeypatch):
    steps = list(operations.FAILOVER.steps)
    at = [spec.task for spec in steps].index("warmpool.failover.start_standby")
    steps.insert(at, operations.StepSpec(between_stop_and_start.name))  # the line a newcomer adds to FAILOVER
    monkeypatch.setitem(operations.DECLARED, "failover", dataclasses.replace(operations.FAILOVER, steps=tuple(steps)))
    pool = protected(env)
    rv = env.api("POST", "/api/v1/warmpool/failover/test/1")
    ran = run_steps(env)
    new = ran.index(between_stop_and_start.name)
    assert ran[new - 1:new + 2] == ["warmpool.failover.await_stopped", between_stop_and_start.name,
                                    "warmpool.failover.start_standby"]
    after = env.store.get_pool(PID)
    assert after["state"] == State.ACTIVE and after["primary_gpu_id"] == pool["standby_gpu_id"]
    assert after["seq"] == pool["seq"] + len(ran) and not env.store.is_locked(PID)
    assert env.store.get_op(rv.json["task_id"])["state"] == "SUCCESS"


# -- when_unlocked ---------------------------------------------------------------------------------------------------


def queued(env, operation: str, behind: str = "b" * 32) -> str:
    protected(env, op_id=behind)
    return env.store.new_op("acme", 1, operation)


def test_a_queued_disable_waits_while_the_machine_is_held(env):
    op_id = queued(env, "disable")
    env.hold_lock(1)
    with pytest.raises(Retry):
        deliver(when_unlocked, PID, "disable", op_id, "b" * 32)
    assert env.of("apply_async")[-1]["countdown"] == env.settings.poll_interval
    assert env.store.get_pool(PID)["state"] == State.ACTIVE


def test_a_queued_disable_runs_once_the_operation_ended(env):
    op_id = queued(env, "disable")
    deliver(when_unlocked, PID, "disable", op_id, "b" * 32)
    pool = env.store.get_pool(PID)
    assert (pool["state"], pool["enabled"], pool["fallback"]) == (State.DISABLED, False, "cpu_standby")
    task = env.store.get_op(op_id)
    assert task["state"] == "SUCCESS" and task["result"] == {"status": "disabled", "fallback": "cpu_standby"}
    assert not env.store.is_locked(PID) and env.store.events(PID)[0]["event"] == "disabled"


def test_a_queued_cleanup_starts_under_its_task_id(env):
    op_id = queued(env, "cleanup")
    deliver(when_unlocked, PID, "cleanup", op_id, "b" * 32)
    started, = env.of("cleanup")
    assert started["op_id"] == op_id and env.store.is_locked(PID)


def test_a_queued_operation_is_skipped_when_the_pool_moved_on(env):
    op_id = queued(env, "disable", behind="b" * 32)
    env.add_pool(1, op_id="c" * 32)  # another operation ran after the one it waited for
    deliver(when_unlocked, PID, "disable", op_id, "b" * 32)
    task = env.store.get_op(op_id)
    assert task["state"] == "FAILURE" and task["step"] == "skipped" and "c" * 32 in task["error"]
    assert env.store.get_pool(PID)["state"] == State.ACTIVE and not env.store.is_locked(PID)


def test_a_redelivered_queued_operation_that_ran_does_nothing(env):
    op_id = queued(env, "disable")
    env.store.update_op(op_id, state="SUCCESS")
    deliver(when_unlocked, PID, "disable", op_id, "b" * 32)
    assert env.store.get_pool(PID)["state"] == State.ACTIVE and not env.store.is_locked(PID)


# -- failover guards (rules 3, 6, 10 and 14) -------------------------------------------------------------------------


def test_a_failover_stops_every_primary_labelled_instance_before_the_standby_starts(env, monkeypatch):
    pool = protected(env)
    leaked = env.vast.add_instance(label("acme", 1, "primary"))  # a duplicate primary, running
    at_start = []
    start_instance = env.vast.start_instance

    def start_recording_what_runs(instance_id):
        at_start.append(sorted(i["id"] for i in env.vast.instances.values() if i["intended_status"] == "running"))
        start_instance(instance_id)

    monkeypatch.setattr(env.vast, "start_instance", start_recording_what_runs)
    env.api("POST", "/api/v1/warmpool/failover/test/1")
    run_steps(env, next_round=True)  # the stops are seen at the next poll round
    assert at_start == [[]]  # neither the old primary nor the leaked one meant to run when the standby started
    assert env.vast.called("stop_instance")[:2] == [("stop_instance", pool["primary_gpu_id"]),
                                                    ("stop_instance", leaked)]
    assert [e for e in env.store.events(PID) if e["event"] == "split_brain_resolved"][0]["instance_id"] == leaked


def test_a_confirmation_that_cannot_reach_the_provider_cancels(env):
    from app.vast import ProviderUnavailable

    pool = protected(env)
    env.vast.fail["show_instance"] = ProviderUnavailable("502 from Vast", 502)
    operations.failover(PID, env.store.acquire(PID, 10), "health")
    assert run_steps(env) == [CONFIRM]
    after = env.store.get_pool(PID)
    assert (after["state"], after["primary_gpu_id"]) == (State.ACTIVE, pool["primary_gpu_id"])
    assert env.vast.called("stop_instance", "start_instance") == [] and not env.store.is_locked(PID)
    cancelled = env.store.events(PID)[0]
    assert cancelled["event"] == "failover_cancelled" and "provider unavailable" in cancelled["message"]


@pytest.mark.parametrize("status", ["loading", "rebooting"])
def test_a_confirmation_that_sees_a_transitional_status_cancels(env, status):
    pool = protected(env)
    env.vast.instances[pool["primary_gpu_id"]]["actual_status"] = status
    operations.failover(PID, env.store.acquire(PID, 10), "health")
    assert run_steps(env) == [CONFIRM]
    assert env.store.get_pool(PID)["state"] == State.ACTIVE and env.vast.called("stop_instance") == []
    assert env.store.events(PID)[0]["event"] == "failover_cancelled"


def test_a_standby_given_up_is_destroyed_before_a_fresh_one_is_made(env):
    from tasks.failover import await_standby

    pool = protected(env)
    env.vast.instances[pool["standby_gpu_id"]].update(actual_status="loading", intended_status="running")
    op_id = operations.failover(PID, env.store.acquire(PID, 10), "manual")
    started = env.of("failover")[-1]
    # it had STANDBY_START_TIMEOUT to run
    env.store.update_op(op_id, context={**env.store.get_op(op_id)["context"], "standby_deadline": time.time() - 1})
    with pytest.raises(Retry):  # polls the fresh one next
        deliver(await_standby, message_of(started))
    fresh = env.store.get_pool(PID)["standby_gpu_id"]
    assert pool["standby_gpu_id"] not in env.vast.instances  # never left meant to run beside the new primary
    assert fresh in env.vast.instances and fresh != pool["standby_gpu_id"]
    assert [e["event"] for e in env.store.events(PID)][:2] == ["fresh_standby", "standby_given_up"]


# -- renewal of a standby whose rental ends --------------------------------------------------------------------------


@pytest.mark.parametrize("fresh_lasts", [False, True])
def test_a_renewal_on_a_host_with_only_short_rentals_keeps_the_old_standby(env, fresh_lasts):
    from tasks.renewal import retire_expiring_standby

    env.configure(expiry_margin=3600.0)
    soon, later = time.time() + 600, time.time() + 30 * 86400
    pool = protected(env)
    old = pool["standby_gpu_id"]
    fresh = env.vast.add_instance(label("acme", 1, "standby"), "stopped", end_date=later if fresh_lasts else soon)
    op_id = env.store.new_op("acme", 1, "renew_standby")
    held = env.store.acquire(PID, 10)
    env.store.save_pool({**env.store.get_pool(PID), "standby_gpu_id": fresh}, held)
    message, ctx = operations.begin(PID, "renew_standby", held, op_id, expiring=old, expiring_end=soon)
    env.store.update_op(op_id, context=ctx)
    deliver(retire_expiring_standby, message)
    after, kinds = env.store.get_pool(PID), [e["event"] for e in env.store.events(PID)]
    if fresh_lasts:
        assert after["standby_gpu_id"] == fresh and old not in env.vast.instances and "standby_replaced" in kinds
    else:  # the fresh one ends as soon: no churn, the old one stays, and the operator is told
        assert after["standby_gpu_id"] == old and old in env.vast.instances and fresh not in env.vast.instances
        assert "rental_end_unavoidable" in kinds and after["renew_after"] > time.time()
    assert not env.store.is_locked(PID)


# -- lifecycle hooks: every instance the pool makes runs the pool's onstart and env ----------------------------------


HOOKS = {"onstart": "python /workspace/warm_cache.py", "env": {"MODEL": "llama", "HF_TOKEN": "hf_secret"}}


def hooks_of(env, instance_id: int) -> tuple:
    """The onstart and env an instance was made with, as the provider lists them."""
    row = env.vast.instances[instance_id]
    return row.get("onstart"), dict(row.get("extra_env") or [])


def with_fields(env, pool: dict, /, **fields) -> dict:
    """The pool with ``fields`` changed, saved as its lock holder would."""
    held = env.store.acquire(PID, 10)
    env.store.save_pool({**pool, **fields}, held)
    env.store.release(PID, held, 10)
    return env.store.get_pool(PID)


def test_an_enable_of_a_pool_that_kept_its_instances_gives_every_later_instance_its_new_hooks(env):
    pool = with_fields(env, protected(env, state=State.DISABLED, enabled=False, fallback="cpu_standby"),
                       onstart="old.sh", env={"MODEL": "old"})
    rv = env.api("POST", "/api/v1/warmpool/enable/1", json=HOOKS)
    assert rv.status_code == 200
    after = env.store.get_pool(PID)
    assert after["state"] == State.ACTIVE and (after["onstart"], after["env"]) == (HOOKS["onstart"], HOOKS["env"])
    status = env.api("GET", "/api/v1/warmpool/status/1")
    assert status.json["onstart"] == HOOKS["onstart"] and status.json["env"] == {"MODEL": "llama", "HF_TOKEN": "***"}
    assert "hf_secret" not in status.get_data(as_text=True)
    # the standby lost after it: its replacement runs the new hooks; the primary keeps the ones it was made with
    env.vast.destroy_instance(pool["standby_gpu_id"])
    env.store.save_pool({**env.store.get_pool(PID), "standby_gpu_id": None}, held := env.store.acquire(PID, 10))
    operations.replace_standby(PID, held, None, "the standby was lost")
    run_steps(env)
    replaced = env.store.get_pool(PID)["standby_gpu_id"]
    assert replaced not in (None, pool["standby_gpu_id"])
    assert hooks_of(env, replaced) == (HOOKS["onstart"], HOOKS["env"])
    assert hooks_of(env, pool["primary_gpu_id"]) == (None, {})  # made before (here, by the test): unchanged
    # an enable that names no hooks keeps them; "" and {} clear them
    assert env.api("POST", "/api/v1/warmpool/enable/1", json={}).status_code == 200
    assert env.store.get_pool(PID)["onstart"] == HOOKS["onstart"]
    assert env.api("POST", "/api/v1/warmpool/enable/1", json={"onstart": "", "env": {}}).status_code == 200
    assert (env.store.get_pool(PID)["onstart"], env.store.get_pool(PID)["env"]) == (None, None)


def test_an_enable_of_a_pool_that_kept_its_instances_takes_its_priority_and_one_without_keeps_it(env):
    protected(env, state=State.DISABLED, enabled=False)
    assert env.api("POST", "/api/v1/warmpool/enable/1", json={"priority": 7}).status_code == 200
    assert env.store.get_pool(PID)["priority"] == 7
    assert env.api("POST", "/api/v1/warmpool/enable/1", json={}).status_code == 200
    assert env.store.get_pool(PID)["priority"] == 7
    assert env.api("GET", "/api/v1/warmpool/status/1").json["priority"] == 7


def test_a_primary_moved_to_the_replicas_host_and_a_fresh_standby_carry_the_pools_hooks(env):
    from tasks.failover import await_standby

    # a fresh standby, made when the standby did not start in time
    pool = with_fields(env, protected(env), **HOOKS)
    env.vast.instances[pool["standby_gpu_id"]].update(actual_status="loading", intended_status="running")
    op_id = operations.failover(PID, env.store.acquire(PID, 10), "manual")
    env.store.update_op(op_id, context={**env.store.get_op(op_id)["context"], "standby_deadline": time.time() - 1})
    with pytest.raises(Retry):
        deliver(await_standby, message_of(env.of("failover")[-1]))
    fresh = env.store.get_pool(PID)["standby_gpu_id"]
    assert fresh != pool["standby_gpu_id"] and hooks_of(env, fresh) == (HOOKS["onstart"], HOOKS["env"])
    env.reset()
    # a move to the replica's host: the primary rented there
    primary = env.vast.add_instance(label("acme", 1, "primary"), "offline")
    standby = env.vast.add_instance(label("acme", 1, "standby"), "offline", intended="stopped")
    env.vast.offers = [{"id": 1, "machine_id": 20}]
    with_fields(env, env.add_pool(1, primary_gpu_id=primary, standby_gpu_id=standby, replica=True,
                                  replica_host_machine_id=20, replica_volume_id=200,
                                  replica_data_at="2026-01-01T00:00:00+00:00"), **HOOKS)
    op_id = operations.failover(PID, env.store.acquire(PID, 10), "health")
    run_steps(env, polls=5)
    moved = env.store.get_pool(PID)
    assert moved["host_machine_id"] == 20 and moved["primary_gpu_id"] not in (primary, standby)
    assert hooks_of(env, moved["primary_gpu_id"]) == (HOOKS["onstart"], HOOKS["env"])
    assert "host_failover_completed" in [e["event"] for e in env.store.events(PID)]
    # and the standby made beside it there
    assert hooks_of(env, moved["standby_gpu_id"]) == (HOOKS["onstart"], HOOKS["env"])
