"""Fault injection on real processes: kill workers, restart Redis, break the provider, race the triggers.

Every case asserts on the pools and on the simulator's ledger and stats: nothing
duplicated, nothing leaked, never two running instances for one pool.
"""

import concurrent.futures
import signal
import time

import pytest
import requests

from app.store import keys
from tests.conftest import LedgerWatch, wait_until

pytestmark = pytest.mark.timeout(300)  # above the sum of a test's own waits, which say what they waited for


# -- helpers ---------------------------------------------------------------------------------


def free_hosts(stack, count: int) -> list[int]:
    rv = stack.api("GET", "/api/v1/warmpool/hosts?gpu_name=RTX_4090&min_gpus=3")
    assert rv.status_code == 200, rv.json
    return [h["machine_id"] for h in rv.json["hosts"][:count]]


def provision(stack, machines: list[int]) -> dict[int, str]:
    """Start a provision per machine, each on its own host; return the task ids."""
    tasks = {}
    for machine, host in zip(machines, free_hosts(stack, len(machines))):
        rv = stack.api("POST", "/api/v1/warmpool/provision",
                       json={"machine_id": machine, "host_machine_id": host, "gpu_name": "RTX_4090"})
        assert rv.status_code == 202, rv.json
        tasks[machine] = rv.json["task_id"]
    return tasks


def provisioned(stack, machines: list[int]) -> None:
    for machine, task in provision(stack, machines).items():
        assert stack.wait_task(task)["state"] == "SUCCESS"
        stack.wait_state(machine, "active")


def wait_step(stack, tasks, step: str) -> None:
    wait_until(lambda: any((op := stack.store.get_op(t)) and op["step"] == step for t in tasks),
               timeout=30, message=f"an operation to reach {step}")


def kill_worker(stack) -> None:
    """kill -9 the worker, then start a new one: what it held comes back after the visibility timeout."""
    stack.worker.kill()
    stack.worker = stack.new_worker(f"w{time.monotonic_ns()}")


def labels(stack, tenant="acme") -> dict[str, int]:
    return {k: v for k, v in stack.sim("GET", "/_sim/stats")["created_by_label"].items()
            if k.startswith(f"warmpool-{tenant}-")}


def assert_nothing_leaked(stack) -> None:
    """Every labelled resource on the provider is one that a pool references, and the reverse."""
    ledger = stack.ledger()
    referenced = {"instances": set(), "volumes": set()}
    for pool in stack.store.get_pools(stack.store.all_pool_ids()):
        referenced["instances"] |= {pool["primary_gpu_id"], pool["standby_gpu_id"]} - {None}
        referenced["volumes"] |= {pool["volume_id"], pool.get("replica_volume_id")} - {None}
    live = {"instances": {i["id"] for i in ledger["instances"] if i["label"].startswith("warmpool-")},
            "volumes": {v["id"] for v in ledger["volumes"] if v["name"].startswith("warmpool_")}}
    assert live == referenced
    assert ledger["violations"] == []


def fail_primary(stack, machine: int) -> int:
    primary = stack.pool(machine)["primary_gpu_id"]
    stack.sim("POST", f"/_sim/instances/{primary}/fail")
    return primary


# -- 1. kill -9 of the worker at each step -------------------------------------------------------


@pytest.mark.parametrize("step", ["create_volume", "create_primary", "await_primary", "create_standby"])
def test_worker_killed_while_provisioning(clean_stack, step):
    stack, machines = clean_stack, [11, 12, 13]
    stack.sim("POST", "/_sim/faults", json={"latency_ms": 150})  # steps long enough to be caught
    with LedgerWatch(stack) as watch:
        tasks = provision(stack, machines)
        wait_step(stack, tasks.values(), step)
        kill_worker(stack)
        for machine, task in tasks.items():
            op = stack.wait_task(task, timeout=60)
            assert op["state"] == "SUCCESS", (op, [(e["event"], e["message"]) for e in
                                                   stack.store.events(f"acme:{machine}")])
    for machine in machines:
        assert stack.wait_state(machine, "active")["standby_state"] == "stopped"
        assert labels(stack)[f"warmpool-acme-{machine}-primary"] == 1
        assert labels(stack)[f"warmpool-acme-{machine}-standby"] == 1
    volumes = stack.sim("GET", "/_sim/stats")["volumes_created_by_name"]
    assert all(volumes[f"warmpool_acme_{m}_volume"] == 1 for m in machines)
    assert_nothing_leaked(stack)
    assert watch.most_running <= 1


@pytest.mark.parametrize("step", ["stop_primary", "await_standby", "retire_old_primary", "create_standby"])
def test_worker_killed_during_failover(clean_stack, step):
    stack, machines = clean_stack, [21, 22]
    provisioned(stack, machines)
    standbys = {m: stack.pool(m)["standby_gpu_id"] for m in machines}
    stack.sim("POST", "/_sim/faults", json={"latency_ms": 150})
    with LedgerWatch(stack) as watch:
        tasks = [stack.api("POST", f"/api/v1/warmpool/failover/test/{m}").json["task_id"] for m in machines]
        wait_step(stack, tasks, step)
        kill_worker(stack)
        for task in tasks:
            assert stack.wait_task(task, timeout=60)["state"] == "SUCCESS"
        for machine in machines:
            pool = stack.wait_state(machine, "active", timeout=60)
            assert pool["failover_count"] == 1 and pool["primary_gpu_id"] == standbys[machine]
    actions = stack.sim("GET", "/_sim/stats")["instance_actions"]
    for machine in machines:
        assert labels(stack)[f"warmpool-acme-{machine}-standby"] == 2  # the first and its replacement
        assert labels(stack)[f"warmpool-acme-{machine}-primary"] == 1
        assert actions[str(standbys[machine])]["start"] >= 1
    assert_nothing_leaked(stack)
    assert watch.most_running <= 1


@pytest.mark.parametrize("step", ["destroy_instances", "delete_volume"])
def test_worker_killed_during_cleanup(clean_stack, step):
    stack, machines = clean_stack, [31, 32]
    provisioned(stack, machines)
    stack.sim("POST", "/_sim/faults", json={"latency_ms": 150})
    tasks = [stack.api("DELETE", f"/api/v1/warmpool/cleanup/{m}").json["task_id"] for m in machines]
    wait_step(stack, tasks, step)
    kill_worker(stack)
    for machine, task in zip(machines, tasks):
        op = stack.wait_task(task, timeout=60)
        assert op["state"] == "SUCCESS", (op, [(e["event"], e["message"]) for e in
                                               stack.store.events(f"acme:{machine}")])
    ledger = stack.ledger()
    assert not [i for i in ledger["instances"] if i["label"].startswith("warmpool-")]
    assert not [v for v in ledger["volumes"] if v["name"].startswith("warmpool_")]
    assert all(stack.pool(m)["state"] == "disabled" for m in machines)


# -- 2. Redis restarted ----------------------------------------------------------------------------


def test_redis_restart(clean_stack):
    stack = clean_stack
    provisioned(stack, [41, 42])
    stack.sim("POST", "/_sim/faults", json={"latency_ms": 150})
    task = provision(stack, [43])[43]
    wait_step(stack, [task], "create_primary")
    stack.redis_server.restart()  # persistent, as docker-compose runs it
    assert stack.wait_task(task, timeout=60)["state"] == "SUCCESS"
    stack.sim("POST", "/_sim/faults", json={})
    for machine in (41, 42, 43):
        assert stack.api("GET", f"/api/v1/warmpool/status/{machine}").json["state"] == "active"
    # the API and the workers reconnected by themselves: a failover afterwards works
    fail_primary(stack, 41)
    wait_until(lambda: stack.pool(41)["failover_count"] == 1 and stack.pool(41)["state"] == "active",
               timeout=30, message="the failover after the restart")
    assert labels(stack)["warmpool-acme-43-primary"] == 1
    assert_nothing_leaked(stack)


# -- 3. the provider API failing ----------------------------------------------------------------------


def test_provider_outage_is_not_a_machine_failure(clean_stack):
    stack = clean_stack
    provisioned(stack, [51, 52])
    for faults in ({"error_rate": 1.0}, {"rate_limit_rate": 1.0}):
        stack.sim("POST", "/_sim/faults", json=faults)
        start = stack.store.unknown_sweeps()
        wait_until(lambda s=start: stack.store.unknown_sweeps() >= s + 20,
                   timeout=30, message="20 sweeps during the outage")
    stack.sim("POST", "/_sim/faults", json={"latency_ms": 5000})
    stack.wait_sweeps(1, timeout=30)  # a slow sweep
    stack.sim("POST", "/_sim/faults", json={})
    assert all(stack.pool(m)["failover_count"] == 0 and stack.pool(m)["state"] == "active" for m in (51, 52))
    assert not stack.sim("GET", "/_sim/stats")["instance_actions"]  # nothing was stopped or started
    # recovered: a real failure still fails over
    fail_primary(stack, 51)
    wait_until(lambda: stack.pool(51)["failover_count"] == 1 and stack.pool(51)["state"] == "active",
               timeout=30, message="the failover after the outage")
    assert stack.pool(52)["failover_count"] == 0


def test_provisioning_under_provider_errors(clean_stack):
    stack, machines = clean_stack, [61, 62, 63]
    hosts = free_hosts(stack, 3)
    stack.sim("POST", "/_sim/faults", json={"error_rate": 0.3})
    tasks = {}
    for machine, host in zip(machines, hosts):
        rv = stack.api("POST", "/api/v1/warmpool/provision", json={"machine_id": machine, "host_machine_id": host})
        tasks[machine] = rv.json["task_id"]
    for machine, task in tasks.items():
        stack.wait_task(task, timeout=90)
        assert stack.wait_state(machine, "active", "degraded", timeout=30)
    stack.sim("POST", "/_sim/faults", json={})
    assert all(count == 1 for count in labels(stack).values())
    assert_nothing_leaked(stack)


# -- 4. racing triggers ----------------------------------------------------------------------------


def test_concurrent_failover_triggers(clean_stack):
    stack = clean_stack
    provisioned(stack, [71])
    standby = stack.pool(71)["standby_gpu_id"]
    url = stack.http()
    fail_primary(stack, 71)

    def trigger(_):
        return requests.post(f"{url}/api/v1/warmpool/failover/test/71", timeout=30,
                             headers={"Authorization": "Bearer acme-key"}).status_code

    with LedgerWatch(stack) as watch, concurrent.futures.ThreadPoolExecutor(20) as pool:
        codes = list(pool.map(trigger, range(20)))
        wait_until(lambda: stack.pool(71)["failover_count"] >= 1, timeout=30)
        stack.wait_state(71, "active", timeout=30)
    assert sorted(codes) in ([202] + [409] * 19, [409] * 20)  # the sweep may have taken the lock first
    assert stack.pool(71)["failover_count"] == 1
    assert stack.sim("GET", "/_sim/stats")["instance_actions"][str(standby)]["start"] == 1
    assert watch.most_running <= 1


def test_stale_health_trigger_does_not_fail_over_the_new_primary(clean_stack):
    from tasks import sweep

    stack = clean_stack
    provisioned(stack, [72])
    old_primary = stack.pool(72)["primary_gpu_id"]
    task = stack.api("POST", "/api/v1/warmpool/failover/test/72").json["task_id"]
    # a health trigger about the old primary, queued while the manual failover runs
    sweep.trigger.delay("acme:72", old_primary, time.time())
    assert stack.wait_task(task)["state"] == "SUCCESS"
    pool = stack.wait_state(72, "active")
    sweep.trigger.delay("acme:72", old_primary, time.time())
    wait_until(lambda: [e for e in stack.store.events("acme:72") if e["event"] == "failover_trigger_stale"],
               message="the late trigger to be judged stale")
    assert stack.wait_state(72, "active")["primary_gpu_id"] == pool["primary_gpu_id"]
    assert stack.pool(72)["failover_count"] == 1


# -- 5. a frozen lock holder ---------------------------------------------------------------------------


def freeze_and_take_over(stack, task: str, machine: int, settles_as: str = "active", ran_a_step: bool = True):
    """SIGSTOP the worker (its lock then expires: the healer takes the operation over in a new worker), let
    the operation end there, then SIGCONT the frozen one. Return the pool as the new holder left it."""
    frozen = stack.worker
    frozen.signal(signal.SIGSTOP)
    stack.worker = stack.new_worker(f"w-takeover{time.monotonic_ns()}")
    try:
        assert stack.wait_task(task, timeout=60)["state"] == "SUCCESS"
        settled = stack.wait_state(machine, settles_as, timeout=60)
        frozen.signal(signal.SIGCONT)
        if ran_a_step:  # the woken worker finds itself fenced out: it writes nothing, sends no mutating call
            wait_until(lambda: "lost to a newer holder" in frozen.log.read_text(), timeout=30,
                       message="the woken worker to find itself fenced out")
    finally:
        frozen.signal(signal.SIGCONT)
        frozen.stop()
    return settled


def test_frozen_lock_holder_is_fenced_out(clean_stack):
    stack = clean_stack
    provisioned(stack, [81])
    stack.sim("POST", "/_sim/faults", json={"latency_ms": 300})
    task = stack.api("POST", "/api/v1/warmpool/failover/test/81").json["task_id"]
    wait_step(stack, [task], "await_standby")
    settled = freeze_and_take_over(stack, task, 81)
    epoch = stack.store.epoch("acme:81")
    assert stack.pool(81) == settled and stack.store.epoch("acme:81") == epoch
    assert stack.pool(81)["failover_count"] == 1
    assert_nothing_leaked(stack)


@pytest.mark.parametrize("route, step", [
    ("POST /api/v0/bundles/", "create_primary"),  # the search answer held: the create after it never leaves
    ("PUT /api/v0/asks/{id}/", "create_primary"),  # the create carried out, its answer held past the take-over
    ("PUT /api/v0/volumes/", "create_volume"),
])
def test_answer_held_while_its_worker_is_frozen(clean_stack, route, step):
    """Issue 8's reproduction: an answer that arrives long after its step lost the lock duplicates nothing."""
    stack = clean_stack
    host = free_hosts(stack, 1)[0]
    held = lambda: stack.sim("GET", "/_sim/stats")["answers_held"]  # noqa: E731
    before = held()
    stack.sim("POST", "/_sim/faults", json={"routes": {route: {"hold_s": 3, "times": 1}}})
    rv = stack.api("POST", "/api/v1/warmpool/provision",
                   json={"machine_id": 31, "host_machine_id": host, "gpu_name": "RTX_4090"})
    wait_step(stack, [rv.json["task_id"]], step)
    wait_until(lambda: held() > before, message=f"the call to {route} to be held")
    freeze_and_take_over(stack, rv.json["task_id"], 31)
    assert labels(stack)["warmpool-acme-31-primary"] == 1 and labels(stack)["warmpool-acme-31-standby"] == 1
    assert stack.sim("GET", "/_sim/stats")["volumes_created_by_name"]["warmpool_acme_31_volume"] == 1
    assert_nothing_leaked(stack)


@pytest.mark.parametrize("operation, route, after", [
    ("failover", "PUT /api/v0/instances/{id}/", None),  # stop_primary's stop
    ("failover", "PUT /api/v0/instances/{id}/", "await_stopped"),  # start_standby's start
    ("failover", "DELETE /api/v0/instances/{id}/", None),  # retire_old_primary's destroy
    ("cleanup", "DELETE /api/v0/instances/{id}/", None),  # destroy_instances
    ("cleanup", "DELETE /api/v0/volumes/", None),  # delete_volume
], ids=["stop_primary", "start_standby", "retire_old_primary", "destroy_instances", "delete_volume"])
def test_a_worker_frozen_inside_a_mutating_call_is_fenced_out(clean_stack, operation, route, after):
    """Issue 8: SIGSTOP during every mutating step of a failover and a cleanup, then SIGCONT."""
    stack = clean_stack
    provisioned(stack, [41])
    standby = stack.pool(41)["standby_gpu_id"]
    held = lambda: stack.sim("GET", "/_sim/stats")["answers_held"]  # noqa: E731
    before = held()
    hold = {"routes": {route: {"hold_s": 3, "times": 1}}}
    if after is None:
        stack.sim("POST", "/_sim/faults", json=hold)
    if operation == "failover":
        task = stack.api("POST", "/api/v1/warmpool/failover/test/41").json["task_id"]
    else:
        task = stack.api("DELETE", "/api/v1/warmpool/cleanup/41").json["task_id"]
    if after is not None:
        wait_step(stack, [task], after)
        stack.sim("POST", "/_sim/faults", json=hold)
    wait_until(lambda: held() > before, message=f"the call to {route} to be held")
    settled = freeze_and_take_over(stack, task, 41, "active" if operation == "failover" else "disabled")
    if operation == "failover":
        assert settled["failover_count"] == 1 and settled["primary_gpu_id"] == standby
    else:
        assert (settled["primary_gpu_id"], settled["standby_gpu_id"], settled["volume_id"]) == (None, None, None)
    assert_nothing_leaked(stack)


def test_a_manual_failover_whose_worker_froze_before_its_first_step_is_resumed(clean_stack):
    """Issue 15: the API marks the pool `failover` when it accepts the test, so the healer resumes it under its
    task id even if no step ever ran."""
    stack = clean_stack
    provisioned(stack, [42])
    standby = stack.pool(42)["standby_gpu_id"]
    stack.worker.signal(signal.SIGSTOP)  # nothing consumes the first step now
    task = stack.api("POST", "/api/v1/warmpool/failover/test/42").json["task_id"]
    assert stack.pool(42)["state"] == "failover" and stack.pool(42)["op_id"] == task
    settled = freeze_and_take_over(stack, task, 42, ran_a_step=False)
    assert settled["failover_count"] == 1 and settled["primary_gpu_id"] == standby
    assert_nothing_leaked(stack)


def test_a_late_instance_list_racing_a_failover_changes_nothing(clean_stack):
    """Issue 8: the sweep's list answers arrive after the failover moved on; they must not degrade the pool,
    fail it over again, or stop anything."""
    stack = clean_stack
    provisioned(stack, [43])
    task = stack.api("POST", "/api/v1/warmpool/failover/test/43").json["task_id"]
    wait_step(stack, [task], "await_standby")
    # the next few list answers (the sweep's among them) are computed now and delivered after the failover
    stack.sim("POST", "/_sim/faults", json={"routes": {"GET /api/v1/instances/": {"hold_s": 2, "times": 4}}})
    assert stack.wait_task(task, timeout=60)["state"] == "SUCCESS"
    settled = stack.wait_state(43, "active", timeout=60)
    wait_until(lambda: stack.sim("GET", "/_sim/faults")["routes"] == {}, timeout=30,
               message="every held list answer to be taken")
    stack.wait_sweeps(2, timeout=30)  # the sweeps that got held answers have judged them, and one more after
    kinds = [e["event"] for e in stack.store.events("acme:43")]
    assert not {"degraded", "split_brain_resolved", "primary_failed"} & set(kinds), kinds
    assert stack.pool(43)["failover_count"] == 1 and stack.pool(43)["primary_gpu_id"] == settled["primary_gpu_id"]
    assert_nothing_leaked(stack)


@pytest.mark.parametrize("route", ["PUT /api/v0/asks/{id}/", "PUT /api/v0/volumes/"])
def test_a_lost_create_answer_is_adopted(clean_stack, route):
    """The provider carries a create out and the answer is lost (a 504): the step finds it, creates no second."""
    stack = clean_stack
    host = free_hosts(stack, 1)[0]
    stack.sim("POST", "/_sim/faults", json={"routes": {route: {"lose_answer": 1, "times": 1}}})
    rv = stack.api("POST", "/api/v1/warmpool/provision",
                   json={"machine_id": 32, "host_machine_id": host, "gpu_name": "RTX_4090"})
    assert stack.wait_task(rv.json["task_id"], timeout=60)["state"] == "SUCCESS"
    assert labels(stack)["warmpool-acme-32-primary"] == 1 and labels(stack)["warmpool-acme-32-standby"] == 1
    assert stack.sim("GET", "/_sim/stats")["volumes_created_by_name"]["warmpool_acme_32_volume"] == 1
    assert_nothing_leaked(stack)


# -- 6. the standby cannot start ------------------------------------------------------------------------


def test_standby_without_gpu_ends_degraded(clean_stack):
    stack = clean_stack
    provisioned(stack, [91])
    pool = stack.pool(91)
    stack.sim("POST", f"/_sim/hosts/{pool['host_machine_id']}/rent_out")
    # the sweep marks the pool degraded before any failure: its standby could no longer start
    degraded = stack.wait_state(91, "degraded", timeout=30)
    assert "no free GPU" in degraded["error_message"]
    fail_primary(stack, 91)
    wait_until(lambda: stack.pool(91)["fallback"] == "cpu_standby", timeout=30, message="the failover to give up")
    pool = stack.wait_state(91, "degraded", timeout=30)
    assert pool["fallback"] == "cpu_standby" and pool["failover_count"] == 0, \
        [(e["event"], e["message"]) for e in stack.store.events("acme:91")]
    events = [e["event"] for e in stack.store.events("acme:91")]
    assert "standby_given_up" in events and "failover_started" in events
    assert stack.running("warmpool-acme-91-") == []


def test_a_failed_standby_is_replaced_before_it_is_needed(clean_stack):
    stack = clean_stack
    provisioned(stack, [92])
    pool = stack.pool(92)
    lost = pool["standby_gpu_id"]
    stack.sim("POST", f"/_sim/instances/{lost}/fail")  # stopped, then offline: it could never start
    replaced = wait_until(lambda: (p := stack.pool(92))["standby_gpu_id"] not in (None, lost) and p,
                          timeout=30, message="a new standby")
    pool_now = stack.wait_state(92, "active")
    assert pool_now["standby_gpu_id"] == replaced["standby_gpu_id"] and pool_now["standby_state"] == "stopped"
    assert pool_now["primary_gpu_id"] == pool["primary_gpu_id"] and pool_now["failover_count"] == 0
    assert pool_now["host_machine_id"] == pool["host_machine_id"]
    lost_event, = [e for e in stack.store.events("acme:92") if e["event"] == "standby_lost"]
    assert lost_event["standby_gpu_id"] == lost and lost_event["status"] == "offline"
    assert lost not in {i["id"] for i in stack.ledger()["instances"]}
    wait_until(lambda: any(i["id"] == pool_now["standby_gpu_id"] and i["actual_status"] == "stopped"
                           for i in stack.ledger()["instances"]), message="the new standby to show stopped")
    assert_nothing_leaked(stack)


# -- 7. two beats ------------------------------------------------------------------------------------------


def test_two_beats(clean_stack, tmp_path):
    from tests.conftest import Worker

    stack = clean_stack
    second = Worker("beat", "-s", str(tmp_path / "schedule"), log=tmp_path / "beat2.log").start()
    try:
        provisioned(stack, [101, 102])
        fail_primary(stack, 101)
        wait_until(lambda: stack.pool(101)["failover_count"] == 1 and stack.pool(101)["state"] == "active",
                   timeout=30)
        stack.wait_sweeps(5)  # more sweeps with both beats running
    finally:
        second.stop()
    assert stack.pool(101)["failover_count"] == 1 and stack.pool(102)["failover_count"] == 0
    assert all(count == 1 for name, count in labels(stack).items() if "primary" in name)
    assert_nothing_leaked(stack)


# -- 8. a whole host fails ---------------------------------------------------------------------------------


def test_host_failure_past_the_cap_is_confirmed_again_never_deferred(clean_stack):
    stack = clean_stack
    stack.worker.stop()
    stack.worker = stack.new_worker("w-capped", FAILOVERS_PER_MINUTE="2")
    rv = stack.api("GET", "/api/v1/warmpool/hosts?gpu_name=RTX_4090&min_gpus=4")
    host = rv.json["hosts"][0]["machine_id"]
    machines = [111, 112, 113]
    for machine in machines:  # three pools on one host, one elsewhere
        rv = stack.api("POST", "/api/v1/warmpool/provision",
                       json={"machine_id": machine, "host_machine_id": host, "volume_size": 10})
        op = stack.wait_task(rv.json["task_id"])
        assert op["state"] == "SUCCESS", (op, stack.store.events(f"acme:{machine}"))
    provisioned(stack, [114])
    stack.sim("POST", f"/_sim/hosts/{host}/fail")
    for machine in machines:
        stack.wait_state(machine, "degraded", timeout=60)
    wait_until(lambda: any(e["event"] == "failover_cap_exceeded" for m in machines
                           for e in stack.store.events(f"acme:{m}")), timeout=30, message="a failure past the cap")
    ops = map(stack.store.get_op, (k.removeprefix(keys.op("")) for k in stack.redis.scan_iter(keys.op("*"))))
    failovers = [op for op in ops if op["operation"] == "failover"]
    assert {op["machine_id"] for op in failovers} == set(machines)  # past the cap: confirmed again, not deferred
    assert not any(e["event"] == "failover_cancelled" for m in machines for e in stack.store.events(f"acme:{m}"))
    other = stack.pool(114)
    assert other["state"] == "active" and other["failover_count"] == 0
    assert stack.running(f"warmpool-acme-{114}-")


# -- the reconciler ---------------------------------------------------------------------------------------


def test_reconciler_reports_then_destroys_orphans(clean_stack):
    stack = clean_stack
    provisioned(stack, [121])
    host = free_hosts(stack, 1)[0]
    key = {"Authorization": "Bearer sim-key"}
    stack.sim("POST", "/_sim/rate_limits", json={})  # this test's own calls are not the service's to pace
    # what a crashed attempt could leave: an instance and a volume with our labels, no pool behind them
    orphan = stack.sim("PUT", f"/api/v0/asks/{host * 100 + 1}/", headers=key, json={
        "image": "x", "disk": 10, "label": "warmpool-acme-999-primary", "target_state": "stopped"})["new_contract"]
    volume = int(stack.sim("PUT", "/api/v0/volumes/", headers=key, json={
        "size": 10, "id": host * 100 + 50, "name": "warmpool_acme_998_volume"})["volume_name"][2:])
    wait_until(lambda: {e.get("resource_id") for pid in ("acme:999", "acme:998")
                        for e in stack.store.events(pid) if e["event"] == "orphan"} == {orphan, volume},
               timeout=30, message="the orphans to be reported")
    assert stack.store.metrics()["orphans"] == 2
    assert {orphan} <= {i["id"] for i in stack.ledger()["instances"]}  # reported, not destroyed
    stack.worker.stop()
    stack.worker = stack.new_worker("w-reconcile", RECONCILE_DESTROY_ORPHANS="true", RECONCILE_GRACE="0")
    wait_until(lambda: orphan not in {i["id"] for i in stack.ledger()["instances"]}
               and volume not in {v["id"] for v in stack.ledger()["volumes"]}, timeout=30,
               message="the orphans to be destroyed")
    assert stack.pool(121)["state"] == "active"
    assert_nothing_leaked(stack)
