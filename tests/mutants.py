"""Mutation check: each guarantee of docs/reliability.md has a test that fails when its guard is broken.

For every mutant below, the guard's code is changed (removed or inverted) in a copy of the tree, the
tests named for it are run there, and they must FAIL. A mutant whose tests still pass is a guarantee
that nothing proves: this script then exits 1. Run it with ``make mutants`` (CI does).
"""

import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UNIT, STEPS, SWEEP, LOCKS = ("tests/unit/test_store.py", "tests/unit/test_steps.py", "tests/unit/test_sweep.py",
                             "tests/unit/test_locks.py")


@dataclass
class Mutant:
    guarantee: str
    path: str
    before: str  # must appear exactly once in the file
    after: str
    tests: tuple[str, ...]


MUTANTS = [
    Mutant("a planned switchover starts once due, not before", "app/store/__init__.py",
           'return self.r.zrangebyscore(keys.SWITCHOVERS, "-inf", now)',
           'return self.r.zrangebyscore(keys.SWITCHOVERS, "-inf", "+inf")',
           ("tests/unit/test_switchover.py::test_a_planned_switchover_starts_once_due_and_not_before",)),
    Mutant("every pool write is fenced by the writer's epoch (rule 2)", "app/store/__init__.py",
           "            if int(pipe.get(epoch_key) or 0) != held.epoch:\n                raise FencedOut(pid)\n",
           "",
           (f"{UNIT}::test_save_pool_with_a_stale_epoch_is_fenced_out_and_writes_nothing",
            f"{LOCKS}::test_two_writers_racing_on_a_real_redis_exactly_one_wins_each_round")),
    Mutant("the old primary is stopped before the standby starts (rule 3)", "tasks/operations.py",
           "stop_primary.s(), await_stopped.s(), start_standby.s(), await_standby.s()",
           "start_standby.s(), await_standby.s(), stop_primary.s(), await_stopped.s()",
           ("tests/integration/test_seed_flow.py",)),
    Mutant("a mutating provider call leaves only while the step holds the epoch (rule 12)", "app/runtime.py",
           "        if check is not None and method in MUTATING_METHODS and endpoint not in READS_BY_POST:\n"
           "            check()",
           "        pass",
           (f"{STEPS}::test_a_mutating_call_after_the_epoch_moved_never_reaches_the_provider",)),
    Mutant("a held lock is kept alive by a heartbeat (rule 12)", "app/store/locks.py",
           "                self.store.extend(self.pid, self.held, self.ttl)",
           "                pass",
           (f"{LOCKS}::test_the_heartbeat_keeps_a_lock_alive_past_its_ttl",)),
    Mutant("a lost create is waited for, never made twice (rule 12)", "tasks/provision.py",
           "        if time.time() < creating[\"at\"] + op.settings.create_grace:",
           "        if False:",
           (f"{STEPS}::test_a_lost_create_not_found_within_the_grace_is_waited_for_never_made_twice",)),
    Mutant("what an interrupted create made is adopted by label (rule 4)", "tasks/provision.py",
           "    return next((row[\"id\"] for row in rows if row[\"id\"] not in known), None)",
           "    return None",
           (f"{STEPS}::test_a_create_whose_answer_was_lost_is_found_by_label_and_adopted",
            "tests/faults/test_faults.py::test_a_lost_create_answer_is_adopted")),
    Mutant("a provider outage is unknown, not a failure (rules 6 and 9)", "tasks/sweep.py",
           "        s.record_unknown_sweep(type(exc).__name__)  # unknown, not failed: nothing counts (rule 6)\n"
           "        return \"unknown\"",
           "        s.record_unknown_sweep(type(exc).__name__)\n"
           "        listing = type(\"L\", (), {\"instances\": [], \"label_counts\": {}, \"total_instances\": 1})()",
           (f"{SWEEP}::test_a_provider_failure_is_unknown_and_counts_nothing",
            f"{SWEEP}::test_many_unknown_sweeps_never_fail_over")),
    Mutant("a transitional status is never a failure (rule 14)", "tasks/failover.py",
           "TRANSITIONAL = {\"loading\", \"created\", \"scheduling\", \"rebooting\", None}",
           "TRANSITIONAL = set()",
           (f"{SWEEP}::test_a_transitional_status_never_counts",)),
    Mutant("a stale trigger does not fail over the new primary (rule 1)", "tasks/sweep.py",
           "            or pool[\"primary_gpu_id\"] != seen_primary):",
           "            ):",
           (f"{SWEEP}::test_trigger_for_a_pool_that_moved_on_does_nothing",
            "tests/faults/test_faults.py::test_stale_health_trigger_does_not_fail_over_the_new_primary")),
    Mutant("one sweep per interval, even with two beats", "app/store/health.py",
           "        return bool(self.r.set(slot, \"1\", nx=True, px=max(1000, int(interval * 2000))))",
           "        return True",
           (f"{SWEEP}::test_a_second_sweep_in_the_same_interval_is_skipped",)),
    Mutant("a split brain is resolved by stopping what the pool does not name (rule 14)", "tasks/sweep.py",
           "                    vast().stop_instance(row[\"id\"])\n",
           "",
           (f"{SWEEP}::test_guard_stops_every_instance_the_pool_does_not_name_as_primary",)),
    Mutant("automatic failovers are capped per minute (rule 9)", "app/store/budget.py",
           "        return bool(self._failover_slot(keys=[keys.FAILOVERS], args=[per_minute, uuid.uuid4().hex]))",
           "        return True",
           ("tests/unit/test_budget.py::test_failover_slots_are_capped_over_the_last_minute",
            f"{SWEEP}::test_automatic_failovers_per_minute_are_capped")),
    Mutant("a provisioning backlog never reserves the budget ahead of a failover (rule 7)", "app/runtime.py",
           "        horizon = -1 if urgent.get() else 2 * interval",
           "        horizon = -1",
           ("tests/unit/test_budget.py::test_a_call_without_a_slot_within_the_wait_gives_its_thread_back_unsent",)),
    Mutant("the reconciler reads the pool again before destroying (rule 13)", "tasks/reconcile.py",
           "        if resource_id in referenced(pool):\n            return \"its pool references it now\"\n",
           "",
           ("tests/unit/test_reconcile.py::test_the_pool_is_read_again_before_anything_is_destroyed",)),
    Mutant("a duplicate delivery of a done step does nothing (rule 2)", "app/store/__init__.py",
           "            if expect_seq is not None and (old or {}).get(\"seq\", 0) != expect_seq:\n"
           "                raise FencedOut(pid)\n",
           "",
           (f"{UNIT}::test_save_pool_with_an_expected_step_refuses_a_duplicate_delivery",)),
]


def run(tree: Path, mutant: Mutant) -> bool:
    """Apply the mutant in ``tree``, run its tests there, restore. True when the tests caught it (failed)."""
    path = tree / mutant.path
    source = path.read_text()
    if source.count(mutant.before) != 1:
        raise SystemExit(f"{mutant.path}: the guarded code of {mutant.guarantee!r} is not there exactly once; "
                         "update tests/mutants.py with the code")
    path.write_text(source.replace(mutant.before, mutant.after))
    try:
        result = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                                 *mutant.tests], cwd=tree, capture_output=True, text=True)
    finally:
        path.write_text(source)
    return result.returncode == 1  # 1: tests failed; anything else (collection error, usage) is no proof


def main() -> int:
    survivors = []
    tree = Path(tempfile.mkdtemp(prefix="warmpool-mutants-"))
    shutil.copytree(ROOT, tree, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "var", "*.egg-info"))
    for mutant in MUTANTS:
        started = time.monotonic()
        caught = run(tree, mutant)
        print(f"{'killed ' if caught else 'SURVIVED'}  {mutant.guarantee}  ({time.monotonic() - started:.0f} s)",
              flush=True)
        if not caught:
            survivors.append(mutant)
    print(f"{len(MUTANTS) - len(survivors)} killed, {len(survivors)} survived")
    shutil.rmtree(tree, ignore_errors=True)
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
