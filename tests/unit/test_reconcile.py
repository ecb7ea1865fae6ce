"""The reconciler (tasks/reconcile.py): labelled resources no pool references are reported, and destroyed only
in a way that cannot hurt (rule 13): past the grace, at most a share per run, with the lock, after reading the
pool again, and never anything a pool references in any role."""

import time

import pytest

from app.pools import State, label, volume_name
from app.store import keys
from tasks import reconcile

OLD = time.time() - 3600  # older than the grace used here


@pytest.fixture
def env(env):
    env.configure(reconcile_destroy_orphans=True, reconcile_grace=600.0, reconcile_max_share=0.5)
    return env


def protected(env, machine_id: int, **fields) -> dict:
    """A pool whose primary, standby and volume exist at the provider, made an hour ago."""
    primary = env.vast.add_instance(label("acme", machine_id, "primary"), start_date=OLD)
    standby = env.vast.add_instance(label("acme", machine_id, "standby"), "stopped", start_date=OLD)
    volume = env.vast.add_volume(volume_name("acme", machine_id), start_date=OLD, instances=[primary, standby])
    return env.add_pool(machine_id, primary_gpu_id=primary, standby_gpu_id=standby, volume_id=volume, **fields)


def swept(env) -> None:
    """The label counts of a sweep that just ran (the reconciler starts from them)."""
    env.store.record_sweep(0.1, env.vast.list_instances().label_counts)
    env.vast.calls.clear()


def orphan(env, machine_id: int, role: str = "primary", started: float = OLD) -> int:
    return env.vast.add_instance(label("acme", machine_id, role), start_date=started)


def destroyed(env) -> list[int]:
    return [c[1] for c in env.vast.called("destroy_instance", "delete_volume")]


def notes(env, pid: str) -> list[str]:
    return [e["message"] for e in env.store.events(pid) if e["event"] == "orphan"]


def test_an_orphan_is_reported(env):
    env.configure(reconcile_destroy_orphans=False)
    protected(env, 1)
    leaked = orphan(env, 1)
    swept(env)
    assert reconcile.reconcile() == [["instance", leaked, "acme:1"]]
    assert notes(env, "acme:1") == [f"instance {leaked} carries our label but no pool references it"]
    assert destroyed(env) == [] and leaked in env.vast.instances
    assert env.r.get(keys.ORPHANS) == "1"


def test_an_orphan_past_the_grace_is_destroyed_with_the_lock(env, monkeypatch):
    protected(env, 1)
    leaked = orphan(env, 1)
    swept(env)
    locked = []
    destroy = env.vast.destroy_instance
    monkeypatch.setattr(env.vast, "destroy_instance", lambda i: locked.append(env.store.is_locked("acme:1")) or
                        destroy(i))
    reconcile.reconcile()
    assert destroyed(env) == [leaked] and locked == [True] and not env.store.is_locked("acme:1")
    assert notes(env, "acme:1")[0].endswith("; destroyed")


def test_a_young_orphan_is_kept_for_now(env):
    protected(env, 1)
    leaked = orphan(env, 1, started=time.time() - 10)  # a create whose answer may still be on its way
    swept(env)
    assert reconcile.reconcile() == [["instance", leaked, "acme:1"]]
    assert destroyed(env) == [] and "younger than 600 s: kept for now" in notes(env, "acme:1")[0]


def test_one_of_unknown_age_counts_as_young(env):
    protected(env, 1)
    orphan(env, 1, started=None)
    swept(env)
    reconcile.reconcile()
    assert destroyed(env) == []


def test_at_most_a_share_is_destroyed_in_one_run(env):
    env.configure(reconcile_destroy_orphans=True, reconcile_grace=600.0, reconcile_max_share=0.2)
    pools = [protected(env, m) for m in range(1, 4)]  # 6 labelled instances and 3 volumes
    leaked = [orphan(env, p["machine_id"], role) for p in pools for role in ("primary", "standby")]
    swept(env)
    found = reconcile.reconcile()  # 12 labelled instances + 3 volumes: 0.2 of 15 is 3
    assert sorted(o[1] for o in found) == sorted(leaked)
    assert len(destroyed(env)) == 3 and set(destroyed(env)) <= set(leaked)
    kept = [n for p in pools for n in notes(env, f"acme:{p['machine_id']}") if "over this run's limit of 3" in n]
    assert len(kept) == 3


def test_the_pool_is_read_again_before_anything_is_destroyed(env, monkeypatch):
    pool = protected(env, 1)
    leaked = orphan(env, 1, "standby")
    swept(env)
    lease_if_free = env.store.lease_if_free

    def adopted_meanwhile(pid, ttl):
        if pid == "acme:1":  # an operation adopted it, and ended, just before the reconciler took the lock
            held = env.store.acquire(pid, 10)
            env.store.save_pool({**env.store.get_pool(pid), "standby_gpu_id": leaked}, held)
            env.store.release(pid, held, 10)
        return lease_if_free(pid, ttl)

    monkeypatch.setattr(env.store, "lease_if_free", adopted_meanwhile)
    reconcile.reconcile()
    assert destroyed(env) == [] and leaked in env.vast.instances
    assert "kept: its pool references it now" in notes(env, "acme:1")[0]
    assert pool["standby_gpu_id"] in env.vast.instances


def test_nothing_is_destroyed_while_an_operation_holds_the_machine(env):
    protected(env, 1)
    orphan(env, 1)
    swept(env)
    env.hold_lock(1)
    reconcile.reconcile()
    assert destroyed(env) == [] and "kept: an operation holds the machine" in notes(env, "acme:1")[0]


def test_nothing_is_destroyed_while_the_pool_has_a_create_in_flight(env):
    protected(env, 1, creating={"role": "standby", "at": time.time()})
    orphan(env, 1, "standby")
    swept(env)
    reconcile.reconcile()
    assert destroyed(env) == [] and "create in flight" in notes(env, "acme:1")[0]


def test_an_instance_the_pool_references_in_any_role_is_never_an_orphan(env):
    # a failover after its promotion: the new primary still carries the standby's label, the old primary is
    # to be retired, and the new standby is being made
    old_primary = orphan(env, 1, "primary")
    promoted = orphan(env, 1, "standby")
    new_standby = env.vast.add_instance(label("acme", 1, "standby"), "stopped", start_date=OLD)
    volume = env.vast.add_volume(volume_name("acme", 1), start_date=OLD, instances=[promoted])
    env.add_pool(1, state=State.PROVISIONING, primary_gpu_id=promoted, standby_gpu_id=new_standby,
                 retire_gpu_id=old_primary, volume_id=volume)
    swept(env)
    assert reconcile.reconcile() == []
    assert destroyed(env) == [] and notes(env, "acme:1") == []


def test_a_volume_no_pool_references_is_an_orphan_unless_an_instance_uses_it(env):
    protected(env, 1)
    spare = env.vast.add_volume(volume_name("acme", 1), start_date=OLD)
    used = env.vast.add_volume(volume_name("acme", 1), start_date=OLD, instances=[9])
    swept(env)
    assert reconcile.reconcile() == [["volume", spare, "acme:1"]]
    assert destroyed(env) == [spare] and used in env.vast.volumes


def test_resources_that_are_not_ours_are_never_looked_at(env):
    protected(env, 1)
    env.vast.add_instance("ML job", start_date=OLD)
    env.vast.add_volume("scratch", start_date=OLD)
    swept(env)
    assert reconcile.reconcile() == [] and destroyed(env) == []


def test_nothing_is_judged_before_a_sweep_has_counted_the_labels(env):
    protected(env, 1)
    orphan(env, 1)
    assert reconcile.reconcile() == []
    assert env.vast.calls == []


def test_after_redis_lost_its_data_the_pools_are_rebuilt_not_destroyed(env):
    pools = [protected(env, m) for m in (1, 2)]
    env.r.flushall()  # a restart without persistence
    assert reconcile.reconcile() == []  # no sweep yet: nothing is known
    swept(env)
    assert reconcile.reconcile() == []
    assert destroyed(env) == []
    for pool in pools:
        rebuilt = env.store.get_pool(f"acme:{pool['machine_id']}")
        assert {k: rebuilt[k] for k in ("primary_gpu_id", "standby_gpu_id", "volume_id", "state")} == {
            k: pool[k] for k in ("primary_gpu_id", "standby_gpu_id", "volume_id", "state")}
