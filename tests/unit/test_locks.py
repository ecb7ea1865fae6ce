"""Machine locks and fencing (app/store/locks.py): epochs, leases, extend and take-over, the heartbeat; and one
race of two real writers on a real redis-server."""

import threading
import types

import pytest
import redis

from app.pools import State, new_pool
from app.processes import free_port, wait_until
from app.store import Busy, FencedOut, Held, Store, keys
from tests.conftest import RedisServer
from tests.provider.simkit import holds_for
from tests.unit.fakes import snapshot

PID = "acme:123"


def test_acquire_gives_increasing_epochs_and_excludes_others(store):
    first = store.acquire(PID, 10)
    assert isinstance(first, Held) and store.is_locked(PID) and store.epoch(PID) == first.epoch > 0
    assert store.acquire(PID, 10) is None  # held: no second holder, no new epoch
    assert store.epoch(PID) == first.epoch
    store.release(PID, first, 10)
    assert not store.is_locked(PID)
    second = store.acquire(PID, 10)
    assert second.epoch > first.epoch and second.token != first.token
    other = store.acquire("acme:124", 10)
    assert other is not None and store.epoch(PID) == second.epoch  # epochs are per machine


def test_epochs_stay_above_every_old_one_after_redis_lost_its_data(store):
    old = store.acquire(PID, 10)
    taken_over = store.take_over(PID, old, 10)
    store.save_pool(new_pool("acme", 123, state=State.ACTIVE), taken_over)
    store.r.flushall()  # Redis restarted without its data: the epoch counter is gone
    for stale in (old, taken_over):
        with pytest.raises(FencedOut):
            store.save_pool(new_pool("acme", 123, state=State.DEGRADED), stale)
        with pytest.raises(FencedOut):
            store.check_fence(PID, stale)
    new = store.acquire(PID, 10)
    assert new.epoch > taken_over.epoch > old.epoch
    with pytest.raises(FencedOut):  # an old holder waking up cannot take the lock back either
        store.take_over(PID, taken_over, 10)
    with pytest.raises(FencedOut):
        store.extend(PID, taken_over, 10)
    store.check_fence(PID, new)  # the new holder holds the lock


def test_the_lock_is_a_redis_py_lock_with_a_ttl(store):
    held = store.acquire(PID, 10)
    store.check_fence(PID, held)
    assert 0 < store.r.pttl(keys.lock(PID)) <= 10_000
    store.extend(PID, held, 30)
    assert 10_000 < store.r.pttl(keys.lock(PID)) <= 30_000


def test_acquire_waits_for_a_release(store):
    first = store.acquire(PID, 10)
    threading.Timer(0.2, store.release, (PID, first, 10)).start()
    second = store.acquire(PID, 10, wait=5)
    assert second is not None and second.epoch > first.epoch


def test_acquire_with_wait_gives_up(store):
    store.acquire(PID, 10)
    assert store.acquire(PID, 10, wait=0.2) is None


def test_a_lease_releases_unless_handed_off(store):
    with store.lease(PID, 10) as lease:
        assert store.is_locked(PID)
        with pytest.raises(Busy), store.lease(PID, 10):
            pass
        with store.lease_if_free(PID, 10) as other:
            assert other is None
    assert not store.is_locked(PID)
    with store.lease(PID, 10) as lease:
        held = lease.hand_off()  # the operation's steps hold it now
    store.check_fence(PID, held)
    with pytest.raises(RuntimeError), store.lease_if_free("acme:9", 10):
        raise RuntimeError("a failure inside gives the lock back too")
    assert not store.is_locked("acme:9")


def test_check_fence_needs_the_token_and_the_epoch(store):
    held = store.acquire(PID, 10)
    store.check_fence(PID, held)
    with pytest.raises(FencedOut):
        store.check_fence(PID, Held("someone else", held.epoch))
    store.r.incr(keys.epoch(PID))
    with pytest.raises(FencedOut):
        store.check_fence(PID, held)


def test_extend_after_expiry_takes_the_lock_back_when_no_one_held_it(store):
    # a killed worker's step is redelivered: the same holder takes its expired lock back
    held = store.acquire(PID, 0.1)
    wait_until(lambda: not store.is_locked(PID), timeout=5, message="the lock to expire")
    store.extend(PID, held, 10)
    store.check_fence(PID, held)  # the same token, under the same epoch
    assert store.acquire(PID, 10) is None


def test_extend_after_expiry_and_another_holder_is_fenced_out(store):
    held = store.acquire(PID, 0.1)
    wait_until(lambda: not store.is_locked(PID), timeout=5, message="the lock to expire")
    other = store.acquire(PID, 10)
    store.release(PID, other, 10)  # someone held it meanwhile, and is done
    with pytest.raises(FencedOut):
        store.extend(PID, held, 10)
    assert not store.is_locked(PID)  # the stale holder does not keep the lock it grabbed


def test_extend_after_takeover_raises_fenced_out(store):
    held = store.acquire(PID, 0.1)
    wait_until(lambda: not store.is_locked(PID), timeout=5, message="the lock to expire")
    newer = store.acquire(PID, 10)
    with pytest.raises(FencedOut):
        store.extend(PID, held, 10)
    store.extend(PID, newer, 10)  # the new holder still can
    # the stale holder's release does not free the newer holder's lock
    store.release(PID, held, 10)
    assert store.is_locked(PID) and store.acquire(PID, 10) is None


def test_extend_with_the_right_token_but_an_old_epoch_is_fenced_out(store):
    held = store.acquire(PID, 10)
    store.r.incr(keys.epoch(PID))
    with pytest.raises(FencedOut):
        store.extend(PID, held, 10)


def test_take_over_fences_out_the_first_delivery(store):
    first = store.acquire(PID, 10)
    second = store.take_over(PID, first, 10)  # the redelivered step
    assert second.epoch > first.epoch and second.token != first.token
    store.save_pool(new_pool("acme", 123, state=State.DEGRADED), second)
    before = snapshot(store.r)
    with pytest.raises(FencedOut):
        store.save_pool(new_pool("acme", 123, state=State.ACTIVE, primary_gpu_id=1), first)  # the frozen first one
    assert snapshot(store.r) == before
    with pytest.raises(FencedOut):
        store.take_over(PID, first, 10)  # and cannot take it back either
    store.extend(PID, second, 10)


def test_take_over_of_an_expired_lock_no_one_held_since(store):
    first = store.acquire(PID, 0.1)
    wait_until(lambda: not store.is_locked(PID), timeout=5, message="the lock to expire")
    second = store.take_over(PID, first, 10)
    store.check_fence(PID, second)
    assert second.epoch > first.epoch


def test_a_fenced_out_holder_does_not_release_the_lock_of_the_one_that_took_over(store):
    first = store.acquire(PID, 10)
    second = store.take_over(PID, first, 10)  # the step was redelivered; the first worker was only frozen
    with pytest.raises(FencedOut):
        store.extend(PID, first, 10)  # the first one wakes up and enters its next step
    assert store.is_locked(PID), "the machine's lock was released under the holder that took over"
    assert store.acquire(PID, 10) is None, "another operation could take the machine"
    store.extend(PID, second, 10)


def test_release_of_an_expired_lock_is_quiet(store):
    held = store.acquire(PID, 0.05)
    wait_until(lambda: not store.is_locked(PID), timeout=5, message="the lock to expire")
    store.release(PID, held, 10)
    assert store.acquire(PID, 10).epoch > held.epoch


# -- the heartbeat ------------------------------------------------------------------------------------------------


def counting_extends(store, monkeypatch) -> list:
    beats = []
    extend = store.extend

    def counted(pid, held, ttl):
        beats.append(pid)
        extend(pid, held, ttl)

    monkeypatch.setattr(store, "extend", counted)
    return beats


def test_without_a_heartbeat_the_lock_expires(store):
    store.acquire(PID, 0.3)
    wait_until(lambda: not store.is_locked(PID), timeout=5, message="the lock to expire")


def test_the_heartbeat_keeps_a_lock_alive_past_its_ttl(store, monkeypatch):
    beats = counting_extends(store, monkeypatch)
    held = store.acquire(PID, 0.3)
    with store.heartbeat(PID, held, 0.3) as heartbeat:
        # six beats, a third of the TTL apart: twice the TTL has passed
        wait_until(lambda: len(beats) >= 6, timeout=10, interval=0.01, message="six beats")
        store.check_fence(PID, held)
        assert not heartbeat.lost
    done = len(beats)
    store.check_fence(PID, held)
    wait_until(lambda: not store.is_locked(PID), timeout=5, message="the lock to expire once the step is done")
    assert len(beats) == done  # no beat after the step


def test_the_heartbeat_notes_a_lost_lock_and_stops(store, monkeypatch):
    beats = counting_extends(store, monkeypatch)
    held = store.acquire(PID, 0.3)
    with store.heartbeat(PID, held, 0.3) as heartbeat:
        newer = store.take_over(PID, held, 10)  # a redelivery took the machine
        wait_until(lambda: heartbeat.lost, timeout=10, interval=0.01, message="the loss to be noted")
        lost_at = len(beats)
        wait_until(lambda: store.r.pttl(keys.lock(PID)) < 9_700, timeout=10, interval=0.05,
                   message="time to pass")
        assert len(beats) == lost_at  # it stopped beating: it never renews the newer holder's lock
    store.check_fence(PID, newer)


def test_the_heartbeat_rides_out_a_redis_error(store, monkeypatch):
    beats, extend = [], store.extend

    def flaky(pid, held, ttl):
        beats.append(pid)
        if len(beats) == 1:
            raise redis.ConnectionError("Redis restarting")
        extend(pid, held, ttl)

    monkeypatch.setattr(store, "extend", flaky)
    held = store.acquire(PID, 0.6)
    with store.heartbeat(PID, held, 0.6) as heartbeat:
        wait_until(lambda: len(beats) >= 6, timeout=10, interval=0.01, message="six beats")
        store.check_fence(PID, held)
        assert not heartbeat.lost


# -- two real writers ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_redis():
    server = RedisServer(free_port())
    server.start()
    yield server
    server.stop(kill=True)


def test_two_writers_racing_on_a_real_redis_exactly_one_wins_each_round(real_redis):
    """A step delivered twice: each round both deliveries race to take the machine over from the same holder
    and write the pool; exactly one takes it and only its write lands. The loser's and every older holder's
    writes are refused."""
    stores = [Store.from_url(real_redis.url) for _ in range(2)]
    stores[0].r.flushall()
    rounds = 40
    first = stores[0].acquire(PID, 30)
    stores[0].save_pool(new_pool("acme", 123, state=State.ACTIVE), first)
    holders = [first]  # the holder each round starts from
    won = [[None] * rounds for _ in stores]
    refused = [[False] * rounds for _ in stores]

    def next_round():
        winners = [w[len(holders) - 1] for w in won if w[len(holders) - 1] is not None]
        holders.append(winners[0] if len(winners) == 1 else None)

    start, end = threading.Barrier(2), threading.Barrier(2, action=next_round)

    def writer(i: int) -> None:
        s = stores[i]
        for n in range(rounds):
            start.wait(timeout=10)
            try:
                mine = s.take_over(PID, holders[n], 30)
                s.save_pool({**s.get_pool(PID), "error_message": f"writer {i} round {n}"}, mine)
                won[i][n] = mine
            except FencedOut:
                pass
            try:  # the holder this round started from, if it were only frozen, wakes up and writes
                s.save_pool({**s.get_pool(PID), "error_message": f"stale {i} round {n}"}, holders[n])
            except FencedOut:
                refused[i][n] = True
            end.wait(timeout=10)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(h is not None for h in holders), "a round without exactly one winner"
    assert all(refused[0]) and all(refused[1])
    winner = 0 if won[0][-1] else 1
    assert stores[0].get_pool(PID)["error_message"] == f"writer {winner} round {rounds - 1}"
    assert stores[0].epoch(PID) == holders[-1].epoch
    for s in stores:
        s.r.close()


def test_behind_sentinel_a_new_epoch_waits_for_a_replica_and_a_lone_master_goes_on(real_redis, monkeypatch):
    """Taking a lock or taking it over sends WAIT after the epoch's script, bounded: with no replica to answer
    (this server has none) the holder still gets its lock. A plain Redis sends no WAIT at all."""
    monkeypatch.setattr("app.store.locks.REPLICA_WAIT_MS", 20)
    store = Store.from_url(real_redis.url)
    store.r.flushall()

    def waits() -> int:
        return store.r.info("commandstats").get("cmdstat_wait", {}).get("calls", 0)

    store.r.config_resetstat()
    held = store.acquire(PID, 30)
    assert waits() == 0 and store.epoch(PID) == held.epoch
    store.release(PID, held, 30)
    store.replicas_to_wait = 1
    held = store.acquire(PID, 30)
    assert held is not None and store.epoch(PID) == held.epoch and waits() == 1
    taken = store.take_over(PID, held, 30)
    assert taken.epoch > held.epoch and store.epoch(PID) == taken.epoch and waits() == 2
    store.check_fence(PID, taken)


def test_a_step_waiting_in_its_worker_keeps_its_lock_and_a_released_one_is_never_taken_back(env):
    """A step received but not started (its countdown over, every thread busy) keeps its lock past LOCK_TTL; once it
    starts, its own heartbeat takes over, so the waiting one renews no more; a lock released meanwhile stays free."""
    from celery.signals import task_prerun, task_received

    env.configure(lock_ttl=0.3)
    pid = "acme:1"
    held = env.store.acquire(pid, 0.3)
    step = types.SimpleNamespace(name="warmpool.failover.stop_primary", id="waiting-step",
                                 args=[{"pid": pid, "token": held.token, "epoch": held.epoch}])
    task_received.send(sender=None, request=step)
    holds_for(lambda: env.store.is_locked(pid), 1.2)  # four TTLs
    task_prerun.send(sender=None, task_id=step.id, task=types.SimpleNamespace(request=types.SimpleNamespace(
        delivery_info={})), args=())
    wait_until(lambda: not env.store.is_locked(pid), timeout=3, message="the started step's lock left to its own heartbeat")
    held = env.store.acquire(pid, 0.3)
    task_received.send(sender=None, request=types.SimpleNamespace(
        name=step.name, id="released-meanwhile", args=[{"pid": pid, "token": held.token, "epoch": held.epoch}]))
    env.store.release(pid, held, 0.3)
    holds_for(lambda: not env.store.is_locked(pid), 0.5)
