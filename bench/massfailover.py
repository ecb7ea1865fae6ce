"""``mass-failover``: the primaries of N pools fail in the same instant; how soon does the last run again?

On default settings (none of the service's settings in the environment, so Vast's documented rate
limits and the project's intervals), the simulator at time scale 1 enforcing the same intervals per
route, and the Procfile's processes (a failover worker ``-Q failover,health``, a provision worker,
beat). N pools are seeded straight into the simulator and Redis (``Stack.seed_pools``), their
priorities cycling 2, 1, 0, so the order by priority can be read off.

Vast allows one ``PUT /instances/<id>`` a second for start and stop together, and every pool needs a
stop and a start: the last standby cannot start before 2N x 1 s, and runs a start's time later. The
figure is the last standby running (seen in the simulator every 50 ms, outside the rate limits) over
that bound, with the simulator's start of a stopped instance measured in the same run.

With K accounts (``--accounts``), the pools are spread over K tenants, each on a Vast account of its own
(``VAST_ACCOUNTS``; the simulator limits each key apart), and the bound is each account's: 2N/K x 1 s + start.
"""

from __future__ import annotations

import json
import math
import threading
import time

from bench.core import Result, median, say
from bench.failover import FAILOVER_QUEUES, FAILOVER_THREADS, PROVISION_QUEUES, create_stopped, start_times
from bench.stack import Stack, wait_until

TENANT = "bench"
# with K accounts, tenant k > 0 is on an account of its own; tenant 0 on the default one (VAST_API_KEY)
ACCOUNT_KEYS = "bench-account-key-{}"


def tenants(accounts: int) -> list[str]:
    return [TENANT] + [f"{TENANT}{k}" for k in range(1, accounts)]
PRIORITIES = (2, 1, 0)  # pool n has PRIORITIES[n % 3]


def _standby_watch(stack: Stack, standbys: list[int], seen: dict[int, float], done: threading.Event) -> None:
    """Records when each standby first runs, polling the simulator every 50 ms outside its rate limits."""
    while not done.is_set() and len(seen) < len(standbys):
        statuses = stack.sim("POST", "/_bench/statuses", json={"ids": [i for i in standbys if i not in seen]})
        now = time.time()
        for instance_id, actual in statuses.items():
            if actual == "running":
                seen.setdefault(int(instance_id), now)
        done.wait(0.05)


def _settled(stack: Stack, pids: list[str]) -> bool:
    """Every pool active, unlocked, with a stopped standby and no failed sweep counted."""
    from app.store import keys

    store = stack.store()
    for pid in pids:
        pool = store.get_pool(pid)
        if not pool or pool["state"] != "active" or store.is_locked(pid) or not pool["standby_gpu_id"]:
            return False
    return not stack.redis.hlen(keys.HEALTH_FAILS)


def _spread(times: list[float]) -> dict:
    return {"first_s": round(min(times), 2), "median_s": round(median(times), 2), "last_s": round(max(times), 2)}


def fresh_stack(stack: Stack, cap: int | None, accounts: int = 1) -> None:
    """An empty simulator and Redis, and the Procfile's processes on default settings (one run leaves its
    pools replacing standbys, which would spend the next run's budget); ``cap``: FAILOVERS_PER_MINUTE instead;
    ``accounts`` > 1: a VAST_ACCOUNTS file (mode 600) putting each tenant but the first on its own account."""
    stack.stop_all_but_redis()
    stack.redis.flushdb()
    stack.reset_env(defaults=True)
    if cap is not None:
        stack.apply_env(FAILOVERS_PER_MINUTE=cap)
    if accounts > 1:
        path = stack.logs / "vast-accounts.json"
        path.write_text(json.dumps({tenant: ACCOUNT_KEYS.format(k) for k, tenant in enumerate(tenants(accounts))
                                    if k}))
        path.chmod(0o600)
        stack.apply_env(VAST_ACCOUNTS=str(path))
    stack.start_sim(1.0)
    stack.start_worker(FAILOVER_THREADS, FAILOVER_QUEUES, "failover-worker")
    stack.start_worker(32, PROVISION_QUEUES, "provision-worker")
    stack.start_beat()


def run_one(stack: Stack, pools: int, floor: float, cap: int | None = None, accounts: int = 1) -> dict:
    """Seed ``pools`` pools (spread over ``accounts`` tenants, each on its own Vast account), fail every primary
    at once, time each standby until it runs and each pool until its record names the standby as primary."""
    from app.pools import pool_id
    from app.runtime import settings
    from app.settings import VAST_RATE_LIMITS

    fresh_stack(stack, cap, accounts)
    priorities = {machine: PRIORITIES[n % len(PRIORITIES)] for n, machine in enumerate(range(1, pools + 1))}
    per_tenant = math.ceil(pools / accounts)
    rows = []  # [tenant, machine, host, primary, standby]: machines 1..N in blocks, one a tenant
    for k, tenant in enumerate(tenants(accounts)):
        first = 1 + k * per_tenant
        rows += [[tenant, *row] for row in stack.seed_pools(min(per_tenant, pools + 1 - first), tenant,
                                                             first_machine=first, priorities=priorities)]
    stack.limit_sim(VAST_RATE_LIMITS)
    pids = [pool_id(tenant, machine) for tenant, machine, *_ in rows]
    wait_until(lambda: _settled(stack, pids), timeout=120, interval=0.2, message="every pool settled")
    time.sleep(3 * settings().health_check_interval)  # a few clean sweeps before the failure
    wait_until(lambda: _settled(stack, pids), timeout=120, interval=0.2, message="every pool settled")

    standby_of = {pool_id(tenant, machine): standby for tenant, machine, _, _, standby in rows}
    pid_of = {machine: pool_id(tenant, machine) for tenant, machine, *_ in rows}
    seen: dict[int, float] = {}
    done = threading.Event()
    before = stack.sim_requests()
    t0 = time.time()
    stack.sim("POST", "/_bench/fail", json={"ids": [primary for *_, primary, _ in rows]})
    watch = threading.Thread(target=_standby_watch, args=(stack, list(standby_of.values()), seen, done), daemon=True)
    watch.start()
    promoted: dict[str, float] = {}

    def all_promoted():
        store = stack.store()
        for pid, standby in standby_of.items():
            if pid not in promoted and (store.get_pool(pid) or {}).get("primary_gpu_id") == standby:
                promoted[pid] = time.time() - t0
        return len(promoted) == len(pids)

    try:
        wait_until(all_promoted, timeout=60 + 20 * pools, interval=0.1, message="every standby promoted")
        wait_until(lambda: len(seen) == len(standby_of), timeout=30, interval=0.1, message="every standby seen running")
    finally:
        done.set()
        watch.join(timeout=5)
    after = stack.sim_requests()
    running = {pid: seen[standby] - t0 for pid, standby in standby_of.items()}
    interval = VAST_RATE_LIMITS["manage_instance"]
    bound = 2 * per_tenant * interval + floor  # each account's own: 2N/K PUTs
    by_priority = {}
    for priority in sorted(set(priorities.values()), reverse=True):
        times = [running[pid_of[m]] for m, p in priorities.items() if p == priority]
        by_priority[priority] = _spread(times)
    events = _event_counts(stack, pids)
    # past the per-minute cap (FAILOVERS_PER_MINUTE) a confirmed failure is asked about once more, never deferred
    past_cap = sum(1 for pid in pids if any(e["event"] == "failover_cap_exceeded" for e in stack.store().events(pid, 200)))
    result = {"past_cap": past_cap, "accounts": accounts,
              "timeline": _timelines(stack, pids, t0, running, promoted, priorities),
              "pools": pools, "bound_s": round(bound, 2), "ratio": round(max(running.values()) / bound, 3),
              **_spread(list(running.values())),
              "promoted": _spread(list(promoted.values())), "by_priority": by_priority, "events": events,
              "rate_limited_429": after["rate_limited"] - before["rate_limited"]}
    say(f"  N={pools}, K={accounts}: last standby running {result['last_s']:.1f} s after the failure, bound "
        f"{bound:.1f} s (2N/K x {interval:.0f} s + a {floor:.1f} s start) -> {result['ratio']:.2f} x; first {result['first_s']:.1f} s, "
        f"median {result['median_s']:.1f} s; promoted last {result['promoted']['last_s']:.1f} s")
    say(f"    by priority (first/median/last s): " + "; ".join(
        f"{p}: {v['first_s']:.1f}/{v['median_s']:.1f}/{v['last_s']:.1f}" for p, v in by_priority.items()))
    say(f"    events: {events}; 429s from the simulator: {result['rate_limited_429']}")
    say(f"    {past_cap} pools past the cap, each confirmed once more by its own call")
    return result


def _timelines(stack: Stack, pids: list[str], t0: float, running: dict[str, float], promoted: dict[str, float],
               priorities: dict[int, int]) -> list[dict]:
    """Each pool's way back, in seconds after the failure, in the order its standby ran: its events and, from its
    completed failover, when it was locked, fenced and seen running (what holds the last pools)."""
    from app.pools import epoch_seconds

    rows = []
    for pid in sorted(pids, key=running.__getitem__):
        events = list(reversed(stack.store().events(pid, 200)))
        row = {"pid": pid, "priority": priorities[int(pid.rpartition(":")[2])], "running_s": round(running[pid], 2),
               "promoted_s": round(promoted[pid], 2),
               "events": [[e["event"], round(epoch_seconds(e["at"]) - t0, 2)] for e in events]}
        completed = [e for e in events if e["event"] == "failover_completed"]
        if completed:
            phases, done = completed[-1]["phases"], completed[-1]
            lost = epoch_seconds(done["at"]) - done["recovery_time_seconds"]  # the failure's detection
            locked = lost - t0 + phases.get("detect", 0) + phases.get("lock", 0)
            fenced = locked + phases["fence_old_primary"]
            row.update(locked_s=round(locked, 2), fenced_s=round(fenced, 2),
                       seen_running_s=round(fenced + phases["start_standby"], 2))
        rows.append(row)
    return rows


def _event_counts(stack: Stack, pids: list[str]) -> dict[str, int]:
    """How many of each event the pools logged (a failure past the cap shows as failover_cap_exceeded)."""
    counts: dict[str, int] = {}
    store = stack.store()
    for pid in pids:
        for event in store.events(pid, limit=200):
            counts[event["event"]] = counts.get(event["event"], 0) + 1
    return dict(sorted(counts.items()))


def run(stack: Stack, sizes: tuple[int, ...] = (12, 40), cap: int | None = None,
        accounts: tuple[int, ...] = (1, 2)) -> list[Result]:
    """``cap``: FAILOVERS_PER_MINUTE for the service instead of its default (10), to see the pace of the rest
    apart from the cap's deferrals; ``accounts``: a run per size for each number of Vast accounts."""
    stack.stop_all_but_redis()
    stack.reset_env(defaults=True)
    stack.start_sim(1.0)
    config = stack.sim("GET", "/_sim/config")
    say(f"  simulator time_scale 1: start {config['start_seconds']:.1f} s, stop {config['stop_seconds']:.1f} s")
    hosts = sorted(stack.sim("GET", "/_bench/hosts")["hosts"], key=lambda h: -h["free_gpus"])
    floor = median(start_times(stack, create_stopped(stack, hosts[0]["machine_id"]), 1))
    say(f"  floor: the simulator's start of a stopped instance {floor:.2f} s")
    results = []
    for k in accounts:
        for pools in sizes:
            raw = run_one(stack, pools, floor, cap, k)
            raw.update(floor_s=floor, failovers_per_minute=cap)
            label = (f"N={pools}" + (f", K={k} accounts" if k > 1 else "")
                     + (f", FAILOVERS_PER_MINUTE={cap}" if cap is not None else ""))
            bound = "2N x 1 s + start" if k == 1 else "2N/K x 1 s + start"
            results.append(Result("mass-failover", f"{label}: last pool running / ({bound})", raw["ratio"],
                                  "x", "<= 1.3", raw["ratio"] <= 1.3, raw))
            results.append(Result("mass-failover", f"{label}: last pool running", raw["last_s"], "s", "-", None,
                                  {"bound_s": raw["bound_s"]}))
    return results
