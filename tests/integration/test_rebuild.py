"""Rebuilding pool records from the provider (tasks/rebuild.py), `warmpool rebuild`, and the Redis checks.

What the provider's rows form is decided by a pure function, checked here case by
case; the command and /readyz run against the real stack.
"""

import time

import pytest

from app.pools import volume_name
from app.store import keys
from tasks.rebuild import form_pool
from tests.conftest import wait_until
from tests.faults.test_faults import provisioned
from tests.integration.test_cli import warmpool

HOST, VOLUME = 700, 9001


def row(instance_id: int, role: str, up: bool, volume: int | None = VOLUME, started: float = 1000.0,
        tenant: str = "acme", running: bool | None = None) -> dict:
    """An instance as the v1 list shows it; ``running`` defaults to ``up`` (not loading)."""
    running = up if running is None else running
    return {"id": instance_id, "label": f"warmpool-{tenant}-5-{role}", "machine_id": HOST,
            "intended_status": "running" if up else "stopped", "actual_status": "running" if running else "stopped",
            "ssh_host": "ssh1.vast.ai", "ssh_port": 10_000 + instance_id if running else None,
            "start_date": started, "gpu_name": "RTX_4090", "image_uuid": "img", "disk_space": 40,
            "volume_info": [] if volume is None else [{"id": volume, "total_space": 80}]}


def formed(rows: list[dict], pid: str = "acme:5", volumes: list[dict] | None = None) -> dict | None:
    pool = form_pool(pid, rows, volumes or [])
    return pool and {k: pool[k] for k in ("state", "volume_id", "primary_gpu_id", "standby_gpu_id", "retire_gpu_id")}


def test_a_running_primary_and_a_stopped_standby_form_an_active_pool():
    pool = form_pool("acme:5", [row(2, "standby", up=False), row(1, "primary", up=True)], [])
    assert pool["state"] == "active" and pool["enabled"]
    assert (pool["tenant"], pool["machine_id"], pool["host_machine_id"], pool["volume_id"]) == ("acme", 5, HOST, VOLUME)
    assert (pool["primary_gpu_id"], pool["standby_gpu_id"], pool["standby_state"]) == (1, 2, "stopped")
    assert (pool["primary_ssh_host"], pool["primary_ssh_port"]) == ("ssh1.vast.ai", 10_001)
    assert (pool["gpu_name"], pool["image"], pool["disk_size"], pool["volume_size"]) == ("RTX_4090", "img", 40, 80)
    assert pool["created_at"] == "1970-01-01T00:16:40.000Z"  # the oldest instance's start


def test_a_failover_stopped_after_starting_the_standby_keeps_the_new_primary():
    # the new primary runs under the standby's label; the old one, stopped, still carries the primary's
    assert formed([row(1, "primary", up=False), row(2, "standby", up=True)]) == {
        "state": "degraded", "volume_id": VOLUME, "primary_gpu_id": 2, "standby_gpu_id": None, "retire_gpu_id": 1}
    # the same while the standby still loads
    assert formed([row(1, "primary", up=False), row(2, "standby", up=True, running=False)])["primary_gpu_id"] == 2


def test_of_two_running_primaries_the_one_running_longer_stays():
    rows = [row(1, "primary", up=True, started=2000.0), row(2, "primary", up=True, started=1000.0),
            row(3, "standby", up=False)]
    assert formed(rows) == {"state": "active", "volume_id": VOLUME, "primary_gpu_id": 2, "standby_gpu_id": 3,
                            "retire_gpu_id": None}


def test_nothing_running_keeps_the_primary_for_the_healer_to_fail_over():
    pool = form_pool("acme:5", [row(1, "primary", up=False), row(2, "standby", up=False)], [])
    assert (pool["state"], pool["primary_gpu_id"], pool["standby_gpu_id"]) == ("degraded", 1, 2)
    assert pool["primary_ssh_host"] and "no running primary" in pool["error_message"]
    assert pool["next_heal_at"] <= time.time()  # due now: the healer repairs it at once


def test_only_instances_on_the_pool_volume_count():
    rows = [row(1, "primary", up=True), row(2, "standby", up=False), row(3, "standby", up=False, volume=VOLUME + 1)]
    assert formed(rows)["standby_gpu_id"] == 2
    assert formed([row(1, "primary", up=True, volume=None)]) is None  # on no volume: not a pool
    assert formed([row(1, "primary", up=True, volume=None)],
                  volumes=[{"id": VOLUME, "label": volume_name("acme", 5), "disk_space": 80}]) is None


def test_a_provider_that_shows_no_links_is_matched_by_the_volume_name():
    rows = [{k: v for k, v in row(i, role, up, tenant="team.x").items() if k != "volume_info"}
            for i, role, up in ((1, "primary", True), (2, "standby", False))]
    volumes = [{"id": VOLUME, "label": volume_name("team.x", 5), "disk_space": 80}]
    assert volumes[0]["label"] != "warmpool_team.x_5_volume"  # the name holds a hash of the tenant
    assert formed(rows, "team.x:5", volumes) == {"state": "active", "volume_id": VOLUME, "primary_gpu_id": 1,
                                                 "standby_gpu_id": 2, "retire_gpu_id": None}


def test_a_lone_stopped_standby_is_the_standby_not_the_primary():
    assert formed([row(2, "standby", up=False)]) == {
        "state": "degraded", "volume_id": VOLUME, "primary_gpu_id": None, "standby_gpu_id": 2, "retire_gpu_id": None}


def test_of_two_stopped_standbys_the_oldest_is_the_standby():
    # the younger one has the lower id and comes first: only the start dates decide
    rows = [row(1, "primary", up=True), row(2, "standby", up=False, started=3000.0),
            row(3, "standby", up=False, started=2000.0), row(4, "standby", up=False, started=2500.0)]
    assert formed(rows)["standby_gpu_id"] == 3


# -- on the real stack ------------------------------------------------------------------------------------------------


def test_warmpool_rebuild_is_a_dry_run_unless_applied(clean_stack):
    stack = clean_stack
    provisioned(stack, [31, 32])
    lost, kept = stack.pool(31), stack.pool(32)
    stack.beat.stop()  # no sweep, no reconcile: only the command rebuilds
    try:
        stack.redis.delete(keys.pool("acme:31"))  # one record evicted
        dry = warmpool("rebuild")
        assert dry.returncode == 0, dry.stderr
        assert (f"acme:31: would rebuild as active: host_machine_id {lost['host_machine_id']}, volume_id "
                f"{lost['volume_id']}, primary_gpu_id {lost['primary_gpu_id']}, standby_gpu_id "
                f"{lost['standby_gpu_id']}") in dry.stdout
        assert "acme:32" not in dry.stdout and "dry run: nothing written" in dry.stdout
        assert stack.pool(31) is None
        applied = warmpool("rebuild", "--apply")
        assert applied.returncode == 0, applied.stderr
        assert "acme:31: rebuilt as active" in applied.stdout
        pool = stack.pool(31)
        assert {k: pool[k] for k in ("state", "host_machine_id", "volume_id", "primary_gpu_id", "standby_gpu_id")} \
            == {k: lost[k] for k in ("state", "host_machine_id", "volume_id", "primary_gpu_id", "standby_gpu_id")}
        assert stack.store.events("acme:31")[0]["event"] == "pool_rebuilt"
        assert stack.pool(32) == kept
        again = warmpool("rebuild")
        assert again.returncode == 0 and "nothing to rebuild" in again.stdout
    finally:
        stack.beat.start()


@pytest.fixture
def redis_config(stack):
    """Change the test Redis's settings for one test; they are put back after."""
    saved = {name: stack.redis.config_get(name)[name] for name in ("maxmemory-policy", "appendonly", "save")}
    yield stack.redis
    for name, value in saved.items():
        stack.redis.config_set(name, value)


def test_readyz_warns_when_redis_may_lose_data(stack, redis_config):
    assert stack.client.get("/readyz").json["warnings"] == []  # AOF on, noeviction
    redis_config.config_set("maxmemory-policy", "allkeys-lru")
    redis_config.config_set("appendonly", "no")
    redis_config.config_set("save", "")
    rv = stack.client.get("/readyz")
    assert rv.status_code == 200 and rv.json["status"] == "ready"  # still ready: a warning, not a failure
    eviction, persistence = rv.json["warnings"]
    assert "allkeys-lru" in eviction and "persistence is off" in persistence
    # warmpool dev's own Redis is not expected to persist; an eviction policy still counts
    assert stack.store.redis_warnings(expect_persistence=False) == [eviction]
    redis_config.config_set("save", "3600 1")  # RDB snapshots are persistence too
    assert stack.store.redis_warnings() == [eviction]


def test_a_pool_that_cannot_be_rebuilt_is_tried_once_per_interval(stack):
    """The sweep sees the labels at every run; what forms no pool is not asked about at every run."""
    pids = ["acme:901", "acme:902"]
    assert stack.store.first_rebuild_tries(pids, 0.5) == pids
    assert stack.store.first_rebuild_tries([*pids, "acme:903"], 0.5) == ["acme:903"]
    wait_until(lambda: stack.store.first_rebuild_tries(pids, 0.5) == pids, timeout=5,
               message="the interval to pass")
