"""How a step runs (tasks/base.py): every branch of Step.__call__, the heartbeat and fencing around it, and
create_once (tasks/provision.py), the one way a step creates something at the provider.

A step is delivered here as the worker delivers it (a pushed request, a redelivery flag); what it would enqueue
is recorded (tests/unit/fakes.py). The provider is the in-memory fake behind the real fencing guard, or the real
client against ``responses`` where what reaches the wire matters.
"""

import copy
import sys
import time

import pytest
import redis
import responses
from celery import shared_task
from celery.exceptions import Ignore, Retry

from app import operations
from app.operations import NEXT, Declaration, Queue, StepSpec
from app.pools import State, label, volume_name
from app.runtime import Throttled, fence
from app.store import FencedOut, Held, keys
from app.vast import ProviderUnavailable, RateLimited, RequestRejected
from tasks import base, provision
from tasks.base import MAX_PROVIDER_ERRORS, NotYet, Operation, OperationFailed, Step
from tests.conftest import wait_until
from tests.unit.fakes import VAST_URL, deliver, real_client, snapshot

PID = "acme:1"
MANAGE = f"{VAST_URL}/api/v0/instances/1001/"


@shared_task(bind=True, base=Step, name="warmpool.tests.probe")
def probe(self, op: Operation):
    """A step that does what the test in progress asks (``Probe.run``)."""
    op.step("probe")
    Probe.ran.append(op.held)
    return Probe.run(op)


class Probe:
    ran: list = []
    run = staticmethod(lambda op: NEXT)
    compensated: list = []


def compensate(op: Operation) -> None:
    """The probe operation's compensation (declared by its dotted name, as every operation's is)."""
    Probe.compensated.append(op.held)


PROBE = Declaration("probe", Queue.PROVISION, compensation=f"{__name__}:compensate",
                    steps=(StepSpec("warmpool.tests.probe"), StepSpec("warmpool.provision.create_volume")))


@pytest.fixture
def env(env, monkeypatch):
    monkeypatch.setattr(Probe, "ran", [])
    monkeypatch.setattr(Probe, "run", staticmethod(lambda op: NEXT))
    monkeypatch.setattr(Probe, "compensated", [])
    monkeypatch.setitem(operations.DECLARED, "probe", PROBE)
    env.compensated = Probe.compensated
    return env


def start(env, operation: str = "probe", **fields) -> dict:
    """A pool in the middle of an operation that holds its lock; the message of its current step."""
    op_id = env.store.new_op("acme", 1, operation)
    env.add_pool(1, state=State.PROVISIONING, op_id=op_id, **fields)
    message, ctx = operations.begin(PID, operation, env.store.acquire(PID, 10), op_id)
    env.store.update_op(op_id, context=ctx)
    return message


def held(message: dict) -> Held:
    return Held(message["token"], message["epoch"])


def context(env, message: dict) -> dict:
    return env.store.get_op(message["op_id"])["context"]


def write(env, ctx: dict, **fields) -> None:
    """Change the pool as the operation's lock holder would."""
    env.store.save_pool({**env.store.get_pool(PID), **fields}, held(ctx))


def retried(env) -> dict:
    """The last retry the step sent (Celery's retry is a new message: recorded)."""
    return env.of("apply_async")[-1]


def assert_ended_failed(env, ctx: dict, message: str) -> dict:
    pool, op = env.store.get_pool(PID), env.store.get_op(ctx["op_id"])
    assert pool["state"] == State.DEGRADED and message in pool["error_message"]
    assert pool["seq"] == 1 and pool["heal_attempts"] == 1 and pool["next_heal_at"] > time.time()  # one write
    assert op["state"] == "FAILURE" and message in op["error"] and op["step"] == "failed"
    assert not env.store.is_locked(PID)
    assert env.store.events(PID)[0]["event"] == "degraded"
    return pool


# -- Step.__call__ ----------------------------------------------------------------------------------------------


def test_a_step_that_returns_next_advances_the_pool_keeps_the_lock_and_sends_the_declared_next_step(env):
    ctx = start(env)
    seq = ctx["seq"]
    assert deliver(probe, ctx) is NEXT and env.store.get_pool(PID)["seq"] == seq + 1
    (name, sent), = env.steps
    assert name == "warmpool.provision.create_volume" and sent == {**ctx, "seq": seq + 1}  # ids only
    op = env.store.get_op(ctx["op_id"])
    assert (op["state"], op["step"]) == ("STARTED", "probe")
    assert env.store.r.get(keys.lock(PID)) == ctx["token"]  # the next step holds it
    assert env.compensated == []


def test_what_a_step_writes_in_the_context_is_saved_with_its_advance_and_read_by_the_next(env):
    ctx = start(env)

    def learns(op):
        op.ctx["gpu_offer"] = 7
        return NEXT

    Probe.run = staticmethod(learns)
    seq = ctx["seq"]
    deliver(probe, ctx)
    assert context(env, ctx)["gpu_offer"] == 7 and env.store.get_pool(PID)["seq"] == seq + 1
    _, sent = env.steps[-1]
    assert "gpu_offer" not in sent and Operation.load(sent).ctx["gpu_offer"] == 7


def test_a_context_written_by_a_step_fenced_out_at_its_advance_is_not_saved(env):
    ctx = start(env)

    def taken_then_learns(op):
        env.store.take_over(PID, op.held, 10)
        op.ctx["gpu_offer"] = 7
        return NEXT

    Probe.run = staticmethod(taken_then_learns)
    with pytest.raises(Ignore):
        deliver(probe, ctx)
    assert "gpu_offer" not in context(env, ctx) and env.store.get_pool(PID)["seq"] == ctx["seq"]
    assert env.steps == []


def test_a_next_step_the_broker_cannot_take_stops_the_operation_and_the_done_step_is_not_run_again(env, monkeypatch):
    ctx = start(env)
    seq = ctx["seq"]

    def broker_away(name, message):
        raise redis.ConnectionError("Connection refused")

    monkeypatch.setattr(base, "enqueue", broker_away)
    with pytest.raises(Ignore):  # not retried: it advanced; the healer resumes the operation once its lock lapses
        deliver(probe, ctx)
    assert env.store.get_pool(PID)["seq"] == seq + 1 and env.of("apply_async") == [] and env.compensated == []


def test_a_duplicate_delivery_of_a_done_step_is_ignored(env):
    ctx = start(env)
    first = copy.deepcopy(ctx)
    deliver(probe, ctx)
    before = snapshot(env.r)
    with pytest.raises(Ignore):
        deliver(probe, first)  # the same message again: the pool is a step further
    with pytest.raises(Ignore):
        deliver(probe, copy.deepcopy(first), redelivered=True)
    assert len(Probe.ran) == 1 and snapshot(env.r) == before


def test_a_redelivery_takes_the_machine_over_with_a_new_epoch(env):
    ctx = start(env)
    first = copy.deepcopy(ctx)
    deliver(probe, ctx, redelivered=True)  # the first worker was killed, or is only frozen
    new, = Probe.ran
    assert new.epoch > first["epoch"] and new.token != first["token"]
    _, sent = env.steps[-1]
    assert (sent["epoch"], sent["token"]) == (new.epoch, new.token)  # the operation goes on with it
    assert env.store.epoch(PID) == new.epoch and env.r.get(keys.lock(PID)) == new.token
    with pytest.raises(FencedOut):  # the first delivery, if it wakes, can write nothing
        env.store.check_fence(PID, held(first))


def test_a_step_that_lost_its_lock_is_ignored_and_writes_nothing(env):
    ctx = start(env)
    env.store.take_over(PID, held(ctx), 10)  # a newer holder took the machine
    before = snapshot(env.r)
    with pytest.raises(Ignore):
        deliver(probe, ctx)
    assert Probe.ran == [] and snapshot(env.r) == before and env.compensated == []


def test_a_step_fenced_out_in_its_middle_is_ignored_and_its_call_never_reaches_the_provider(env):
    ctx = start(env)

    def taken_meanwhile(op):
        env.store.take_over(PID, op.held, 10)
        env.vast.stop_instance(1001)

    Probe.run = staticmethod(taken_meanwhile)
    env.vast.add_instance(label("acme", 1, "primary"), id=1001)
    with pytest.raises(Ignore):
        deliver(probe, ctx)
    assert env.vast.called("stop_instance") == [] and env.vast.instances[1001]["actual_status"] == "running"
    assert env.store.get_op(ctx["op_id"])["state"] == "STARTED" and env.compensated == []


@pytest.mark.parametrize("error", [ProviderUnavailable("502 from Vast", 502), RateLimited("429 from Vast")])
def test_a_provider_outage_is_retried_with_a_counted_backoff(env, error):
    ctx = start(env)

    def outage(op):
        raise error

    Probe.run = staticmethod(outage)
    for errors in range(3):
        with pytest.raises(Retry):
            deliver(probe, ctx)
        sent = retried(env)
        assert sent["args"][0] == ctx and context(env, ctx)["provider_errors"] == errors + 1  # in the op record
        low = min(30.0, 0.5 * 2 ** errors)
        assert low * 0.5 <= sent["countdown"] <= low  # exponential, with jitter
    pool = env.store.get_pool(PID)
    assert pool["state"] == State.PROVISIONING and env.store.is_locked(PID) and env.compensated == []


def test_a_provider_outage_past_the_limit_ends_the_operation(env):
    ctx = start(env)
    env.store.update_op(ctx["op_id"], context={**context(env, ctx), "provider_errors": MAX_PROVIDER_ERRORS})

    def outage(op):
        raise ProviderUnavailable("502 from Vast", 502)

    Probe.run = staticmethod(outage)
    with pytest.raises(Ignore):
        deliver(probe, ctx)
    assert_ended_failed(env, ctx, "provider unavailable: 502 from Vast")
    assert len(env.compensated) == 1 and env.of("apply_async") == []


@pytest.mark.parametrize("error, message", [
    (OperationFailed("host 88888 has no rentable GPU"), "host 88888 has no rentable GPU"),
    (RequestRejected("400 bad_request", 400, "bad_request", "no"), "400 bad_request"),
    (KeyError("primary_gpu_id"), "unexpected error in probe: KeyError"),
    (ZeroDivisionError(), "unexpected error in probe: ZeroDivisionError"),
])
def test_a_failed_step_compensates_degrades_fails_the_task_and_frees_the_machine(env, error, message):
    ctx = start(env)

    def failing(op):
        raise error

    Probe.run = staticmethod(failing)
    with pytest.raises(Ignore):
        deliver(probe, ctx)
    assert_ended_failed(env, ctx, message)
    assert [held.epoch for held in env.compensated] == [ctx["epoch"]]  # compensated by the lock's holder
    assert env.of("apply_async") == []


@pytest.mark.parametrize("error", [
    ProviderUnavailable("Vast is down", 503),
    Throttled(30.0),
], ids=["provider-refused", "throttled"])
def test_a_compensation_that_raises_still_ends_the_operation(env, monkeypatch, error):
    ctx = start(env)

    def compensation(op):
        raise error

    def failing(op):
        raise OperationFailed("no GPU")

    monkeypatch.setattr(sys.modules[__name__], "compensate", compensation)  # the declared one raises
    Probe.run = staticmethod(failing)
    with pytest.raises(Ignore):
        deliver(probe, ctx)
    assert_ended_failed(env, ctx, "no GPU")
    assert "compensation_incomplete" in [e["event"] for e in env.store.events(PID)]  # what stays is said


def test_a_duplicate_delivery_that_fails_decides_nothing(env):
    ctx = start(env)
    stale = copy.deepcopy(ctx)
    deliver(probe, ctx)
    before = snapshot(env.r)
    with pytest.raises(Ignore):
        probe.give_up(stale, "no GPU")
    assert snapshot(env.r) == before and env.compensated == []


def test_not_yet_polls_again_after_the_poll_interval(env):
    ctx = start(env)

    def waiting(op):
        raise NotYet("still loading")

    Probe.run = staticmethod(waiting)
    with pytest.raises(Retry):
        deliver(probe, ctx)
    sent = retried(env)
    assert sent["countdown"] == env.settings.poll_interval and sent["args"][0]["seq"] == ctx["seq"]
    assert env.store.get_pool(PID)["seq"] == ctx["seq"] and env.store.is_locked(PID)


def test_throttled_comes_back_when_the_budget_may_have_a_slot(env):
    ctx = start(env)

    def throttled(op):
        raise Throttled(42.0)

    Probe.run = staticmethod(throttled)
    with pytest.raises(Retry):
        deliver(probe, ctx)
    assert retried(env)["countdown"] == 42.0 and env.compensated == []


def test_the_fence_is_set_only_while_the_step_runs(env):
    ctx = start(env)
    seen = []
    Probe.run = staticmethod(lambda op: seen.append(fence.get()) or NEXT)
    deliver(probe, ctx)
    assert seen[0] is not None and fence.get() is None


# -- the fencing guard on the wire ----------------------------------------------------------------------------------


def test_a_mutating_call_after_the_epoch_moved_never_reaches_the_provider(env):
    held = env.store.acquire(PID, 10)
    client = real_client()
    token = fence.set(lambda: env.store.check_fence(PID, held))
    try:
        with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
            mock.add(responses.PUT, MANAGE, json={"success": True})
            mock.add(responses.GET, f"{VAST_URL}/api/v1/instances/", json={
                "success": True, "instances": [], "total_instances": 0, "label_counts": {}, "next_token": None})
            mock.add(responses.POST, f"{VAST_URL}/api/v0/bundles/", json={"offers": []})
            client.stop_instance(1001)  # still the holder: it goes out
            assert len(mock.calls) == 1
            env.r.incr(keys.epoch(PID))  # a newer holder
            for call in (lambda: client.stop_instance(1001), lambda: client.destroy_instance(1001),
                         lambda: client.create_volume(9, 10, "v"), lambda: client.label_instance(1001, "x")):
                with pytest.raises(FencedOut):
                    call()
            assert len(mock.calls) == 1  # none of them was sent
            client.list_instances()  # reads still go out: they change nothing
            client.search_offers({})
            assert len(mock.calls) == 3
    finally:
        fence.reset(token)


def test_a_step_fenced_out_before_its_provider_call_sends_nothing(env):
    ctx = start(env, primary_gpu_id=1001)
    client = real_client()

    def stop_after_losing_the_lock(op):
        env.store.take_over(PID, op.held, 10)
        client.stop_instance(1001)

    Probe.run = staticmethod(stop_after_losing_the_lock)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add(responses.PUT, MANAGE, json={"success": True})
        with pytest.raises(Ignore):
            deliver(probe, ctx)
        assert len(mock.calls) == 0


def test_a_step_longer_than_the_lock_ttl_keeps_its_lock(env):
    env.configure(lock_ttl=0.6)
    ctx = start(env)
    primary = env.vast.add_instance(label("acme", 1, "primary"))

    def long_step(op):
        outlived = time.monotonic() + 1.5 * op.settings.lock_ttl
        # the lock still there once its TTL has passed (renewed by the step's heartbeat, nothing else)
        wait_until(lambda: time.monotonic() > outlived and env.store.is_locked(PID), timeout=5,
                   message="the lock alive past its TTL")
        env.vast.stop_instance(primary)  # a mutating call, fenced: it leaves only while the lock is held
        return NEXT

    Probe.run = staticmethod(long_step)
    seq = ctx["seq"]
    assert deliver(probe, ctx) is NEXT and env.store.get_pool(PID)["seq"] == seq + 1  # done, not fenced out
    assert env.vast.called("stop_instance") == [("stop_instance", primary)]
    assert env.store.r.get(keys.lock(PID)) == ctx["token"] and env.compensated == []


def test_a_store_restart_during_a_step_runs_the_step_again(env):
    ctx = start(env)

    def store_away(op):
        raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    Probe.run = staticmethod(store_away)
    with pytest.raises(Retry):
        deliver(probe, ctx)
    assert retried(env)["countdown"] == env.settings.poll_interval
    pool, op = env.store.get_pool(PID), env.store.get_op(ctx["op_id"])
    assert pool["state"] == State.PROVISIONING and op["state"] == "STARTED" and env.compensated == []
    assert env.store.is_locked(PID) and "degraded" not in [e["event"] for e in env.store.events(PID)]


def test_a_lost_heartbeat_fences_without_asking_redis(env):
    ctx = start(env)
    op = Operation.load(ctx)
    with base.fenced(op):
        op.heartbeat.lost = True
        with pytest.raises(FencedOut):
            op.fence()
    assert op.heartbeat is None


# -- create_once ---------------------------------------------------------------------------------------------------


@pytest.fixture
def creating(env):
    """A provision at its volume step on host 88888 (which has a volume offer and a GPU offer)."""
    env.vast.offers = [{"id": 1, "machine_id": 88888}]
    return start(env, "provision", volume_id=None, primary_gpu_id=None, standby_gpu_id=None,
                 primary_ssh_host=None, image="img", gpu_name=None)


def test_the_create_is_marked_in_the_pool_before_it_is_sent(env, creating, monkeypatch):
    marks = []
    create = env.vast.create_volume

    def seen(*args):
        marks.append(env.store.get_pool(PID)["creating"])
        return create(*args)

    monkeypatch.setattr(env.vast, "create_volume", seen)
    deliver(provision.create_volume, creating)
    mark, = marks
    assert mark["role"] == "volume" and mark["at"] <= time.time()
    pool = env.store.get_pool(PID)
    assert pool["creating"] is None and pool["volume_id"] in env.vast.volumes
    assert env.vast.volumes[pool["volume_id"]]["label"] == volume_name("acme", 1)


def test_a_create_whose_answer_was_lost_is_found_by_name_and_adopted(env, creating):
    write(env, creating, creating={"role": "volume", "at": time.time() - 1})
    made = env.vast.add_volume(volume_name("acme", 1))  # the provider made it; the answer never came
    deliver(provision.create_volume, creating)
    assert env.store.get_pool(PID)["volume_id"] == made and env.vast.called("create_volume") == []


def test_a_create_whose_answer_was_lost_is_found_by_label_and_adopted(env, creating):
    write(env, creating, volume_id=7, creating={"role": "primary", "at": time.time()})
    made = env.vast.add_instance(label("acme", 1, "primary"), "loading")
    deliver(provision.create_primary, creating)
    assert env.store.get_pool(PID)["primary_gpu_id"] == made and env.vast.called("create_instance") == []


def test_a_lost_create_not_found_within_the_grace_is_waited_for_never_made_twice(env, creating):
    marked = {"role": "volume", "at": time.time() - 1}
    write(env, creating, creating=marked)
    for _ in range(3):
        with pytest.raises(Retry):
            deliver(provision.create_volume, creating)
        assert retried(env)["countdown"] == env.settings.poll_interval  # NotYet
    assert env.vast.called("create_volume") == [] and env.store.get_pool(PID)["creating"] == marked


def test_after_the_grace_a_lost_create_is_made_again(env, creating):
    marked = {"role": "volume", "at": time.time() - env.settings.create_grace - 1}
    write(env, creating, creating=marked)
    deliver(provision.create_volume, creating)
    assert len(env.vast.called("create_volume")) == 1 and env.store.get_pool(PID)["volume_id"] in env.vast.volumes


def test_a_throttled_create_was_never_sent_so_nothing_is_looked_for(env, creating, monkeypatch):
    def throttled(*args):
        raise Throttled(5.0)

    monkeypatch.setattr(env.vast, "create_volume", throttled)
    with pytest.raises(Retry):
        deliver(provision.create_volume, creating)
    assert env.store.get_pool(PID)["creating"] is None


def late_answer(env, monkeypatch, method: str, adopted: str | None = None):
    """The provider makes the resource, but its answer comes after a newer holder took the machine (and,
    given ``adopted``, wrote the resource into that pool field)."""
    create = getattr(env.vast, method)

    def late(*args, **kwargs):
        made = create(*args, **kwargs)
        holder = Held(env.r.get(keys.lock(PID)), env.store.epoch(PID))
        newer = env.store.take_over(PID, holder, 10)
        if adopted:
            pool = env.store.get_pool(PID)
            env.store.save_pool({**pool, adopted: made}, newer)
        return made

    monkeypatch.setattr(env.vast, method, late)


def test_a_create_answered_after_the_step_lost_its_lock_destroys_what_it_made(env, creating, monkeypatch):
    late_answer(env, monkeypatch, "create_volume")
    with pytest.raises(Ignore):
        deliver(provision.create_volume, creating)
    assert len(env.vast.called("create_volume")) == 1
    assert env.vast.volumes == {}, "the volume the fenced-out step made is still there"
    assert env.store.get_pool(PID)["volume_id"] is None


def test_a_create_answered_late_is_kept_when_the_pool_adopted_it(env, creating, monkeypatch):
    late_answer(env, monkeypatch, "create_volume", adopted="volume_id")
    with pytest.raises(Ignore):
        deliver(provision.create_volume, creating)
    volume_id = env.store.get_pool(PID)["volume_id"]
    assert volume_id in env.vast.volumes and env.vast.called("delete_volume") == []
