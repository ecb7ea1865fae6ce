"""Shared budgets (app/store/budget.py) and the provider client's use of them (app.runtime): call slots per
endpoint, urgent calls first, a thread given back when no slot comes soon; the cap on automatic failovers."""

import time
import types

import pytest
import responses

from app import runtime
from app.runtime import MAX_THROTTLE_WAIT, Throttled, urgent, without_waiting
from app.store import keys
from tests.conftest import wait_until
from tests.unit.fakes import VAST_URL, real_client

SHOW = f"{VAST_URL}/api/v0/instances/7/"


# -- reservations ---------------------------------------------------------------------------------------


def test_reserve_slot_spaces_calls(store):
    waits = [store.reserve_slot("show_instance", 0.5) for _ in range(4)]
    assert waits[0] == pytest.approx(0, abs=0.05)
    for i, wait in enumerate(waits):
        # each caller waits one interval more than the previous (less the time the calls took)
        assert wait == pytest.approx(0.5 * i, abs=0.2), waits
    assert store.reserve_slot("list_instances", 0.5) == pytest.approx(0, abs=0.05)  # per endpoint
    assert 0 < store.r.pttl(keys.rate("show_instance")) <= 3000


def test_reserve_slot_is_free_again_after_the_interval(store):
    store.reserve_slot("volumes", 0.1)
    wait_until(lambda: float(store.r.get(keys.rate("volumes")) or 0) < time.time(), timeout=5, interval=0.02,
               message="the reserved slot to pass")
    assert store.reserve_slot("volumes", 0.1) == pytest.approx(0, abs=0.05)


def test_reserve_slot_horizon_keeps_a_backlog_from_reserving_ahead(store):
    """Provisioning reserves at most two slots ahead; an urgent caller (horizon -1) always gets the next."""
    waits = [store.reserve_slot("show_instance", 1.0, horizon=2.0) for _ in range(4)]
    assert waits[:3] == [pytest.approx(0, abs=0.2), pytest.approx(1, abs=0.2), pytest.approx(2, abs=0.2)]
    assert waits[3] == pytest.approx(-3, abs=0.2)  # not reserved: the next free slot is 3 s away
    assert store.reserve_slot("show_instance", 1.0) == pytest.approx(3, abs=0.2)  # urgent: right after them


def test_ranked_slots_go_to_the_best_rank_waiting_not_the_first_to_ask(store):
    """A mass failure: stops asked first, then a start that finishes a pool; the start takes the next slot."""
    def take(claim, rank):
        return store.take_ranked_slot("manage_instance", 0.3, rank, claim, 5.0)

    assert take("stop-0", 1) == pytest.approx(0, abs=0.1) and take("stop-1", 1) == pytest.approx(0.3, abs=0.1)
    assert take("stop-2", 1) == pytest.approx(-0.6, abs=0.1)  # at most one slot ahead is reserved: told its wait
    assert take("start-9", 0) == pytest.approx(-0.6, abs=0.1)

    def next_slot_within_an_interval() -> bool:
        seconds, micros = store.r.time()
        return float(store.r.get(keys.rate("manage_instance"))) - (seconds + micros / 1e6) <= 0.25

    wait_until(next_slot_within_an_interval, timeout=5, interval=0.02, message="the next slot to come near")
    assert take("stop-2", 1) < 0  # asking first, but a better-ranked claim waits
    assert take("start-9", 0) >= 0
    wait_until(lambda: take("stop-2", 1) >= 0, timeout=5, interval=0.02, message="the stop's turn, after the start")


def test_a_ranked_claim_whose_caller_never_comes_back_lapses(store):
    for claim in ("a", "b"):  # the next two slots reserved
        assert store.take_ranked_slot("manage_instance", 0.1, 0, claim, 0.0) >= 0
    assert store.take_ranked_slot("manage_instance", 0.1, 0, "c", 0.0) < 0  # kept until its turn passes
    assert store.take_ranked_slot("manage_instance", 0.1, 1, "d", 0.0) < 0  # behind c
    wait_until(lambda: store.take_ranked_slot("manage_instance", 0.1, 1, "d", 0.0) >= 0, timeout=5, interval=0.05,
               message="the lapsed claim to leave the line")


def test_a_ranked_call_far_from_its_turn_gives_its_thread_back_and_keeps_its_place(env, monkeypatch):
    env.configure(vast_rate_limits={"manage_instance": 1.0})
    monkeypatch.setattr(runtime, "time", types.SimpleNamespace(monotonic=time.monotonic, sleep=lambda s: None))
    for n in range(5):
        env.store.take_ranked_slot("manage_instance", 1.0, 0, f"start-{n}", 60.0)
    with responses.RequestsMock() as mock, runtime.ranked_calls(1, "stop-1"), pytest.raises(Throttled) as raised:
        real_client().stop_instance(7)
        assert not mock.calls
    assert raised.value.retry_in > 0
    assert "stop-1" in env.store.r.zrange(keys.ranked_claims("manage_instance"), 0, -1)


# -- the client's throttle ------------------------------------------------------------------------------------


@pytest.fixture
def budget(env, monkeypatch):
    """The client as app.runtime builds it, with a 100 s interval on show_instance and its sleeps recorded."""
    env.configure(vast_rate_limits={"show_instance": 100.0})
    sleeps = []
    monkeypatch.setattr(runtime, "time", types.SimpleNamespace(monotonic=time.monotonic, sleep=sleeps.append))
    interval = 100.0 * 1.05 + 0.01  # the margin app.runtime keeps
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add(responses.GET, SHOW, json={"instances": {"id": 7, "actual_status": "running"}})
        yield types.SimpleNamespace(env=env, client=real_client(), mock=mock, sleeps=sleeps, interval=interval)


def test_calls_wait_their_reserved_slot(budget):
    budget.client.show_instance(7)
    budget.client.show_instance(7)
    assert len(budget.mock.calls) == 2
    assert budget.sleeps[0] == pytest.approx(0, abs=0.5) and budget.sleeps[1] == pytest.approx(budget.interval,
                                                                                                abs=0.5)


def test_a_call_without_a_slot_within_the_wait_gives_its_thread_back_unsent(budget):
    for _ in range(3):  # a backlog: the next slot is three intervals away, beyond the two a caller may reserve
        budget.env.store.reserve_slot("show_instance", budget.interval)
    with pytest.raises(Throttled) as raised:
        budget.client.show_instance(7)
    assert len(budget.mock.calls) == 0 and budget.sleeps == []
    assert raised.value.retry_in > MAX_THROTTLE_WAIT  # the step comes back when a slot may be free


def test_a_web_thread_never_waits_for_a_slot(budget):
    """The API's provider calls (GET /warmpool/hosts) take a slot only if it is free now: no sleep."""
    budget.env.store.reserve_slot("show_instance", budget.interval)  # the next slot is one interval away
    with without_waiting(), pytest.raises(Throttled) as raised:
        budget.client.show_instance(7)
    assert len(budget.mock.calls) == 0 and budget.sleeps == []
    assert 0 < raised.value.retry_in <= budget.interval
    budget.env.store.r.delete(keys.rate("show_instance"))  # the slot is free now: taken and sent at once
    with without_waiting():
        budget.client.show_instance(7)
    assert len(budget.mock.calls) == 1 and budget.sleeps == []


def test_an_urgent_call_skips_the_horizon_and_waits_for_the_next_slot(budget):
    for _ in range(3):
        budget.env.store.reserve_slot("show_instance", budget.interval)
    token = urgent.set(True)  # a failover or health step
    try:
        budget.client.show_instance(7)
    finally:
        urgent.reset(token)
    assert len(budget.mock.calls) == 1
    assert budget.sleeps == [pytest.approx(3 * budget.interval, abs=1)]


def test_an_endpoint_without_a_limit_takes_no_slot(budget):
    budget.env.configure(vast_rate_limits={})
    client = real_client()
    for _ in range(3):
        client.show_instance(7)
    assert len(budget.mock.calls) == 3 and budget.sleeps == [] and budget.env.r.keys(keys.rate("*")) == []


# -- the failover cap ---------------------------------------------------------------------------------------------


def test_failover_slots_are_capped_over_the_last_minute(store):
    assert [store.take_failover_slot(3) for _ in range(5)] == [True, True, True, False, False]
    assert store.r.zcard(keys.FAILOVERS) == 3  # refused attempts take no slot
    assert 0 < store.r.ttl(keys.FAILOVERS) <= 120
    oldest, _ = store.r.zrange(keys.FAILOVERS, 0, 0, withscores=True)[0]
    store.r.zadd(keys.FAILOVERS, {oldest: time.time() - 61})  # one of them started over a minute ago
    assert store.take_failover_slot(3) and not store.take_failover_slot(3)


def test_each_vast_account_has_its_own_failover_cap(store):
    assert [store.take_failover_slot(1, "0123456789ab") for _ in range(2)] == [True, False]
    assert store.take_failover_slot(1)  # the default account's cap is untouched by another account's failures
    assert store.r.zcard(keys.failovers()) == 1 and store.r.zcard(keys.failovers("0123456789ab")) == 1


def test_a_failover_past_the_cap_is_said_once_a_minute(store):
    assert store.first_cap_notice("acme:1") and not store.first_cap_notice("acme:1")
    assert store.first_cap_notice("acme:2")
    assert 0 < store.r.ttl(keys.cap_notice("acme:1")) <= 60


def test_a_failovers_puts_rank_a_fenced_start_first_then_priority_then_failure_time():
    from tasks.failover import AFTER, FENCE, FINISH, put_turn

    def turn(stage, priority, failed_at):
        op = types.SimpleNamespace(pool={"priority": priority}, pid=f"acme:{priority}",
                                   op_id="o", ctx={"detected_at": failed_at, "started": failed_at + 1})
        with put_turn(op, stage):
            return runtime.ranked.get()

    in_order = [turn(FINISH, -1000, 9.0), turn(FENCE, 1000, 9.0), turn(FENCE, 5, 9.0), turn(FENCE, 0, 1.0),
                turn(FENCE, 0, 2.0), turn(AFTER, 1000, 0.0)]
    assert sorted(in_order) == in_order and len(set(in_order)) == len(in_order)
    assert runtime.ranked.get() is None  # only inside


def test_a_call_without_queueing_takes_no_slot_beyond_the_next_and_gives_its_thread_back(budget):
    """The shared poll round: asked for by every waiting step, it must never reserve the list budget ahead."""
    for _ in range(2):  # the next free slot is two intervals away
        budget.env.store.reserve_slot("show_instance", budget.interval)
    token = urgent.set(True)  # even from a failover's step
    try:
        with runtime.without_queueing(), pytest.raises(Throttled) as raised:
            budget.client.show_instance(7)
    finally:
        urgent.reset(token)
    assert len(budget.mock.calls) == 0 and budget.sleeps == [] and raised.value.retry_in > 0
    assert budget.env.store.reserve_slot("show_instance", budget.interval, horizon=0) < 0  # nothing reserved


def test_a_poll_round_of_several_pages_reserves_as_far_ahead_as_its_pages_need(budget):
    """A round of three list pages, begun while two slots are taken, takes its slot rather than being thrown away
    for its last page (each retry of a half-read round would spend pages for nothing)."""
    for _ in range(2):
        budget.env.store.reserve_slot("show_instance", budget.interval)
    with runtime.without_queueing(pages=3):
        budget.client.show_instance(7)
    assert len(budget.mock.calls) == 1 and budget.sleeps
