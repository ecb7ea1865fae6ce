"""What a replica needs next (tasks/replica.py: next_action), and when a host counts as lost (tasks/hostfailover.py)."""

import dataclasses
import time

import pytest

from app.pools import iso_at, new_pool, volume_name
from app.settings import Settings
from tasks.hostfailover import host_lost
from tasks.replica import COPY_DEADLINE_INTERVALS, COPY_DEADLINE_MIN, next_action, wants_replica

NOW = 1_800_000_000.0
CFG = Settings(replica_copy_interval=300.0)
COPY_DEADLINE = max(COPY_DEADLINE_INTERVALS * CFG.replica_copy_interval, COPY_DEADLINE_MIN)


def pool(**fields) -> dict:
    return new_pool("acme", 1, **{"host_machine_id": 10, "volume_id": 100, "replica": True, **fields})


def seen(p: dict, replica_status: str | None = "online", volume_status: str = "online") -> dict:
    """The volume rows upkeep saw for ``p`` (None: the replica is not listed)."""
    replica = p["replica_volume_id"]
    return {"replica_volume_id": replica, "unclaimed": [],
            "replica": None if replica is None or replica_status is None else
            {"id": replica, "machine_id": 20, "status": replica_status},
            "volume": {"id": p["volume_id"], "machine_id": 10, "status": volume_status}}


def replicated(data_age: float | None = 10.0, copy_started: float | None = None, **fields) -> dict:
    return pool(replica_host_machine_id=20, replica_volume_id=200, replica_copy_started=copy_started,
                replica_data_at=None if data_age is None else iso_at(NOW - data_age), **fields)


@pytest.mark.parametrize("p, row, expected", [
    (pool(), {}, "create"),
    (pool(replica=False), {}, None),
    (pool(replica=None), {}, None),  # the default is no replica
    (replicated(replica=False), {}, "remove"),
    (replicated(), {"replica_status": None}, "lost"),
    (replicated(), {"replica_status": "offline"}, "lost"),
    (replicated(), {}, None),  # fresh enough
    (replicated(data_age=300.0), {}, "copy"),
    (replicated(data_age=None), {}, "copy"),  # never copied
    (replicated(data_age=300.0), {"volume_status": "offline"}, None),  # the source's host is down: no copy
    (replicated(copy_started=NOW - 5), {"replica_status": "copying"}, None),
    (replicated(copy_started=NOW - 5), {}, "landed"),
    (replicated(copy_started=NOW - COPY_DEADLINE + 1), {"replica_status": "copying"}, None),
    (replicated(copy_started=NOW - COPY_DEADLINE - 1), {"replica_status": "copying"}, "stuck"),
    (replicated(data_age=300.0, replica_retry_at=NOW + 1), {}, None),  # backing off after a failure
    (replicated(retire_host={"host_machine_id": 10, "volume_id": 99, "instance_ids": [1]}), {}, "retire"),
    (replicated(data_age=300.0, retire_host={"host_machine_id": 10, "volume_id": 99, "instance_ids": [1],
                                             "next_at": NOW + 1}), {}, "copy"),  # the retire waits; copies go on
])
def test_next_action(p, row, expected):
    assert next_action(p, seen(p, **row), CFG, NOW) == expected


def test_rows_listed_before_the_pool_moved_on_decide_nothing():
    p = replicated(data_age=300.0)
    assert next_action(p, {**seen(p), "replica_volume_id": 199}, CFG, NOW) is None


def test_the_default_decides_when_the_pool_did_not_say():
    on = dataclasses.replace(CFG, replica_default=True)
    assert wants_replica(pool(replica=None), on) and not wants_replica(pool(replica=False), on)
    assert next_action(pool(replica=None), seen(pool()), on, NOW) == "create"


def test_replica_volume_names_pass_vasts_rule():
    assert volume_name("acme", 123, "replica") == "warmpool_acme_123_replica"
    assert volume_name("a-b" * 40, 123, "replica").startswith("warmpool_h")


@pytest.mark.parametrize("statuses, lost", [
    ({1: "offline", 2: "offline"}, True),
    ({1: "offline"}, True),  # the standby gone with its host
    ({1: "offline", 2: "stopped"}, False),  # the standby is there: a failover on the same host
    ({1: "running", 2: "offline"}, False),
    ({}, False),  # both gone: nothing says the host failed
])
def test_host_lost(statuses, lost):
    rows = {i: {"id": i, "actual_status": s} for i, s in statuses.items()}
    assert host_lost(rows, [1, 2]) == lost


# -- on the in-memory provider (tests/unit/fakes.py) ---------------------------------------------------------------


def test_a_failover_of_a_pool_with_a_replica_first_checks_its_host(env):
    from app import operations

    for machine in (1, 2):
        env.add_pool(machine, replica=True, replica_host_machine_id=20, replica_volume_id=200,
                     replica_data_at=iso_at(NOW))
    operations.failover("acme:1", env.store.acquire("acme:1", 10), "health")
    operations.failover("acme:2", env.store.acquire("acme:2", 10), "expiry")
    health, expiry = env.of("failover")
    assert health["steps"][:3] == ["warmpool.failover.confirm_failure", "warmpool.failover.check_host",
                                   "warmpool.failover.stop_primary"]
    assert expiry["steps"][0] == "warmpool.failover.stop_primary"  # planned: nothing to confirm, the host is fine


@pytest.mark.parametrize("data_at", [None, iso_at(NOW)])
def test_a_host_lost_with_a_replica_that_never_completed_a_copy_fails_over_on_its_own_host(env, data_at):
    from app import operations
    from app.operations import NEXT, Branch
    from tasks.hostfailover import check_host
    from tests.unit.test_operations import deliver, message_of

    primary = env.vast.add_instance("warmpool-acme-1-primary", "offline")
    standby = env.vast.add_instance("warmpool-acme-1-standby", "offline", intended="stopped")
    env.add_pool(1, primary_gpu_id=primary, standby_gpu_id=standby, replica=True, replica_host_machine_id=20,
                 replica_volume_id=200, replica_data_at=data_at)
    operations.failover("acme:1", env.store.acquire("acme:1", 10), "health")
    env.steps.clear()
    message = message_of(env.of("failover")[-1])
    if data_at is None:  # nothing to move to: the failover goes on on the same host
        assert deliver(check_host, message) is NEXT
        assert env.store.get_pool("acme:1").get("moving") is None
        assert [name for name, _ in env.steps] == ["warmpool.failover.stop_primary"]
    else:  # the replica holds data: the move to its host
        assert deliver(check_host, message) == Branch("host_failover")
        assert env.store.get_pool("acme:1")["moving"]["host_machine_id"] == 20
        assert [name for name, _ in env.steps] == ["warmpool.failover.fence_old_host"]
        assert env.store.get_op(message["op_id"])["context"]["operation"] == "host_failover"


def test_retiring_an_old_host_that_refuses_is_postponed_then_done(env):
    from app.vast import RequestRejected
    from tasks.replica import tend

    old = env.vast.add_instance("warmpool-acme-1-primary", "offline")
    retire = {"host_machine_id": 77777, "volume_id": env.vast.add_volume("warmpool_acme_1_volume"),
              "instance_ids": [old]}
    env.add_pool(1, retire_host=retire)
    seen = {"replica_volume_id": None, "replica": None, "volume": None, "unclaimed": []}
    env.vast.fail["destroy_instance"] = RequestRejected("machine offline", 400, "machine_offline", None)
    assert tend("acme:1", seen) == "retire" and tend("acme:1", seen) == "nothing to do"  # not due again yet
    left = env.store.get_pool("acme:1")["retire_host"]
    assert (left["instance_ids"], left["volume_id"]) == ([old], None) and left["next_at"] > time.time()
    del env.vast.fail["destroy_instance"]
    pool = env.store.get_pool("acme:1")
    held = env.store.acquire("acme:1", 10)
    env.store.save_pool({**pool, "retire_host": {**left, "next_at": 0}}, held)  # due now
    env.store.release("acme:1", held, 10)
    assert tend("acme:1", seen) == "retire"
    assert env.store.get_pool("acme:1")["retire_host"] is None and old not in env.vast.instances
    kinds = [e["event"] for e in env.store.events("acme:1")]
    assert kinds.count("old_host_retire_postponed") == 1 and kinds.count("old_host_retired") == 1


@pytest.mark.parametrize("ending, expected", [
    ({"standby"}, "renew standby"),
    ({"primary"}, "switchover"),
    ({"primary", "standby"}, "renew standby"),  # the standby first: the switchover must not land on it
    (set(), None),
])
def test_what_a_rental_ending_within_the_margin_starts(env, ending, expected):
    from tasks.expiry import check_expiry

    env.configure(expiry_margin=3600.0)
    soon, later = time.time() + 600, time.time() + 30 * 86400
    primary = env.vast.add_instance("warmpool-acme-1-primary", end_date=soon if "primary" in ending else later)
    standby = env.vast.add_instance("warmpool-acme-1-standby", "stopped",
                                    end_date=soon if "standby" in ending else later)
    env.add_pool(1, primary_gpu_id=primary, standby_gpu_id=standby)
    assert check_expiry().get("acme:1") == expected
    if expected == "renew standby":
        (first, message), = env.steps
        ctx = env.store.get_op(message["op_id"])["context"]
        assert first == "warmpool.provision.create_renewal" and ctx["operation"] == "renew_standby"
        assert (ctx["expiring"], ctx["expiring_end"]) == (standby, soon)
    if expected == "switchover":
        assert env.of("failover")[0]["trigger"] == "expiry"
    if expected:
        event, = [e for e in env.store.events("acme:1") if e["event"] == "rental_ending"]
        assert event["instance_id"] == (standby if "standby" in ending else primary)
    else:
        assert env.steps == [] and env.of("failover") == []
