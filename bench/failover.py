"""Failover benchmarks on default settings, against a simulator at Vast-like delays.

Every figure here runs with none of the service's settings in its environment
(``Stack.reset_env(defaults=True)``: app/settings.py's defaults, which include Vast's
documented rate limits), the simulator at time scale 1 enforcing the same intervals per
route (``POST /_sim/rate_limits``), and the Procfile's processes: a failover worker
(``-Q failover,health``), a provision worker (``-Q provision``) and beat.

- ``failover-defaults``: from ``POST /_sim/instances/<primary>/fail`` to the pool record
  naming the standby as its primary (promote writes it once the standby runs), over the
  simulator's own start of a stopped instance, measured in the same run.
- ``killed-worker``: the failover worker killed (SIGKILL) while the standby starts and
  restarted at once; the seconds this adds over an undisturbed failover of the same run.
- ``failover-backlog``: a failover started behind a dozen queued provisions, over an
  undisturbed failover of the same run.

The three share one session (simulator, processes, one provisioned pool) when they run
one after another, so the pool is provisioned once; each also runs alone.
"""

from __future__ import annotations

import os
import signal
import threading
import time

from bench.core import Result, median, say
from bench.provision import spread
from bench.stack import ROUTES, Stack, procfile_threads, wait_until

TENANT = "bench"
MACHINE = 900_001
BACKLOG_FIRST_MACHINE = 910_001
BACKLOG = 12
AUTH = {"Authorization": "Bearer bench-key"}
ENDED = ("SUCCESS", "FAILURE")
# the Procfile's workers (its provision worker runs 100 threads; 32 is plenty for a dozen provisions)
FAILOVER_QUEUES, PROVISION_QUEUES = "failover,health", "provision"
FAILOVER_THREADS = procfile_threads("failover")


def status(stack: Stack, instance_id: int) -> str | None:
    """The simulator's actual_status of an instance, read outside the rate limits (None once it is gone)."""
    return (stack.sim("GET", f"/_bench/instances/{instance_id}")["instances"] or {}).get("actual_status")


def start_times(stack: Stack, instance_id: int, rounds: int) -> list[float]:
    """The simulator's start -> running of a stopped instance, ``rounds`` times, polled every 10 ms."""

    def until(wanted):
        wait_until(lambda: status(stack, instance_id) == wanted, timeout=120, interval=0.01,
                   message=f"the floor instance {wanted}")
        return time.time()

    until("stopped")
    times = []
    for _ in range(rounds):
        started = time.time()
        stack.sim("POST", f"/_bench/instances/{instance_id}/state", json={"state": "running"})
        times.append(until("running") - started)
        stack.sim("POST", f"/_bench/instances/{instance_id}/state", json={"state": "stopped"})
        until("stopped")
    return times


def create_stopped(stack: Stack, host: int) -> int:
    """A stopped instance on ``host`` to measure the simulator's start on (made before the rate limits are on)."""
    offers = stack.sim("POST", "/api/v0/bundles/", json={"machine_id": {"eq": host}, "num_gpus": {"eq": 1}})["offers"]
    return stack.sim("PUT", f"/api/v0/asks/{offers[0]['id']}/", json={
        "image": "bench/floor", "label": "bench-floor", "disk": 10, "target_state": "stopped"})["new_contract"]


class StandbyWatch(threading.Thread):
    """Watches the standby every 10 ms: when it starts (loading) and when it runs; ``at_start`` is called
    ``delay`` seconds after it started."""

    def __init__(self, stack: Stack, standby: int, at_start=None, delay: float = 0.0):
        super().__init__(daemon=True)
        self.stack, self.standby, self.at_start, self.delay = stack, standby, at_start, delay
        self.seen: dict[str, float] = {}
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set() and "running" not in self.seen:
            try:
                now_status = status(self.stack, self.standby)
            except Exception:  # noqa: BLE001 - a watcher must outlive a slow answer
                now_status = None
            now = time.time()
            if now_status in ("loading", "running"):
                self.seen.setdefault("started", now)
                if now_status == "running":
                    self.seen["running"] = now
            if self.at_start and "started" in self.seen and now >= self.seen["started"] + self.delay:
                self.seen["called"] = now
                self.at_start()
                self.at_start = None
            self.done.wait(0.01)

    def stop(self):
        self.done.set()
        self.join(timeout=5)


class Session:
    """The simulator at time scale 1 with Vast's rate limits, the Procfile's processes on default settings,
    one provisioned pool, and every undisturbed failover measured so far."""

    def __init__(self, stack: Stack, floor_rounds: int = 3):
        from app.runtime import settings
        from app.settings import VAST_RATE_LIMITS

        self.stack = stack
        stack.stop_all_but_redis()
        stack.redis.flushdb()
        stack.reset_env(defaults=True)
        stack.start_sim(1.0)
        self.sim_proc = stack.sim_proc
        self.settings = settings()
        config = stack.sim("GET", "/_sim/config")
        say(f"  simulator time_scale 1: start {config['start_seconds']:.1f} s, stop {config['stop_seconds']:.1f} s, "
            f"load {config['load_seconds']:.1f} s; defaults: sweep every {self.settings.health_check_interval} s, "
            f"threshold {self.settings.failover_threshold} sweeps and {self.settings.failover_min_seconds} s, "
            f"lock TTL {self.settings.lock_ttl} s, heal every {self.settings.heal_interval} s, "
            f"visibility timeout {self.settings.visibility_timeout} s")
        hosts = sorted(stack.sim("GET", "/_bench/hosts")["hosts"], key=lambda h: -h["free_gpus"])
        self.host, floor_host = hosts[0]["machine_id"], hosts[1]["machine_id"]
        self.busy_hosts = {self.host, floor_host}
        # the floor's instance is made before the limits are on, then started and stopped outside them
        floor_instance = create_stopped(stack, floor_host)
        stack.limit_sim(VAST_RATE_LIMITS)
        say(f"  rate limits (Vast's, on the simulator and in the service's defaults): {self.settings.vast_rate_limits}")
        self.floor_times: list[float] = []
        floor = threading.Thread(target=lambda: self.floor_times.extend(start_times(stack, floor_instance,
                                                                                   floor_rounds)), daemon=True)
        floor.start()

        self.failover_worker = stack.start_worker(FAILOVER_THREADS, FAILOVER_QUEUES, "failover-worker")
        self.provision_worker = stack.start_worker(32, PROVISION_QUEUES, "provision-worker")
        self.beat = stack.start_beat()
        from app import create_app

        self.client = create_app().test_client()
        self.pid = f"{TENANT}:{MACHINE}"
        t = time.time()
        op_id = self.provision(MACHINE, self.host)
        wait_until(lambda: self.op_state(op_id) in ENDED, timeout=300, message="the pool's provision")
        assert self.op_state(op_id) == "SUCCESS", self.store.get_op(op_id)
        say(f"  pool provisioned in {time.time() - t:.1f} s")
        # what the provider's list budget (Vast: one call a second) carries with nothing to do but watch
        wait_until(self.settled, timeout=300, interval=0.05, message="the pool settled")
        self.idle_list_rate = self.list_rate(10.0)
        say(f"  list calls a second with the pool settled (sweeps only): {self.idle_list_rate:.2f} "
            f"(Vast allows {1 / self.settings.vast_rate_limits['list_instances']:.2f})")
        floor.join(timeout=300)
        self.floor = median(self.floor_times)
        say(f"  floor: the simulator's start of a stopped instance, {floor_rounds} rounds: "
            f"{', '.join(f'{s:.3f}' for s in self.floor_times)} s; median {self.floor:.3f} s")
        self.undisturbed: list[dict] = []

    @property
    def store(self):
        return self.stack.store()

    def alive(self) -> bool:
        """Still the stack's simulator and processes (another benchmark restarts them)."""
        procs = (self.failover_worker, self.provision_worker, self.beat)
        return self.stack.sim_proc is self.sim_proc and all(p.alive() and p in self.stack.procs for p in procs)

    def provision(self, machine: int, host: int) -> str:
        rv = self.client.post("/api/v1/warmpool/provision", headers=AUTH, json={
            "machine_id": machine, "host_machine_id": host, "volume_size": 1, "disk_size": 8})
        assert rv.status_code == 202, rv.get_json()
        return rv.get_json()["task_id"]

    def list_rate(self, seconds: float) -> float:
        """The service's list calls a second at the simulator, over ``seconds``."""

        def calls():
            return self.stack.sim_requests()["requests"].get(ROUTES["list_instances"][0], 0)

        before = calls()
        time.sleep(seconds)
        return (calls() - before) / seconds

    def op_state(self, op_id: str) -> str | None:
        return (self.store.get_op(op_id) or {}).get("state")

    def settled(self):
        """The pool active, unlocked, no failed sweep counted, its primary running and standby stopped."""
        from app.store import keys

        store = self.store
        pool = store.get_pool(self.pid)
        if not pool or pool["state"] != "active" or store.is_locked(self.pid) or not pool["standby_gpu_id"]:
            return None
        if self.stack.redis.hget(keys.HEALTH_FAILS, self.pid):
            return None
        if (status(self.stack, pool["primary_gpu_id"]), status(self.stack, pool["standby_gpu_id"])) != (
                "running", "stopped"):
            return None
        return pool

    def sweep_start(self) -> float:
        """When the next sweep starts: it takes the slot of its interval of wall-clock time (one per interval,
        on beat's cadence); its provider calls may then wait on the rate budget."""
        from app.store import keys

        due = int(time.time() / self.settings.health_check_interval) + 1
        wait_until(lambda: self.stack.redis.exists(keys.sweep_slot(due), keys.sweep_slot(due + 1)), timeout=60,
                   interval=0.005, message="a sweep")
        return time.time()

    def failover(self, label: str, phase: float = 0.5, sweep_at: float | None = None, at_start=None,
                 delay: float = 0.0) -> dict:
        """Fail the primary ``phase`` of a sweep interval after a sweep starts (beat keeps the cadence from
        ``sweep_at``, one seen earlier); time it until the standby is promoted and until the pool is back to
        active. ``at_start`` is called ``delay`` s after the standby starts."""
        pool = wait_until(self.settled, timeout=300, interval=0.05, message="the pool active, standby stopped")
        interval = self.settings.health_check_interval
        fail_at = (sweep_at or self.sweep_start()) + phase * interval
        while fail_at < time.time():
            fail_at += interval
        time.sleep(fail_at - time.time())
        old, standby = pool["primary_gpu_id"], pool["standby_gpu_id"]
        watch = StandbyWatch(self.stack, standby, at_start, delay)
        watch.start()
        t0 = time.time()
        self.stack.sim("POST", f"/_sim/instances/{old}/fail")
        wait_until(lambda: (p := self.store.get_pool(self.pid)) and p["primary_gpu_id"] == standby
                   and (p.get("last_failover") or {}).get("new_primary_gpu_id") == standby,
                   timeout=600, interval=0.01, message="the standby promoted")
        promoted = time.time() - t0
        watch.join(timeout=5)
        watch.stop()
        active = wait_until(self.settled, timeout=600, interval=0.05, message="the pool back to active")
        last = active["last_failover"]
        run = {"fail_to_promoted_s": round(promoted, 3),
               "fail_to_standby_started_s": round(watch.seen.get("started", float("nan")) - t0, 3),
               "fail_to_standby_running_s": round(watch.seen.get("running", float("nan")) - t0, 3),
               "fail_to_active_s": round(time.time() - t0, 3),
               # the standby ran this long before the failover's poll saw it
               "poll_lag_s": round(promoted - watch.seen.get("running", float("nan")) + t0, 3),
               "recovery_time_seconds": last["recovery_time_seconds"],
               # the record counts from the first sweep that saw the failure (from the resume, if resumed)
               "record_starts_at_s": round(promoted - last["recovery_time_seconds"], 3),
               "phases": last["phases"]}
        counted_from = "the first failed sweep" if "detect" in last["phases"] else "the healer's resume"
        if "called" in watch.seen:
            run["called_at_s"] = round(watch.seen["called"] - t0, 3)
        say(f"  {label}: fail -> promoted {promoted:.2f} s (standby started {run['fail_to_standby_started_s']:.2f}, "
            f"running {run['fail_to_standby_running_s']:.2f}), back to active {run['fail_to_active_s']:.2f} s; "
            f"{counted_from} at {run['record_starts_at_s']:.2f} s; phases {last['phases']}")
        return run

    def baseline(self) -> float:
        """The median undisturbed failover of this session (one is measured if there is none yet)."""
        if not self.undisturbed:
            self.undisturbed.append(self.failover("undisturbed failover"))
        return median([r["fail_to_promoted_s"] for r in self.undisturbed])


_session: Session | None = None


def session(stack: Stack) -> Session:
    """The running session, or a new one if another benchmark has restarted the stack since."""
    global _session
    if _session is None or _session.stack is not stack or not _session.alive():
        _session = Session(stack)
    return _session


def median_phases(runs: list[dict]) -> dict:
    names = sorted({k for r in runs for k in r["phases"]})
    return {k: median([r["phases"][k] for r in runs if k in r["phases"]]) for k in names}


def run_defaults(stack: Stack, failovers: int = 3) -> list[Result]:
    s = session(stack)
    # failures spread evenly over the sweep cycle: the median one lands half an interval after a sweep
    runs = [s.failover(f"failover {n + 1}, {(n + 0.5) / failovers:.2f} of a sweep interval after a sweep",
                       (n + 0.5) / failovers) for n in range(failovers)]
    s.undisturbed += runs
    promoted = [r["fail_to_promoted_s"] for r in runs]
    ratio = median(promoted) / s.floor
    phases = median_phases(runs)
    sweep_wait = median([r["record_starts_at_s"] for r in runs])
    poll_lag = median([r["poll_lag_s"] for r in runs])
    say(f"  median: fail -> promoted {median(promoted):.2f} s over a {s.floor:.2f} s start = {ratio:.3f}; "
        f"until the first failed sweep {sweep_wait:.2f} s; the standby ran {poll_lag:.2f} s before the poll saw "
        f"it; phases {phases}")
    raw = {"floor_start_to_running_s": s.floor, "floor_rounds_s": s.floor_times, "failovers": runs,
           "idle_list_calls_per_s": s.idle_list_rate,
           "median_fail_to_promoted_s": median(promoted), "max_fail_to_promoted_s": max(promoted),
           "median_fail_to_standby_running_s": median([r["fail_to_standby_running_s"] for r in runs]),
           "median_fail_to_active_s": median([r["fail_to_active_s"] for r in runs]),
           "median_until_first_failed_sweep_s": sweep_wait, "median_poll_lag_s": poll_lag,
           "median_phases_s": phases,
           "rate_limits_s": s.settings.vast_rate_limits}
    return [
        Result("failover-defaults", "median failover / simulator's start", ratio, "x", "<= 1.5", ratio <= 1.5, raw),
        Result("failover-defaults", "median failover (fail -> promoted)", median(promoted), "s", "-", None,
               {"floor_s": s.floor}),
    ]


def run_killed_worker(stack: Stack, kills: int = 3) -> list[Result]:
    """Kill the failover worker at points spread over the standby's start (from 10% to 90% of it), restart it
    at once. The later the kill, the more it adds: the standby runs sooner after it."""
    s = session(stack)
    baseline = s.baseline()
    runs = []
    for n in range(kills):
        delay = (0.1 + 0.8 * n / max(1, kills - 1)) * s.floor

        def kill_and_restart():
            os.kill(s.failover_worker.pid, signal.SIGKILL)
            s.failover_worker.popen.wait(timeout=10)
            s.stack.procs.remove(s.failover_worker)
            s.failover_worker = s.stack.start_worker(FAILOVER_THREADS, FAILOVER_QUEUES, "failover-worker", wait=False)

        run = s.failover(f"killed at {delay:.1f} s into the standby's start", at_start=kill_and_restart, delay=delay)
        run.update(kill_into_start_s=round(delay, 3), added_s=round(run["fail_to_promoted_s"] - baseline, 3),
                   kill_to_resume_s=round(run["record_starts_at_s"] - run["called_at_s"], 3))
        say(f"    added {run['added_s']:.2f} s over the undisturbed {baseline:.2f} s; the healer resumed the failover "
            f"{run['kill_to_resume_s']:.2f} s after the kill")
        runs.append(run)
    worst = max(r["added_s"] for r in runs)
    raw = {"undisturbed_fail_to_promoted_s": baseline, "undisturbed_failovers": len(s.undisturbed),
           "killed": runs, "broker": "redis (REDIS_URL)", "lock_ttl_s": s.settings.lock_ttl,
           "heal_interval_s": s.settings.heal_interval, "visibility_timeout_s": s.settings.visibility_timeout}
    return [
        Result("killed-worker", f"seconds added by a killed worker (worst of {kills})", worst, "s", "<= 15",
               worst <= 15, raw),
        Result("killed-worker", "killed failover / undisturbed (worst)", (baseline + worst) / baseline, "x", "-",
               None, {"undisturbed_s": baseline}),
    ]


def run_backlog(stack: Stack, backlog: int = BACKLOG) -> list[Result]:
    """A dozen provisions queued (all started, waiting on the rate budget), then the primary fails."""
    s = session(stack)
    baseline = s.baseline()
    wait_until(s.settled, timeout=300, interval=0.05, message="the pool active, standby stopped")
    sweep_at = s.sweep_start()  # beat's cadence, taken before the backlog
    hosts = spread(stack, backlog, exclude=s.busy_hosts)
    t0 = time.time()
    op_ids = [s.provision(BACKLOG_FIRST_MACHINE + n, host) for n, host in enumerate(hosts)]
    s.busy_hosts |= set(hosts)
    wait_until(lambda: all(s.op_state(op_id) in ("STARTED",) + ENDED for op_id in op_ids), timeout=60,
               message="every queued provision started")
    before = stack.sim_requests()["rate_limited"]
    run = s.failover(f"failover behind {backlog} provisions", sweep_at=sweep_at)
    run.update(provisions_still_running_at_active=sum(s.op_state(op_id) not in ENDED for op_id in op_ids),
               rate_limited_429=stack.sim_requests()["rate_limited"] - before)
    # the backlog must still end well: a failover in its midst may not break a provision
    wait_until(lambda: all(s.op_state(op_id) in ENDED for op_id in op_ids), timeout=300, interval=0.5,
               message="the queued provisions to end")
    outcomes: dict[str, int] = {}
    for op_id in op_ids:
        outcomes[s.op_state(op_id)] = outcomes.get(s.op_state(op_id), 0) + 1
    run.update(backlog_outcomes=outcomes, backlog_seconds=round(time.time() - t0, 1))
    ratio = run["fail_to_promoted_s"] / baseline
    say(f"  {run['provisions_still_running_at_active']} of {backlog} provisions still running when the pool was "
        f"back to active; 429s from the simulator meanwhile: {run['rate_limited_429']}; the backlog ended "
        f"{outcomes} {run['backlog_seconds']:.0f} s after the first was queued")
    ok = ratio <= 1.1 and outcomes.get("SUCCESS") == backlog
    return [
        Result("failover-backlog", f"failover behind {backlog} provisions / undisturbed", ratio, "x", "<= 1.1",
               ok, {"undisturbed_fail_to_promoted_s": baseline, "run": run}),
    ]
