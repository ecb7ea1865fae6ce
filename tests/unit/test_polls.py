"""The shared poll round (Store.observe): every instance that steps wait on is read in one list call per round."""

import time

import pytest

from app.store import UNSEEN, keys, polls
from tests.conftest import wait_until


class Provider:
    """A list call that answers ``rows`` and counts its calls."""

    def __init__(self, rows: dict[int, dict]):
        self.rows, self.fetches = rows, []

    def __call__(self, ids: list[int]) -> dict[int, dict]:
        self.fetches.append(sorted(ids))
        return {i: self.rows[i] for i in ids if i in self.rows}


def next_round(store) -> None:
    """As if the poll interval had passed since the last round."""
    store.r.set(keys.awaited_round(), 0)


def test_many_waiters_share_one_fetch_per_round(store):
    provider = Provider({i: {"id": i, "actual_status": "loading"} for i in range(1, 6)})
    assert store.observe(1, 60, provider) == {"id": 1, "actual_status": "loading"}  # the first round is due
    for i in range(2, 6):
        assert store.observe(i, 60, provider) is UNSEEN  # waiting for the next round, not asking alone
    assert provider.fetches == [[1]]
    next_round(store)
    for i in range(1, 6):
        assert store.observe(i, 60, provider)["id"] == i
    assert provider.fetches == [[1], [1, 2, 3, 4, 5]]  # one call for all five


def test_an_instance_the_provider_no_longer_lists_is_gone(store):
    provider = Provider({})
    assert store.observe(7, 60, provider) is None


def test_a_waiter_during_a_round_does_not_start_another(store):
    provider = Provider({1: {"id": 1}, 2: {"id": 2}})
    inside = []

    def fetch(ids):
        inside.append(store.observe(2, 0, provider))  # another step, while this round is being fetched
        return provider(ids)

    store.observe(1, 60, fetch)
    assert inside == [UNSEEN] and provider.fetches == [[1]]


def test_instances_no_step_waits_on_any_more_leave_the_round(store):
    provider = Provider({1: {"id": 1}, 2: {"id": 2}})
    store.observe(1, 60, provider)
    store.r.zadd(keys.awaited(), {1: 0})  # last asked about long ago
    next_round(store)
    store.observe(2, 60, provider)
    assert provider.fetches == [[1], [2]]


def test_an_instance_not_asked_about_for_a_while_leaves_the_round(store, monkeypatch):
    """Rounds read only what steps still wait on: each row no longer waited on costs every round list pages."""
    provider = Provider({1: {"id": 1}, 2: {"id": 2}})
    store.observe(1, 1, provider)
    later = time.time() + 11  # nobody asked about 1 for 11 s: a minute's retention would still read it
    monkeypatch.setattr(polls.time, "time", lambda: later)
    next_round(store)
    store.observe(2, 1, provider)
    assert provider.fetches == [[1], [2]]


def test_a_failed_fetch_frees_the_round_for_the_next_waiter(store):
    def down(ids):
        raise ConnectionError("provider down")

    with pytest.raises(ConnectionError):
        store.observe(1, 60, down)
    provider = Provider({1: {"id": 1}})
    assert store.observe(1, 60, provider) == {"id": 1}


def test_a_dead_poller_holds_the_round_only_for_its_ttl(store):
    provider = Provider({1: {"id": 1}})
    ttls = []

    def fetch(ids):
        ttls.append(store.r.pttl(keys.awaited_poller()))
        return provider(ids)

    store.observe(1, 60, fetch)
    assert 0 < ttls[0] <= 10_000  # were this poller killed here, the round would be free within 10 s
    # a poller killed mid-round: its lock stays until it expires, and no round runs meanwhile
    store.r.set(keys.awaited_poller(), "dead poller", px=200)
    next_round(store)
    assert store.observe(1, 60, provider) == {"id": 1}  # the last round's answer, no new fetch
    assert provider.fetches == [[1]]
    wait_until(lambda: not store.r.exists(keys.awaited_poller()), timeout=5, message="the dead poller's lock to expire")
    store.observe(1, 60, provider)
    assert provider.fetches == [[1], [1]]


def test_a_waiter_never_reads_a_round_older_than_its_question(store):
    """A confirmation asked after the last round waits for the next one: the row it would read could be from
    before the failure."""
    provider = Provider({1: {"id": 1, "actual_status": "running"}})
    store.observe(1, 60, provider)
    asked = float(store.r.get(keys.awaited_round())) + 0.001
    assert store.observe(1, 60, provider) == {"id": 1, "actual_status": "running"}  # no question since: fine
    assert store.observe(1, 60, provider, since=asked) is UNSEEN
    next_round(store)
    assert store.observe(1, 60, provider, since=asked) == {"id": 1, "actual_status": "running"}
