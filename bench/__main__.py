"""``python -m bench [failover-defaults|killed-worker|failover-backlog|mass-failover|sweep|api|memory|provision ...]``.

Runs the benchmarks and prints a summary. With no names every benchmark runs, in the order below
(about 15 minutes on 2 cores). The three failover benchmarks run on the service's default settings
against a simulator at Vast-like delays and share one session when they run one after another.
``--json PATH`` also writes the results as JSON; ``--logs DIR`` keeps the processes' logs there.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

from bench.core import Result, say, table

ORDER = ["failover-defaults", "killed-worker", "failover-backlog", "mass-failover", "sweep", "api", "memory",
         "provision"]
# these run with none of the service's settings in the environment (app/settings.py's defaults)
ON_DEFAULTS = {"failover-defaults", "killed-worker", "failover-backlog", "mass-failover"}


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    except OSError:
        mem_kb = 0
    return {"nproc": os.cpu_count(), "cpu": cpu, "ram_gb": round(mem_kb / 1024 / 1024, 1),
            "python": platform.python_version(), "kernel": platform.release()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", choices=ORDER + [[]], metavar="NAME",
                        help=f"benchmarks to run (default all): {', '.join(ORDER)}")
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    parser.add_argument("--logs", type=Path, help="keep the stack's logs in this directory")
    parser.add_argument("--failovers", type=int, default=3, help="undisturbed failovers on default settings")
    parser.add_argument("--kills", type=int, default=3, help="failovers whose worker is killed")
    parser.add_argument("--pools", type=int, nargs="+", default=[12, 40],
                        help="pools failed at once in the mass-failover benchmark, one run per number")
    parser.add_argument("--accounts", type=int, nargs="+", default=[1, 2],
                        help="Vast accounts the mass-failover benchmark's pools are spread over, one run per number")
    parser.add_argument("--failovers-per-minute", type=int,
                        help="the mass-failover benchmark's FAILOVERS_PER_MINUTE instead of the default cap")
    parser.add_argument("--sweeps", type=int, default=400, help="sweeps of the leak check")
    parser.add_argument("--rate-scale", type=float, default=0.1,
                        help="Vast's per-endpoint intervals are multiplied by this in the provisioning benchmark")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per API load run")
    args = parser.parse_args(argv)
    names = args.names or ORDER

    from bench.stack import Stack

    info = machine()
    say(f"warmpool benchmarks: {', '.join(names)}")
    say(f"machine: {info['nproc']} CPUs, {info['cpu']}, {info['ram_gb']} GB RAM, Python {info['python']}")
    started = time.time()
    stack = Stack(args.logs)
    say(f"logs: {stack.logs}")
    results: list[Result] = []
    failed = []
    try:
        for name in names:
            say(f"\n== {name} ==")
            t = time.time()
            try:
                results += run_one(name, stack, args)
            except Exception:  # noqa: BLE001 - one broken benchmark must not hide the others
                traceback.print_exc()
                failed.append(name)
                results.append(Result(name, "benchmark crashed (see traceback)", float("nan"), "", "-", False))
                stack.stop_all_but_redis()
            for r in results:
                if r.bench == name:
                    say("  " + r.line())
            say(f"  ({time.time() - t:.0f} s)")
    finally:
        stack.close()
    say(f"\n== summary ({time.time() - started:.0f} s) ==")
    say(table(results))
    if args.json:
        args.json.write_text(json.dumps({
            "machine": info, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": round(time.time() - started, 1),
            "results": [{**r.__dict__, "verdict": r.verdict} for r in results]}, indent=2, default=str))
    return 1 if failed else 0


def run_one(name: str, stack, args) -> list[Result]:
    stack.reset_env(defaults=name in ON_DEFAULTS)
    if name == "failover-defaults":
        from bench import failover
        return failover.run_defaults(stack, failovers=args.failovers)
    if name == "killed-worker":
        from bench import failover
        return failover.run_killed_worker(stack, kills=args.kills)
    if name == "failover-backlog":
        from bench import failover
        return failover.run_backlog(stack)
    if name == "mass-failover":
        from bench import massfailover
        return massfailover.run(stack, sizes=tuple(args.pools), cap=args.failovers_per_minute,
                                 accounts=tuple(args.accounts))
    if name == "sweep":
        from bench import sweep
        return sweep.run(stack)
    if name == "api":
        from bench import api
        return api.run(stack, duration=args.duration)
    if name == "memory":
        from bench import memory
        return memory.run(stack, sweeps=args.sweeps)
    if name == "provision":
        from bench import provision
        return provision.run(stack, rate_scale=args.rate_scale)
    raise ValueError(name)


if __name__ == "__main__":
    sys.exit(main())
