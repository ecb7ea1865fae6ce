"""Benchmark 3: ``GET /api/v1/warmpool/status/<id>`` throughput over ``GET /healthz``.

Both on the same gunicorn (the Procfile's shape: gthread, 2 workers x 16 threads), with the
same load tool on loopback, while 10,000 pools are tracked. The load tool is ``wrk`` when it
is installed (``apt-get install wrk``), else a keep-alive load generator in this package
(threads of ``http.client`` connections). Status requests cycle over the 10,000 machine ids.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from bench.core import Result, percentile, say
from bench.stack import API_KEYS, Stack, children
from bench.sweep import BIG, ensure_big_state

AUTH = f"Bearer {API_KEYS['bench']}"

WRK_SCRIPT = """
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "/api/v1/warmpool/status/" .. (1 + counter %% %d), {["Authorization"] = "%s"})
end
"""


def wrk(url: str, path: str, duration: float, threads: int, connections: int) -> dict:
    script = None
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{int(duration)}s", "--latency",
               "-H", f"Authorization: {AUTH}"]
    if path == "status":
        script = Path(tempfile.mkstemp(suffix=".lua")[1])
        script.write_text(WRK_SCRIPT % (BIG, AUTH))
        command += ["-s", str(script)]
        target = url + "/api/v1/warmpool/status/1"
    else:
        target = url + path
    out = subprocess.run(command + [target], capture_output=True, text=True, timeout=duration + 30).stdout
    if script:
        script.unlink()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    latency = {q: _ms(m.group(1), m.group(2)) for q, m in
               ((q, re.search(rf"^\s+{q}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)) for q in ("50", "90", "99")) if m}
    total = int(re.search(r"(\d+) requests in", out).group(1))
    return {"tool": "wrk", "rps": rps, "requests": total, "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
            "p50_ms": latency.get("50"), "p90_ms": latency.get("90"), "p99_ms": latency.get("99")}


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def pyload(url: str, path: str, duration: float, threads: int) -> dict:
    """Keep-alive load from ``threads`` threads, each with one http.client connection."""
    parts = urlsplit(url)
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors = [0] * threads
    stop_at = time.monotonic() + duration

    def worker(n):
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        i = n
        while time.monotonic() < stop_at:
            i += threads
            target = f"/api/v1/warmpool/status/{1 + i % BIG}" if path == "status" else path
            t = time.perf_counter()
            conn.request("GET", target, headers={"Authorization": AUTH})
            response = conn.getresponse()
            response.read()
            latencies[n].append(time.perf_counter() - t)
            if response.status != 200:
                errors[n] += 1

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    started = time.monotonic()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.monotonic() - started
    flat = [x for lat in latencies for x in lat]
    return {"tool": "python http.client", "rps": len(flat) / elapsed, "requests": len(flat), "non_2xx": sum(errors),
            "p50_ms": percentile(flat, 50) * 1000, "p90_ms": percentile(flat, 90) * 1000,
            "p99_ms": percentile(flat, 99) * 1000}


def load(url: str, path: str, duration: float) -> dict:
    if shutil.which("wrk"):
        return wrk(url, path, duration, threads=2, connections=32)
    return pyload(url, path, duration, threads=16)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_seconds() -> float:
    with open("/proc/stat") as f:
        cpu = f.readline().split()[1:]
    return (int(cpu[3]) + int(cpu[4])) / os.sysconf("SC_CLK_TCK")


def measured(stack: Stack, api_pid: int, url: str, path: str, duration: float) -> dict:
    """One load run, plus the CPU each process used and the Redis commands per request."""
    pids = {"gunicorn workers": children(api_pid), "redis-server": [stack.redis_proc.pid]}
    before = {k: sum(cpu_seconds(p) for p in v) for k, v in pids.items()}
    idle0, redis0 = idle_seconds(), stack.redis.info("commandstats")
    started = time.monotonic()
    result = load(url, path, duration)
    elapsed = time.monotonic() - started
    redis1, idle1 = stack.redis.info("commandstats"), idle_seconds()
    result["cpu_s_per_1000_requests"] = {k: round(1000 * (sum(cpu_seconds(p) for p in v) - before[k])
                                                  / max(1, result["requests"]), 3) for k, v in pids.items()}
    result["machine_idle_share"] = round((idle1 - idle0) / (elapsed * (os.cpu_count() or 1)), 3)
    calls = {k: redis1[k]["calls"] - redis0.get(k, {}).get("calls", 0) for k in redis1}
    result["redis_commands_per_request"] = {k.removeprefix("cmdstat_"): round(v / max(1, result["requests"]), 2)
                                            for k, v in calls.items() if v > result["requests"] / 20}
    return result


def breakdown(n: int = 3000) -> dict:
    """Microseconds per call of what a status request does, in this process (test client, no
    network but Redis): to show where a status request's extra cost over /healthz goes."""
    from app import create_app
    from app.api.schemas import StatusSchema
    from app.runtime import store

    s = store()
    pool = s.get_pool("bench:7")
    client = create_app().test_client()
    headers = {"Authorization": AUTH}
    schema = StatusSchema()
    parts = {
        "flask GET /healthz": lambda: client.get("/healthz"),
        "flask GET /status/7": lambda: client.get("/api/v1/warmpool/status/7", headers=headers),
        "flask GET /status/<unknown> (404)": lambda: client.get(
            "/api/v1/warmpool/status/99999999", headers=headers),
        "one redis GET": lambda: s.r.get("wp:pool:bench:7"),
        "store.get_pool (GET + json.loads)": lambda: s.get_pool("bench:7"),
        "StatusSchema().dump(pool)": lambda: schema.dump(pool),
    }
    out = {}
    for name, fn in parts.items():
        for _ in range(200):
            fn()
        t = time.perf_counter()
        for _ in range(n):
            fn()
        out[name] = round((time.perf_counter() - t) / n * 1e6, 1)
    return out


def run(stack: Stack, duration: float = 8.0) -> list[Result]:
    ensure_big_state(stack)
    api, url = stack.start_api()
    if not shutil.which("wrk"):
        say("  wrk not found (apt-get install wrk): using the Python keep-alive load generator")
    load(url, "/healthz", 2)  # warm up both workers
    load(url, "status", 2)
    health = measured(stack, api.pid, url, "/healthz", duration)
    status = measured(stack, api.pid, url, "status", duration)
    for name, r in (("GET /healthz", health), ("GET /status/<id>", status)):
        say(f"  {name:17} {r['rps']:8.0f} req/s  p50 {r['p50_ms']:.2f} ms  p90 {r['p90_ms']:.2f} ms  "
            f"p99 {r['p99_ms']:.2f} ms  ({r['requests']} requests, {r['non_2xx']} not 2xx, {r['tool']})")
        say(f"    CPU s per 1000 requests {r['cpu_s_per_1000_requests']}, machine idle {r['machine_idle_share']:.0%}, "
            f"Redis commands per request {r['redis_commands_per_request']}")
    parts = breakdown()
    say("  in-process cost, microseconds per call: " + ", ".join(f"{k} {v}" for k, v in parts.items()))
    workers = children(api.pid)
    stack.api_workers = workers
    stack.stop_proc(api)
    ratio = status["rps"] / health["rps"]
    ok = ratio >= 0.7 and status["non_2xx"] == 0
    return [
        Result("api", "status req/s / healthz req/s", ratio, "x", ">= 0.7", ok, {"healthz": health, "status": status, "in_process_us": parts}),
        Result("api", "status p99 latency", status["p99_ms"], "ms", "reported", None, {}),
        Result("api", "healthz p99 latency", health["p99_ms"], "ms", "reported", None, {}),
    ]
