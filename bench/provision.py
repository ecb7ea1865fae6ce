"""Benchmark 4: 200 provisions at once under Vast-like rate limits.

The simulator enforces per-route minimum intervals (``POST /_sim/rate_limits``): Vast's
documented ones (app/settings.py VAST_RATE_LIMITS) times ``rate_scale``, so the run takes a
minute or two. The service gets the same intervals through VAST_RATE_LIMITS. 200
``POST /api/v1/warmpool/provision`` go to gunicorn at once, for 200 machines spread over the
hosts with free GPUs (each host keeps one GPU free).

Figures: 429s the simulator sent (the service is the client; target zero) and the total time
(first POST to the last provision ended) over the time the limits impose: per endpoint, the
calls one provision needs when nothing goes wrong x 200 x the interval; the largest of these
is the bound (endpoints are limited independently, so they can overlap).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import requests

from bench.core import Result, say
from bench.stack import API_KEYS, ROUTES, Stack

PROVISIONS = 200
FIRST_MACHINE = 500_001
# calls of each endpoint one provision makes when nothing goes wrong (tasks/provision.py):
# create_volume; create primary + standby from one offer search; at least one look at the
# primary to see it running
# (a first attempt does not look for what an earlier one made: tasks/provision.py create_once)
CALLS_PER_PROVISION = {"volumes": 1, "create_instance": 2, "show_instance": 1, "search_offers": 1}


def spread(stack: Stack, count: int, exclude: set[int] = frozenset()) -> list[int]:
    """Host machine ids for ``count`` pools, leaving every host one free GPU (and ``exclude`` alone)."""
    hosts = sorted((h for h in stack.sim("GET", "/_bench/hosts")["hosts"] if h["machine_id"] not in exclude),
                   key=lambda h: -h["free_gpus"])
    slots = []
    for host in hosts:
        slots += [host["machine_id"]] * max(0, host["free_gpus"] - 1)
    if len(slots) < count:
        raise RuntimeError(f"only {len(slots)} free GPU slots in the simulator for {count} pools")
    # round-robin over hosts, so consecutive provisions hit different hosts
    by_host: dict[int, list[int]] = {}
    for m in slots:
        by_host.setdefault(m, []).append(m)
    out = []
    while len(out) < count:
        for m in list(by_host):
            if by_host[m] and len(out) < count:
                out.append(by_host[m].pop())
    return out


def py_spy() -> str | None:
    """py-spy, if installed (``pip install py-spy``, anywhere; or PY_SPY=/path/to/py-spy)."""
    return os.environ.get("PY_SPY") or shutil.which("py-spy")


def worker_threads(pid: int) -> dict:
    """What the worker's threads are doing now (py-spy dump): counts by where they are."""
    tool = py_spy()
    if not tool:
        return {}
    out = subprocess.run([tool, "dump", "--pid", str(pid), "--nonblocking"], capture_output=True, text=True,
                         timeout=30).stdout
    counts: dict[str, int] = {}
    for thread in re.split(r"\n(?=Thread )", out):
        if not thread.startswith("Thread "):
            continue
        if "throttle (app/runtime.py" in thread:
            where = "sleeping for a rate slot (throttle)"
        elif "_read_from_socket" in thread or "recv_into" in thread or "readinto" in thread:
            where = "waiting on a socket (provider or Redis)"
        elif "_worker (concurrent" in thread or "body (celery" in thread or "get (queue" in thread:
            where = "idle, waiting for a task"
        else:
            where = "other"
        counts[where] = counts.get(where, 0) + 1
    return counts


@dataclass
class Watch:
    """What the wait for the provisions saw, in seconds since the first POST (``t0``)."""

    t0: float
    ended: dict[str, tuple[str, float]] = field(default_factory=dict)  # op id -> (SUCCESS or FAILURE, when)
    timeline: list[tuple[int, dict[str, int]]] = field(default_factory=list)  # provider calls so far, every 10 s
    dumps: list[tuple[int, dict]] = field(default_factory=list)  # py-spy dumps of the worker (the first 3)


def run(stack: Stack, rate_scale: float = 0.1, time_scale: float = 0.02, timeout: float = 300.0) -> list[Result]:
    limits = start_limited_simulator(stack, rate_scale, time_scale)
    hosts = spread(stack, PROVISIONS)
    say(f"  {PROVISIONS} pools over {len(set(hosts))} hosts")
    # steps wait on the shared rate budget in their thread: one thread per provision in flight
    worker = stack.start_worker(concurrency=PROVISIONS)
    api, url = stack.start_api()

    before = stack.sim_requests()
    responses_before = stack.sim("GET", "/_bench/responses")
    t0 = time.time()
    answers = post_provisions(url, hosts)
    t_posted = time.time() - t0
    codes = dict(Counter(code for code, _ in answers))
    op_ids = [task for _, task in answers if task]
    say(f"  {PROVISIONS} POSTs answered in {t_posted:.2f} s: {codes}")

    watch = await_provisions(stack, op_ids, worker.pid, before, t0, timeout)
    finished = len(watch.ended) == len(op_ids) == PROVISIONS
    after = stack.sim_requests()
    responses_after = stack.sim("GET", "/_bench/responses")
    stack.stop_proc(api)
    stack.stop_all_but_redis()

    by_status = changed(responses_after, responses_before)
    raw = {"rate_scale": rate_scale, "limits_s": limits, "post_codes": codes, "posts_answered_in_s": t_posted,
           "outcomes": dict(Counter(state for state, _ in watch.ended.values())),
           "total_s": max((t for _, t in watch.ended.values()), default=float("nan")),
           **bounds(limits, by_status),
           "calls_by_route": changed(after["requests"], before["requests"]), "responses_by_route_status": by_status,
           "timeline": watch.timeline, "worker_thread_dumps": watch.dumps,
           "rate_limited_429": after["rate_limited"] - before["rate_limited"], "finished": finished}
    report(raw)
    return results(raw)


def start_limited_simulator(stack: Stack, rate_scale: float, time_scale: float) -> dict[str, float]:
    """A fresh simulator and service settings with Vast's intervals x ``rate_scale``; those intervals."""
    from app.settings import VAST_RATE_LIMITS

    stack.stop_all_but_redis()
    stack.redis.flushdb()
    stack.start_sim(time_scale, seed=1)
    limits = {endpoint: round(seconds * rate_scale, 4) for endpoint, seconds in VAST_RATE_LIMITS.items()}
    stack.limit_sim(limits)
    stack.apply_env(VAST_RATE_LIMITS=json.dumps(limits), PROVIDER_POLL_INTERVAL=0.05, HEAL_INTERVAL=3600,
                    INSTANCE_READY_TIMEOUT=300, LOCK_TTL=60)
    say(f"  rate limits (Vast's x {rate_scale}): {limits}")
    return limits


def post_provisions(url: str, hosts: list[int]) -> list[tuple[int, str | None]]:
    """The PROVISIONS POSTs, 50 at a time: each one's status code and operation id."""
    session_headers = {"Authorization": f"Bearer {API_KEYS['bench']}"}

    def post(n):
        body = {"machine_id": FIRST_MACHINE + n, "host_machine_id": hosts[n], "volume_size": 1, "disk_size": 8}
        r = requests.post(url + "/api/v1/warmpool/provision", json=body, headers=session_headers, timeout=60)
        return r.status_code, (r.json() or {}).get("task_id")

    with ThreadPoolExecutor(50) as pool:
        return list(pool.map(post, range(PROVISIONS)))


def await_provisions(stack: Stack, op_ids: list[str], worker_pid: int, before: dict, t0: float,
                     timeout: float) -> Watch:
    """Until every operation ended or ``timeout``; sampling the provider calls every 10 s, a progress line every
    15 s."""
    watch = Watch(t0)
    store = stack.store()
    deadline = time.time() + timeout
    last_report = last_sample = time.time()
    while len(watch.ended) < len(op_ids) and time.time() < deadline:
        if time.time() - last_sample >= 10:
            last_sample = time.time()
            sample(stack, watch, before, worker_pid)
        for op_id in op_ids:
            if op_id not in watch.ended:
                op = store.get_op(op_id)
                if op and op["state"] in ("SUCCESS", "FAILURE"):
                    watch.ended[op_id] = (op["state"], time.time() - t0)
        if time.time() - last_report > 15:
            say(f"    {time.time() - t0:.0f} s: {len(watch.ended)}/{len(op_ids)} provisions ended, "
                f"{stack.sim_requests()['rate_limited'] - before['rate_limited']} 429s so far")
            last_report = time.time()
        time.sleep(0.1)
    return watch


def sample(stack: Stack, watch: Watch, before: dict, worker_pid: int) -> None:
    """The provider calls so far by endpoint (and, for the first three samples, what the worker's threads do)."""
    requests_now = stack.sim_requests()["requests"]
    watch.timeline.append((round(time.time() - watch.t0), {
        endpoint: sum(requests_now.get(r, 0) - before["requests"].get(r, 0) for r in routes)
        for endpoint, routes in ROUTES.items()}))
    if len(watch.dumps) < 3 and py_spy():
        watch.dumps.append((round(time.time() - watch.t0), worker_threads(worker_pid)))


def changed(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    """The counts that moved between two snapshots, by how much."""
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


def bounds(limits: dict[str, float], by_status: dict[str, int]) -> dict:
    """The time the limits impose: per endpoint, the calls needed x the interval (the largest is the bound); and
    the same from the calls the simulator actually answered (not 429)."""
    needed = {e: CALLS_PER_PROVISION[e] * PROVISIONS * limits[e] for e in CALLS_PER_PROVISION if limits.get(e)}
    answered = {}
    for endpoint, routes in ROUTES.items():
        ok_calls = sum(v for k, v in by_status.items() if k.rsplit(" ", 1)[0] in routes and not k.endswith(" 429"))
        if ok_calls and limits.get(endpoint):
            answered[endpoint] = {"calls": ok_calls, "seconds": round(ok_calls * limits[endpoint], 2)}
    return {"bound_s": max(needed.values()), "bound_by_endpoint_s": needed,
            "bound_from_answered_calls_s": (max(v["seconds"] for v in answered.values()) if answered
                                            else float("nan")),
            "answered_calls": answered}


def report(raw: dict) -> None:
    """The run's figures, as the benchmark prints them under its results."""
    limits, needed = raw["limits_s"], raw["bound_by_endpoint_s"]
    binding = max(needed, key=needed.get)
    say("  provider calls so far, by endpoint, every 10 s (shows which endpoints overlap in time):")
    for at, counts in raw["timeline"]:
        say(f"    {at:4d} s  " + "  ".join(f"{e} {c:4d}" for e, c in counts.items() if e in CALLS_PER_PROVISION))
    for at, threads in raw["worker_thread_dumps"]:
        say(f"  py-spy dump of the worker at {at} s: {threads}")
    say(f"  provider calls by route: {raw['calls_by_route']}")
    say(f"  responses by route and status: {raw['responses_by_route_status']}")
    say(f"  outcomes {raw['outcomes']}; total {raw['total_s']:.1f} s; bound {raw['bound_s']:.1f} s ({binding}: "
        f"{CALLS_PER_PROVISION[binding]} x {PROVISIONS} x {limits[binding]} s); from the calls actually answered "
        f"{raw['bound_from_answered_calls_s']:.1f} s {raw['answered_calls']}; 429s {raw['rate_limited_429']}")


def results(raw: dict) -> list[Result]:
    """The two figures with their targets: no 429 reached the service; the total within 1.2 x the bound."""
    total, bound, rate_limited = raw["total_s"], raw["bound_s"], raw["rate_limited_429"]
    succeeded = raw["outcomes"].get("SUCCESS", 0)
    ratio = total / bound
    all_ok = raw["finished"] and succeeded == PROVISIONS
    return [
        Result("provision", "429s seen by the service (simulator)", rate_limited, "", "== 0",
               rate_limited == 0, raw),
        Result("provision", f"{PROVISIONS} provisions: total / rate-limit bound", ratio, "x", "<= 1.2",
               ratio <= 1.2 and all_ok, {"total_s": total, "bound_s": bound, "succeeded": succeeded}),
    ]
