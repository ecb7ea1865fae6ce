"""Benchmark 2: what the health sweep costs.

a) Provider calls per second (every call the service makes, from ``/_sim/stats`` deltas over
   a fixed window, with the worker and beat running) with 500 active pools over 5.
b) Wall time of one sweep over 10,000 pools (state seeded straight into Redis, the simulator
   holding 20,000 instances), ``tasks.sweep.sweep`` called in this process, against 25% of a
   5 s sweep interval. The simulator runs in its own process, so its time to answer counts as
   the provider's, not ours.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import time

from bench.core import Result, median, say
from bench.stack import Stack

BIG = 10_000
TIME_SCALE = 0.02


def calls_per_second(stack: Stack, pools: int, window: float, interval: float) -> dict:
    stack.stop_all_but_redis()
    stack.redis.flushdb()
    stack.start_sim(TIME_SCALE)
    stack.apply_env(HEALTH_CHECK_INTERVAL=interval, CAPACITY_CHECK_INTERVAL=5, HEAL_INTERVAL=5,
                    RECONCILE_INTERVAL=5, VAST_RATE_LIMITS="{}")
    stack.seed_pools(pools)
    stack.start_worker()
    stack.start_beat()
    time.sleep(3 * interval + 1)  # beat's first ticks
    before, t1 = stack.sim_requests()["requests"], time.time()
    time.sleep(window)
    after, t2 = stack.sim_requests()["requests"], time.time()
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}
    store = stack.store()
    states = {}
    for pool in store.get_pools(store.all_pool_ids()):
        states[pool["state"]] = states.get(pool["state"], 0) + 1
    stack.stop_all_but_redis()
    total = sum(delta.values())
    sweeps = delta.get("GET /api/v1/instances/", 0)
    return {"pools": pools, "window_s": round(t2 - t1, 2), "calls": total, "calls_per_s": total / (t2 - t1),
            "list_calls": sweeps, "by_route": delta, "states_after": states}


def unblock_sweep(stack: Stack) -> None:
    """Let the next in-process sweep run now: drop the once-per-interval guard keys."""
    from app.runtime import settings
    from app.store import keys

    slot = int(time.time() / settings().health_check_interval)
    stack.redis.delete(keys.SWEEP_RUNNING, *(keys.sweep_slot(n) for n in range(slot - 1, slot + 2)))


def ensure_big_state(stack: Stack) -> None:
    """10,000 active pools in Redis and 20,000 instances in the simulator (kept between benchmarks)."""
    from app.store import keys

    if (getattr(stack, "big_state", False) and stack.sim_proc and stack.sim_proc.alive()
            and stack.redis.scard(keys.POOLS) == BIG):
        return
    stack.stop_all_but_redis()
    stack.redis.flushdb()
    stack.start_sim(TIME_SCALE)
    t = time.time()
    stack.seed_pools(BIG)
    say(f"  seeded {BIG} pools ({stack.sim('GET', '/_bench/count')['instances']} simulator instances) "
        f"in {time.time() - t:.1f} s")
    stack.big_state = True


def in_process_sweep(stack: Stack):
    """One sweep, as beat would run it, in this process; returns (result, seconds)."""
    from tasks.sweep import sweep

    unblock_sweep(stack)
    t = time.perf_counter()
    result = sweep()
    return result, time.perf_counter() - t


def sweep_wall_time(stack: Stack, runs: int = 7) -> dict:
    ensure_big_state(stack)
    # in this process: a 5 s interval, and no capacity check enqueued by the sweep
    stack.apply_env(HEALTH_CHECK_INTERVAL=5, CAPACITY_CHECK_INTERVAL=1e9, VAST_RATE_LIMITS="{}")
    from app.runtime import vast
    from tasks.sweep import UNHEALTHY

    in_process_sweep(stack)  # warm: connections, imports
    times, results = [], []
    for _ in range(runs):
        result, seconds = in_process_sweep(stack)
        times.append(seconds)
        results.append(result)
    t = time.perf_counter()
    listing = vast().list_instances(UNHEALTHY)
    provider_s = time.perf_counter() - t
    profile = cProfile.Profile()
    unblock_sweep(stack)
    from tasks.sweep import sweep
    profile.runcall(sweep)
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(12)
    return {"runs": runs, "median_s": median(times), "max_s": max(times), "results": sorted(set(results)),
            "provider_list_call_s": provider_s, "label_counts": len(listing.label_counts),
            "profile_top": _trim_profile(out.getvalue())}


def _trim_profile(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls")), 0)
    return lines[start:start + 13]


def run(stack: Stack, window: float = 12.0, interval: float = 0.5) -> list[Result]:
    small = calls_per_second(stack, 5, window, interval)
    say(f"  5 pools: {small['calls']} provider calls in {small['window_s']} s = {small['calls_per_s']:.2f}/s "
        f"{small['by_route']}; pools {small['states_after']}")
    large = calls_per_second(stack, 500, window, interval)
    say(f"  500 pools: {large['calls']} provider calls in {large['window_s']} s = {large['calls_per_s']:.2f}/s "
        f"{large['by_route']}; pools {large['states_after']}")
    ratio = large["calls_per_s"] / small["calls_per_s"]
    wall = sweep_wall_time(stack)
    say(f"  sweep over {BIG} pools: median {wall['median_s']:.3f} s, max {wall['max_s']:.3f} s "
        f"({wall['runs']} runs, results {wall['results']}); the provider's list call alone "
        f"{wall['provider_list_call_s']:.3f} s")
    say("  cProfile of one sweep (cumulative):\n    " + "\n    ".join(wall["profile_top"]))
    budget = 0.25 * 5.0
    healthy = large["states_after"] == {"active": 500} and small["states_after"] == {"active": 5}
    return [
        Result("sweep", "provider calls/s, 500 pools / 5 pools", ratio, "x", "<= 1.5", ratio <= 1.5 and healthy,
               {"5": small, "500": large, "all_pools_stayed_active": healthy}),
        Result("sweep", f"sweep wall time, {BIG} pools / 5 s interval", wall["median_s"] / 5.0, "x", "< 0.25",
               wall["median_s"] < budget, wall),
    ]
