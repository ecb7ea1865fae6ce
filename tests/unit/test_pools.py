"""What a pool is (app/pools.py): ids, labels, volume names, the record and its named changes of state."""

import ast
import json
import re
import time
from pathlib import Path

import pytest

from app import pools
from app.pools import (
    FieldMissing,
    IllegalTransition,
    Pool,
    StandbyState,
    State,
    cost_per_hour,
    has_resources,
    is_unsettled,
    is_watched,
    known_ids,
    label,
    loaded_pool,
    new_pool,
    parse_label,
    pool_id,
    refuses_provision,
    required,
    split_pool_id,
    standby_gone,
    standby_starting,
    standby_stopped,
    to_active,
    to_degraded,
    to_disabled,
    to_failover,
    to_failover_cancelled,
    to_given_up,
    to_host_found,
    to_promoted,
    to_provisioning,
    to_replacing_standby,
    to_searching,
    volume_name,
)

PID = "acme:123"


# -- ids, labels, volume names -------------------------------------------------------------------


def test_pool_ids_and_labels_round_trip():
    assert pool_id("acme", 123) == PID
    assert split_pool_id(PID) == ("acme", 123)
    assert split_pool_id("te:nant:7") == ("te:nant", 7)  # the machine is after the last colon
    assert label("acme", 123, "primary") == "warmpool-acme-123-primary"
    for tenant, machine, role in (("acme", 1, "primary"), ("a-b-c", 99999, "standby")):
        assert parse_label(label(tenant, machine, role)) == (pool_id(tenant, machine), role)


@pytest.mark.parametrize("name, parsed", [
    ("warmpool-acme-123-primary", ("acme:123", "primary")),
    ("warmpool-acme-123-standby", ("acme:123", "standby")),
    ("warmpool-big-co-7-primary", ("big-co:7", "primary")),
    ("warmpool-acme-123-volume", None),  # volumes are found by name, not by label
    ("warmpool-acme-x1-primary", None),
    ("warmpool-acme-123-spare", None),
    ("warmpool--123-primary", None),
    ("warmpool-123-primary", None),
    ("warmpool-acme--primary", None),
    ("ML job", None),
    ("", None),
])
def test_parse_label(name, parsed):
    assert parse_label(name) == parsed


def test_volume_names_follow_the_house_pattern():
    assert volume_name("acme", 123) == "warmpool_acme_123_volume"
    assert volume_name("Globex2", 9007199254740991) == "warmpool_Globex2_9007199254740991_volume"


@pytest.mark.parametrize("tenant", ["big-co", "a.b", "x" * 33, "ümlaut", "under_score"])
def test_a_tenant_vast_would_refuse_in_a_volume_name_is_replaced_by_a_stable_hash(tenant):
    name = volume_name(tenant, 9007199254740991)
    assert re.fullmatch(r"[A-Za-z0-9_]{1,64}", name), name  # Vast's rule for volume names
    assert name == volume_name(tenant, 9007199254740991) and name.startswith("warmpool_h")
    assert volume_name(tenant, 1) != volume_name(tenant + "x", 1)


@pytest.mark.parametrize("kind", ["volume", "replica"])
def test_a_name_that_would_pass_64_characters_is_hashed_too(kind):
    tenant, machine = "T" * 32, 9007199254740991  # a tenant Vast takes, and the largest machine id
    name = volume_name(tenant, machine, kind)
    assert re.fullmatch(r"[A-Za-z0-9_]{1,64}", name) and name.startswith("warmpool_h"), name


# -- the record ---------------------------------------------------------------------------------------


def test_new_pool_has_the_seed_fields_and_overrides():
    pool = new_pool("acme", 1, state=State.ACTIVE, gpu_name="RTX_4090")
    seed = {"machine_id", "state", "host_machine_id", "volume_id", "primary_gpu_id", "standby_gpu_id",
            "standby_state", "primary_ssh_host", "primary_ssh_port", "failover_count", "last_failover_at",
            "error_message"}
    assert seed <= set(pool)
    assert pool["state"] == State.ACTIVE and pool["gpu_name"] == "RTX_4090" and pool["standby_state"] == "none"
    assert (pool["disk_size"], pool["volume_size"], pool["seq"], pool["creating"]) == (50, 100, 0, None)


def test_new_pool_writes_exactly_the_keys_of_the_pool_type():
    # the type is not total (it types partial writes too): this is what holds a whole record to it
    assert set(new_pool("acme", 1)) == Pool.__required_keys__ | Pool.__optional_keys__


def test_a_stored_record_reads_with_its_states_as_enums_and_the_keys_added_since_it_was_written():
    written = {k: str(v) if k in ("state", "standby_state") else v
               for k, v in new_pool("acme", 1, state=State.ACTIVE, volume_id=3).items()
               if k not in ("moving", "renew_after")}
    pool = loaded_pool(json.dumps(written))
    assert pool["state"] is State.ACTIVE and pool["standby_state"] is StandbyState.NONE
    assert (pool["volume_id"], pool["moving"], pool["renew_after"]) == (3, None, 0.0)
    assert set(pool) == set(new_pool("acme", 1))


def test_a_field_a_step_needs_set_is_read_as_set_or_refused_naming_the_pool_and_the_field():
    pool = new_pool("acme", 1, primary_gpu_id=7, moving=None)
    assert required(pool, "primary_gpu_id") == 7
    for field in ("standby_gpu_id", "moving"):
        with pytest.raises(FieldMissing, match=f"^pool acme:1: {field} is not set$"):
            required(pool, field)


def test_known_ids_leaves_out_the_ids_not_set():
    assert known_ids(3, None, 1, 3) == {1, 3} and known_ids(None) == set()


@pytest.mark.parametrize("state, enabled, primary, watched", [
    (State.ACTIVE, True, 1, True), (State.DEGRADED, True, 1, True), (State.ACTIVE, False, 1, False),
    (State.ACTIVE, True, None, False), (State.FAILOVER, True, 1, False), (State.PROVISIONING, True, 1, False),
    (State.SEARCHING, True, 1, False), (State.DISABLED, False, 1, False)])
def test_the_sweep_watches_enabled_active_or_degraded_pools_with_a_primary(state, enabled, primary, watched):
    assert is_watched(new_pool("acme", 1, state=state, enabled=enabled, primary_gpu_id=primary)) is watched


@pytest.mark.parametrize("fields, unsettled", [
    ({"state": State.ACTIVE}, False), ({"state": State.DEGRADED}, True), ({"state": State.FAILOVER}, True),
    ({"state": State.PROVISIONING}, True), ({"state": State.SEARCHING}, True), ({"state": State.DISABLED}, False),
    ({"state": State.DEGRADED, "enabled": False}, False),
    ({"state": State.DISABLED, "enabled": False, "cleanup_pending": True}, True)])
def test_the_healer_looks_at_unsettled_pools_and_unfinished_cleanups(fields, unsettled):
    assert is_unsettled(new_pool("acme", 1, **fields)) is unsettled


@pytest.mark.parametrize("fields, host, refused", [
    (None, 88888, False),
    ({"state": State.ACTIVE}, 88888, True), ({"state": State.FAILOVER}, 88888, True),
    ({"state": State.SEARCHING}, 88888, True), ({"state": State.PROVISIONING}, 88888, True),
    ({"state": State.DEGRADED, "host_machine_id": 88888, "volume_id": 7}, 88888, False),
    ({"state": State.DEGRADED, "host_machine_id": 77777, "volume_id": 7}, 88888, True),  # its volume is elsewhere
    ({"state": State.DISABLED, "host_machine_id": 77777, "volume_id": None}, 88888, False),  # cleaned up
])
def test_a_machine_keeps_one_pool(fields, host, refused):
    pool = fields and new_pool("acme", 1, **fields)
    assert refuses_provision(pool, host) is refused


def test_has_resources_needs_primary_standby_and_volume():
    assert has_resources(new_pool("acme", 1, primary_gpu_id=1, standby_gpu_id=2, volume_id=3))
    for missing in ("primary_gpu_id", "standby_gpu_id", "volume_id"):
        assert not has_resources(new_pool("acme", 1, **{"primary_gpu_id": 1, "standby_gpu_id": 2, "volume_id": 3,
                                                        missing: None}))


# -- named changes of state ----------------------------------------------------------------------------------


def test_to_provisioning_protects_again_from_scratch_or_by_search():
    pool = new_pool("acme", 1, state=State.DISABLED, enabled=False, fallback="cpu_standby", error_message="x")
    to_provisioning(pool, search=True, gpu_name="A100", op_id="o" * 32)
    assert (pool["state"], pool["enabled"], pool["fallback"], pool["error_message"]) == (
        State.SEARCHING, True, None, None)
    assert (pool["gpu_name"], pool["op_id"]) == ("A100", "o" * 32)
    pool = new_pool("acme", 1, state=State.DEGRADED)
    to_provisioning(pool, search=False)
    assert pool["state"] == State.PROVISIONING


def test_to_active_clears_errors_and_the_healers_backoff():
    pool = new_pool("acme", 1, state=State.DEGRADED, error_message="x", fallback="cpu_standby", heal_attempts=4,
                    next_heal_at=time.time() + 600)
    to_active(pool, standby_gpu_id=9)
    assert (pool["state"], pool["enabled"], pool["error_message"], pool["fallback"]) == (State.ACTIVE, True, None, None)
    assert (pool["heal_attempts"], pool["next_heal_at"], pool["standby_gpu_id"]) == (0, 0.0, 9)


def test_to_disabled_keeps_resources_and_names_the_fallback():
    pool = new_pool("acme", 1, state=State.ACTIVE, primary_gpu_id=1, volume_id=3, error_message="x")
    to_disabled(pool)
    assert (pool["state"], pool["enabled"], pool["fallback"], pool["error_message"]) == (
        State.DISABLED, False, "cpu_standby", None)
    assert (pool["primary_gpu_id"], pool["volume_id"]) == (1, 3)
    to_disabled(pool, fallback=None)  # a cleanup: nothing is left to fall back on
    assert pool["fallback"] is None


def test_to_degraded_says_why_and_when_the_healer_retries():
    pool = new_pool("acme", 1, state=State.ACTIVE)
    before = time.time()
    to_degraded(pool, "the standby no longer exists", 30.0, standby_gpu_id=None)
    assert (pool["state"], pool["error_message"], pool["standby_gpu_id"]) == (
        State.DEGRADED, "the standby no longer exists", None)
    assert before + 30.0 <= pool["next_heal_at"] <= time.time() + 30.0


def test_the_cost_per_hour_comes_from_the_listed_prices_part_by_part():
    pool = new_pool("acme", 1, primary_gpu_id=1, standby_gpu_id=2, volume_id=3, disk_size=72, volume_size=144,
                    primary_dph_base=0.4, host_storage_cost=0.1)
    # storage: $/GB-month x GB / 720, as Vast's storage_total_cost
    assert cost_per_hour(pool) == {"primary": 0.41, "standby_storage": 0.01, "volume": 0.02, "replica": 0.0,
                                   "total": 0.44, "complete": True}
    pool.update(replica_volume_id=4)  # a replica whose price was not seen: unknown, not free
    assert cost_per_hour(pool)["replica"] is None and not cost_per_hour(pool)["complete"]
    pool.update(replica_storage_cost=0.05)
    assert cost_per_hour(pool)["replica"] == 0.01 and cost_per_hour(pool)["total"] == 0.45
    assert cost_per_hour(new_pool("acme", 2))["total"] == 0.0  # nothing rented, nothing billed


# -- the state machine: only named transitions, each from the states it names ----------------------

# each transition, called with its arguments, and the states it may leave (docs/architecture.md's table)
ANY, ANY_STANDBY = frozenset(State), frozenset(StandbyState)
TRANSITIONS = {
    "to_provisioning": (lambda p: to_provisioning(p, search=False),
                        {State.DISABLED, State.DEGRADED, State.ACTIVE, State.PROVISIONING}),
    "to_searching": (to_searching, {State.DEGRADED, State.PROVISIONING}),
    "to_host_found": (lambda p: to_host_found(p, 7, "A100"), {State.SEARCHING, State.PROVISIONING}),
    "to_active": (to_active, ANY - {State.FAILOVER}),
    "to_replacing_standby": (to_replacing_standby, {State.ACTIVE}),
    "to_failover": (lambda p: to_failover(p, "o" * 32), ANY - {State.FAILOVER}),
    "to_failover_cancelled": (lambda p: to_failover_cancelled(p, State.DEGRADED), {State.FAILOVER}),
    "to_promoted": (lambda p: to_promoted(p, 9), {State.FAILOVER}),
    "to_disabled": (to_disabled, ANY),
    "to_given_up": (lambda p: to_given_up(p, "x"), {State.DEGRADED, State.PROVISIONING, State.SEARCHING}),
    "to_degraded": (lambda p: to_degraded(p, "x", 1), ANY),
    "standby_starting": (lambda p: standby_starting(p, 9), ANY_STANDBY - {StandbyState.RUNNING}),
    "standby_stopped": (lambda p: standby_stopped(p, 9), ANY_STANDBY - {StandbyState.RUNNING}),
    "standby_gone": (standby_gone, ANY_STANDBY),
}


def test_every_named_transition_is_in_the_table():
    named = {name for name in dir(pools) if re.fullmatch(r"(to|standby)_[a-z_]+", name)
             and callable(getattr(pools, name))}
    assert named == set(TRANSITIONS)


@pytest.mark.parametrize("name", sorted(TRANSITIONS))
def test_a_transition_leaves_only_the_states_it_names(name):
    """Each allowed source works; every other one (and a corrupt value) raises, leaving the pool as it was."""
    call, allowed = TRANSITIONS[name]
    field, values = ("standby_state", list(StandbyState)) if name.startswith("standby_") else ("state", list(State))
    for source in [*values, "corrupt"]:
        pool = new_pool("acme", 1, **{field: source})
        if source in allowed:
            call(pool)
        else:
            before = dict(pool)
            with pytest.raises(IllegalTransition, match=f"acme:1: {name} does not leave '{source}'"):
                call(pool)
            assert pool == before


def test_a_cancelled_failover_goes_back_to_the_state_it_began_in():
    for before, after in ((State.DEGRADED, State.DEGRADED), (None, State.ACTIVE), (State.FAILOVER, State.ACTIVE)):
        pool = new_pool("acme", 1, state=State.FAILOVER)
        to_failover_cancelled(pool, before)
        assert pool["state"] == after


def test_a_promotion_leaves_the_pool_provisioning_without_a_standby():
    pool = new_pool("acme", 1, state=State.FAILOVER, primary_gpu_id=1, standby_gpu_id=9,
                    standby_state=StandbyState.STARTING, error_message="x")
    to_promoted(pool, 9, retire_gpu_id=1)
    assert (pool["state"], pool["primary_gpu_id"], pool["standby_gpu_id"], pool["standby_state"],
            pool["retire_gpu_id"], pool["error_message"]) == (State.PROVISIONING, 9, None, StandbyState.NONE, 1, None)


STATE_FIELDS = ("state", "standby_state")
WRITERS = ("update", "save", "advance", "finish", "fail", "new_pool")  # what takes a pool's fields as keywords


def state_writes(source: str) -> list[int]:
    """The lines of ``source`` that write a pool's ``state`` or ``standby_state`` themselves: a keyword to a call
    that takes a pool's fields, a dict key, or a subscript assigned (a pool's; an op record or a webhook delivery
    has a "state" of its own)."""
    def names_state(node) -> bool:
        return any(isinstance(n, ast.Name) and n.id in ("State", "StandbyState") for n in ast.walk(node))

    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            lines += [node.lineno for k in node.keywords if k.arg == "standby_state" or (
                k.arg == "state" and (called in WRITERS or called.startswith("to_") or names_state(k.value)))]
        elif isinstance(node, ast.Dict):
            lines += [node.lineno for k, v in zip(node.keys, node.values) if isinstance(k, ast.Constant) and (
                k.value == "standby_state" or (k.value == "state" and names_state(v)))]
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            lines += [node.lineno for t in targets if isinstance(t, ast.Subscript)
                      and isinstance(t.slice, ast.Constant) and t.slice.value in STATE_FIELDS
                      and (t.slice.value == "standby_state" or "pool" in ast.unparse(t.value))]
    return lines


def test_no_module_but_app_pools_writes_a_pools_state():
    root = Path(__file__).resolve().parents[2]
    writes = {str(path.relative_to(root)): lines for folder in ("app", "tasks") for path in (root / folder).rglob("*.py")
              if path != root / "app/pools.py" and (lines := state_writes(path.read_text()))}
    assert writes == {}, "write state only through app/pools.py's named transitions"


@pytest.mark.parametrize("write", [
    'pool.update(state=State.SEARCHING)', 'op.save(standby_gpu_id=1, standby_state="stopped")',
    'op.finish(result, state=before)', 'pool["state"] = State.ACTIVE', 'op.pool["standby_state"] = "none"',
    'new_pool(t, m, standby_state="stopped")', 'fields = {"standby_state": "stopped"}',
    'op.advance(**{"state": State.PROVISIONING})'])
def test_the_static_check_sees_each_kind_of_write(write):
    assert state_writes(write) == [1]


def test_the_static_check_leaves_other_records_states_alone():
    assert state_writes('s.update_op(op_id, state="FAILURE")\ndelivery["state"] = PENDING\n'
                        'vast._manage(i, {"state": "running"})') == []
