"""Benchmark 5: memory with 10,000 pools tracked, and a leak check across 400 sweeps.

- Worker: VmRSS of the Celery worker (threads pool, one process) when it starts, and after
  beat has had it sweep, heal and reconcile 10,000 pools for a while.
- API: VmRSS of each gunicorn worker when it starts, and after every pool's status was read
  once and ``GET /warmpool/pools`` listed all 10,000.
- Leak check: ``tasks.sweep.sweep`` called in this process against 10,000 pools (simulator
  holding 20,000 instances) ``sweeps`` times; this process's RSS before and after, and
  tracemalloc's top growth over the last 100 sweeps.
"""

from __future__ import annotations

import gc
import os
import time
import tracemalloc
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import requests

from bench.core import Result, say
from bench.stack import API_KEYS, Stack, children, rss_kb
from bench.sweep import BIG, ensure_big_state, in_process_sweep

MB = 1024.0


def worker_rss(stack: Stack, seconds: float = 50.0, every: float = 10.0) -> dict:
    """The worker's RSS every ``every`` s while beat has it sweep, heal and reconcile 10,000 pools
    (it climbs for ~40 s as 16 threads each parse 20,000-label answers, then levels off)."""
    stack.apply_env(HEALTH_CHECK_INTERVAL=1, CAPACITY_CHECK_INTERVAL=5, HEAL_INTERVAL=5, RECONCILE_INTERVAL=5,
                    VAST_RATE_LIMITS="{}")
    worker = stack.start_worker()
    time.sleep(1)
    start = rss_kb(worker.pid)
    before = stack.sim_requests()["requests"].get("GET /api/v1/instances/", 0)
    beat = stack.start_beat()
    series = []
    for _ in range(int(seconds / every)):
        time.sleep(every)
        series.append(round(rss_kb(worker.pid) / MB, 1))
    sweeps = stack.sim_requests()["requests"].get("GET /api/v1/instances/", 0) - before
    stack.stop_proc(beat)
    stack.stop_proc(worker)
    return {"start_mb": start / MB, "series_mb": series, "every_s": every, "after_mb": series[-1],
            "last_20s_growth_mb": round(series[-1] - series[-3], 1), "seconds": seconds, "sweeps": sweeps}


def api_rss(stack: Stack) -> dict:
    api, url = stack.start_api()
    workers = children(api.pid)
    start = {pid: rss_kb(pid) for pid in workers}
    headers = {"Authorization": f"Bearer {API_KEYS['bench']}"}

    def read(chunk):
        with requests.Session() as session:
            for machine in chunk:
                session.get(f"{url}/api/v1/warmpool/status/{machine}", headers=headers, timeout=30).raise_for_status()

    machines = list(range(1, BIG + 1))
    t = time.time()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(read, [machines[i::8] for i in range(8)]))
    statuses_s = time.time() - t
    t = time.time()
    listing = requests.get(f"{url}/api/v1/warmpool/pools", headers=headers, timeout=120)
    pools_s = time.time() - t
    count = listing.json()["count"]
    after = {pid: rss_kb(pid) for pid in workers}
    stack.stop_proc(api)
    return {"workers": len(workers), "start_mb": {p: v / MB for p, v in start.items()},
            "after_mb": {p: v / MB for p, v in after.items()}, "max_after_mb": max(after.values()) / MB,
            "status_reads": BIG, "status_reads_s": statuses_s, "pools_listed": count,
            "pools_list_s": pools_s, "pools_list_bytes": len(listing.content)}


def leak_check(stack: Stack, sweeps: int) -> dict:
    stack.apply_env(HEALTH_CHECK_INTERVAL=5, CAPACITY_CHECK_INTERVAL=1e9, VAST_RATE_LIMITS="{}")
    me = os.getpid()
    traced = min(50, sweeps // 10)
    for _ in range(20):
        in_process_sweep(stack)
    gc.collect()
    start = rss_kb(me)
    t = time.time()
    results = set()
    for n in range(sweeps - traced):
        results.add(in_process_sweep(stack)[0])
    gc.collect()
    middle = rss_kb(me)
    untraced_s = time.time() - t
    tracemalloc.start(1)  # one frame: deeper tracebacks make a 20,000-label JSON parse crawl
    first = tracemalloc.take_snapshot()
    for _ in range(traced):
        results.add(in_process_sweep(stack)[0])
    # urllib.parse keeps the last 128 URLs it split (bounded): every list call's URL differs, so the
    # entries traced since the first snapshot would read as growth while untraced ones they evict do not
    urllib.parse.clear_cache()
    gc.collect()
    second = tracemalloc.take_snapshot()
    tracemalloc.stop()
    end = rss_kb(me)
    elapsed = time.time() - t
    diff = second.compare_to(first, "lineno")
    growth = sum(d.size_diff for d in diff)
    top = [f"{d.traceback[0].filename.replace('/work/main/', '')}:{d.traceback[0].lineno} "
           f"{d.size_diff / 1024:+.1f} KiB ({d.count_diff:+d} blocks)" for d in diff[:6]]
    return {"sweeps": sweeps, "seconds": elapsed, "results": sorted(results), "untraced_s": untraced_s, "rss_start_mb": start / MB,
            "rss_after_untraced_mb": middle / MB, "rss_end_mb": end / MB, "rss_growth_mb": (end - start) / MB,
            "rss_growth_untraced_mb": (middle - start) / MB, "traced_sweeps": traced,
            "traced_growth_kib": growth / 1024, "tracemalloc_top": top}


def run(stack: Stack, sweeps: int = 400) -> list[Result]:
    ensure_big_state(stack)
    w = worker_rss(stack)
    say(f"  worker RSS: {w['start_mb']:.1f} MB at start, then every {w['every_s']:.0f} s {w['series_mb']} MB; "
        f"{w['sweeps']} sweeps "
        f"of {BIG} pools ({w['seconds']:.0f} s of beat: sweep, heal, reconcile)")
    a = api_rss(stack)
    say(f"  API RSS (gunicorn, {a['workers']} workers): start "
        f"{', '.join(f'{v:.1f}' for v in a['start_mb'].values())} MB; after {a['status_reads']} status reads "
        f"({a['status_reads_s']:.1f} s) and GET /pools of {a['pools_listed']} pools ({a['pools_list_s']:.2f} s, "
        f"{a['pools_list_bytes'] / 1e6:.1f} MB): {', '.join(f'{v:.1f}' for v in a['after_mb'].values())} MB")
    leak = leak_check(stack, sweeps)
    say(f"  leak check: {leak['sweeps']} in-process sweeps of {BIG} pools in {leak['seconds']:.0f} s "
        f"({leak['sweeps'] - leak['traced_sweeps']} untraced in {leak['untraced_s']:.0f} s) "
        f"({leak['results']}); RSS {leak['rss_start_mb']:.1f} -> {leak['rss_after_untraced_mb']:.1f} "
        f"-> {leak['rss_end_mb']:.1f} MB (last {leak['traced_sweeps']} traced: "
        f"{leak['traced_growth_kib']:+.1f} KiB net)")
    say("  tracemalloc top growth: " + "; ".join(leak["tracemalloc_top"]))
    # no growth: within 2 MB of RSS (allocator noise) and under 64 KiB net traced over the traced sweeps
    no_leak = leak["rss_growth_untraced_mb"] <= 2.0 and leak["traced_growth_kib"] < 64
    return [
        Result("memory", f"worker RSS, {BIG} pools tracked", w["after_mb"], "MB", "reported", None, w),
        Result("memory", f"API worker RSS, {BIG} pools tracked", a["max_after_mb"], "MB", "reported", None, a),
        Result("memory", f"RSS growth over {leak['sweeps'] - leak['traced_sweeps']} sweeps",
               leak["rss_growth_untraced_mb"], "MB", "<= 2 MB", no_leak, leak),
        Result("memory", f"traced growth, last {leak['traced_sweeps']} sweeps",
               leak["traced_growth_kib"], "KiB", "< 64 KiB", leak["traced_growth_kib"] < 64, {}),
    ]
