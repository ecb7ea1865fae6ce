"""Rentals that end (Vast's end_date), on real processes: what ends within EXPIRY_MARGIN is replaced before it.

The simulator moves an instance's end date (``POST /_sim/instances/<id>/end_date``); at that
time it would stop for good. EXPIRY_MARGIN is 72 s in tests (end dates read every 0.5 s), so an
end ENDS_IN seconds away is within it, and far beyond what a replacement takes.
"""

from datetime import datetime

import pytest

from tests.conftest import LedgerWatch, wait_until
from tests.faults.test_faults import assert_nothing_leaked, provisioned

pytestmark = pytest.mark.timeout(120)

ENDS_IN = 40.0
DAY = 86400


def ends_soon(stack, instance_id: int) -> float:
    """Make an instance's rental end ENDS_IN seconds from now; return its end date."""
    return stack.sim("POST", f"/_sim/instances/{instance_id}/end_date", json={"in_seconds": ENDS_IN})["end_date"]


def first(stack, machine: int, kind: str, **fields) -> dict:
    """The oldest event of this kind (with these fields) in the pool's history."""
    found = [e for e in stack.store.events(f"acme:{machine}", limit=200)
             if e["event"] == kind and all(e.get(k) == v for k, v in fields.items())]
    assert found, (kind, fields, [e["event"] for e in stack.store.events(f"acme:{machine}", limit=200)])
    return found[-1]


def at(event: dict) -> float:
    return datetime.fromisoformat(event["at"]).timestamp()


def settled(stack, machine: int, test) -> dict:
    """The pool once ``test(pool)`` holds, it is active and no operation holds it."""
    return wait_until(lambda: (p := stack.pool(machine)) and test(p) and p["state"] == "active"
                      and not stack.store.is_locked(f"acme:{machine}") and p, timeout=ENDS_IN,
                      message=f"machine {machine}'s pool to settle")


def rows(stack) -> dict[int, dict]:
    return {i["id"]: i for i in stack.ledger()["instances"]}


def test_a_standby_near_its_end_is_replaced_before_it(clean_stack):
    stack, machine = clean_stack, 41
    provisioned(stack, [machine])
    before = stack.pool(machine)
    old = before["standby_gpu_id"]
    with LedgerWatch(stack) as watch:
        end = ends_soon(stack, old)
        pool = settled(stack, machine, lambda p: p["standby_gpu_id"] not in (old, None))
    replaced = first(stack, machine, "standby_replaced", reason="rental ends")
    assert replaced["old_standby_gpu_id"] == old and replaced["standby_gpu_id"] == pool["standby_gpu_id"]
    assert at(first(stack, machine, "rental_ending", role="standby", instance_id=old)) < at(replaced) < end
    instances = rows(stack)
    assert old not in instances  # destroyed, once the fresh one existed
    fresh = instances[pool["standby_gpu_id"]]
    assert fresh["intended_status"] == "stopped" and fresh["volume_id"] == before["volume_id"]
    assert fresh["machine_id"] == before["host_machine_id"] and fresh["end_date"] > end + DAY
    assert (pool["primary_gpu_id"], pool["failover_count"]) == (before["primary_gpu_id"], 0)
    assert_nothing_leaked(stack)
    assert watch.most_running <= 1


def test_a_primary_near_its_end_is_switched_over_before_it(clean_stack):
    stack, machine = clean_stack, 42
    provisioned(stack, [machine])
    before = stack.pool(machine)
    old = before["primary_gpu_id"]
    with LedgerWatch(stack) as watch:
        end = ends_soon(stack, old)
        pool = settled(stack, machine, lambda p: p["failover_count"] == 1 and p["standby_gpu_id"] is not None)
    assert pool["primary_gpu_id"] == before["standby_gpu_id"] and pool["last_failover"]["trigger"] == "expiry"
    ending = first(stack, machine, "rental_ending", role="primary", instance_id=old)
    assert "planned switchover" in ending["message"]
    completed = first(stack, machine, "failover_completed", trigger="expiry")
    assert at(ending) < at(completed) < end
    assert first(stack, machine, "failover_started", trigger="expiry")
    instances = rows(stack)
    assert old not in instances
    assert instances[pool["primary_gpu_id"]]["actual_status"] == "running"
    assert instances[pool["standby_gpu_id"]]["intended_status"] == "stopped"
    assert_nothing_leaked(stack)
    assert watch.most_running <= 1


def test_when_both_end_the_standby_is_renewed_before_the_switchover(clean_stack):
    stack, machine = clean_stack, 43
    provisioned(stack, [machine])
    before = stack.pool(machine)
    with LedgerWatch(stack) as watch:
        end = min(ends_soon(stack, before["standby_gpu_id"]), ends_soon(stack, before["primary_gpu_id"]))
        pool = settled(stack, machine, lambda p: p["failover_count"] == 1 and p["standby_gpu_id"] is not None)
    renewed = first(stack, machine, "standby_replaced", reason="rental ends")["standby_gpu_id"]
    assert pool["primary_gpu_id"] == renewed  # the switchover landed on the renewed standby, not the ending one
    assert at(first(stack, machine, "failover_completed", trigger="expiry")) < end
    assert set(rows(stack)) >= {pool["primary_gpu_id"], pool["standby_gpu_id"]}
    assert not {before["primary_gpu_id"], before["standby_gpu_id"]} & set(rows(stack))
    assert_nothing_leaked(stack)
    assert watch.most_running <= 1
