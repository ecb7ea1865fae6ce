"""Mutation check: each guarantee of docs/reliability.md has a test that fails when its guard is broken.

For every mutant below, the guard's code is changed (removed or inverted) in a copy of the tree, the
tests named for it are run there, and they must FAIL. A mutant whose tests still pass is a guarantee
that nothing proves: this script then exits 1. Run it with ``make mutants`` (CI does);
``tests/mutants.py -k WORDS [-k WORDS ...]`` runs only the mutants whose guarantee contains one of them
(case-insensitive).
"""

import argparse
import concurrent.futures
import queue
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
OPS, API, NOTICES = "tests/unit/test_operations.py", "tests/api/test_api.py", "tests/api/test_provider_notifications.py"
HOOKS = "tests/operator/test_webhooks.py"
WEBHOOKS_UNIT = "tests/unit/test_webhooks.py"
SENDER = "tests/unit/test_webhook_sender.py"


@dataclass
class Mutant:
    guarantee: str
    path: str
    before: str  # must appear exactly once in the file
    after: str
    tests: tuple[str, ...]


MUTANTS = [
    Mutant("an event's at is when it happened: no detail replaces it", "app/store/events.py",
           "record = {**own, **data, **own}", "record = {**own, **data}",
           (f"{UNIT}::test_an_events_details_never_replace_when_it_happened",)),
    Mutant("a planned switchover starts once due, not before", "app/store/pools.py",
           'self.r.zrangebyscore(keys.SWITCHOVERS, "-inf", now)',
           'self.r.zrangebyscore(keys.SWITCHOVERS, "-inf", "+inf")',
           ("tests/unit/test_switchover.py::test_a_planned_switchover_starts_once_due_and_not_before",)),
    Mutant("every pool write is fenced by the writer's epoch (rule 2)", "app/store/pools.py",
           "            if int(pipe.get(epoch_key) or 0) != held.epoch:\n                raise FencedOut(pid)\n",
           "",
           (f"{UNIT}::test_save_pool_with_a_stale_epoch_is_fenced_out_and_writes_nothing",
            f"{LOCKS}::test_two_writers_racing_on_a_real_redis_exactly_one_wins_each_round")),
    Mutant("the old primary is stopped before the standby starts (rule 3)", "app/operations.py",
           '    StepSpec("warmpool.failover.await_stopped"),\n',
           "",
           (f"{OPS}::test_a_failover_stops_every_primary_labelled_instance_before_the_standby_starts",)),
    Mutant("a mutating provider call leaves only while the step holds the epoch (rule 12)", "app/runtime.py",
           "        if check is not None and method in MUTATING_METHODS and endpoint not in READS_BY_POST:\n"
           "            check()",
           "        pass",
           (f"{STEPS}::test_a_mutating_call_after_the_epoch_moved_never_reaches_the_provider",)),
    Mutant("a tenant's pools live on its own Vast account (rule 17)", "app/settings.py",
           "        return DEFAULT_ACCOUNT if key is None or key == self.vast_api_key else account_name(key)",
           "        return DEFAULT_ACCOUNT",
           ("tests/unit/test_accounts.py::test_each_tenant_lives_on_its_account_and_a_correlated_failure_spends_only_its_budget",
            "tests/unit/test_accounts.py::test_a_pool_step_calls_with_its_tenants_key")),
    Mutant("each Vast account has its own rate budget (rule 17)", "app/store/keys.py",
           '    return key if account == DEFAULT_ACCOUNT else f"{key}@{account}"',
           "    return key",
           ("tests/unit/test_accounts.py::test_each_tenant_lives_on_its_account_and_a_correlated_failure_spends_only_its_budget",)),
    Mutant("a held lock is kept alive by a heartbeat (rule 12)", "app/store/locks.py",
           "                self.store.extend(self.pid, self.held, self.ttl)",
           "                pass",
           (f"{LOCKS}::test_the_heartbeat_keeps_a_lock_alive_past_its_ttl",)),
    Mutant("a step waiting in its worker keeps its lock (rule 12)", "tasks/base.py",
           "        waiting_steps.received(request.id, cast(Message, message))",
           "        pass",
           (f"{LOCKS}::test_a_step_waiting_in_its_worker_keeps_its_lock_and_a_released_one_is_never_taken_back",)),
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
           "        return None",
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
    Mutant("a split brain is resolved by stopping what the pool does not name (rule 14)", "tasks/splitbrain.py",
           "                    runtime.vast().stop_instance(row[\"id\"])\n",
           "",
           (f"{SWEEP}::test_guard_stops_every_instance_the_pool_does_not_name_as_primary",)),
    Mutant("confirmed failures are capped per minute (rule 9)", "app/store/budget.py",
           "        return bool(self._failover_slot(keys=[keys.failovers(account)], args=[per_minute, uuid.uuid4().hex]))",
           "        return True",
           ("tests/unit/test_budget.py::test_failover_slots_are_capped_over_the_last_minute",
            f"{OPS}::test_a_confirmed_failure_past_the_cap_is_confirmed_once_more_and_never_deferred")),
    Mutant("an account's notification is verified with its own secret (rule 17)", "app/api/provider.py",
           "    secret = runtime.settings().webhook_secret(notified_account())",
           "    secret = runtime.settings().webhook_secret(DEFAULT_ACCOUNT)",
           (f"{NOTICES}::test_a_forged_or_cross_account_notification_is_refused_and_changes_nothing",)),
    Mutant("an op record's update never writes back over a context saved meanwhile (rule 2)", "app/store/operations.py",
           "        self.r.transaction(write, key)", "        self.r.transaction(write)",
           (f"{UNIT}::test_update_op_never_writes_back_over_a_context_saved_between_its_read_and_its_write",)),
    Mutant("an account's notification is looked up among its own pools only (rule 17)", "app/commands.py",
           "        if pid and runtime.settings().account_of(split_pool_id(pid)[0]) == account:",
           "        if pid:",
           (f"{NOTICES}::test_an_accounts_notification_never_acts_on_another_accounts_pool",)),
    Mutant("the notification replay window is each account's (rule 17)", "app/api/provider.py",
           "hashlib.sha256(f\"{account}\\n\".encode() + request.get_data(cache=True))",
           "hashlib.sha256(request.get_data(cache=True))",
           (f"{NOTICES}::test_an_accounts_notification_never_acts_on_another_accounts_pool",)),
    Mutant("the capacity check searches on each account's own budget (rule 17)", "tasks/sweep.py",
           "        with on_account(name):\n            full += _without_free_gpu(",
           "        if name:\n            full += _without_free_gpu(",
           ("tests/unit/test_accounts.py::test_the_capacity_check_searches_each_accounts_hosts_on_its_own_budget",)),
    Mutant("the failover cap is each Vast account's own (rule 17) ", "tasks/failover.py",
           "    if op.store.take_failover_slot(cap, op.account):",
           "    if op.store.take_failover_slot(cap):",
           (f"{OPS}::test_the_failover_cap_is_each_vast_accounts_own",)),
    Mutant("the failover cap is each Vast account's own, in the store (rule 17) ", "app/store/budget.py",
           "keys=[keys.failovers(account)]",
           "keys=[keys.failovers()]",
           ("tests/unit/test_budget.py::test_each_vast_account_has_its_own_failover_cap",)),
    Mutant("the failover cap counts only failures the provider confirmed ", "tasks/failover.py",
           "        if failed_status(instance) and not within_failover_cap(op):",
           "        if not within_failover_cap(op) and failed_status(instance):",
           (f"{OPS}::test_the_cap_counts_only_failures_the_provider_confirms",)),
    Mutant("past the cap a failure is asked about once more, directly ", "tasks/failover.py",
           "            instance = confirmed_directly(op)",
           "            pass",
           (f"{OPS}::test_a_provider_answering_garbage_for_the_whole_fleet_fails_nothing_over",)),
    Mutant("past the cap the direct confirmation takes a ranked turn, never holding a thread far from it ",
           "tasks/failover.py",
           "    with put_turn(op, FENCE):\n        return op.vast.show_instance(op.ctx[\"old_primary\"])",
           "    return op.vast.show_instance(op.ctx[\"old_primary\"])",
           (f"{OPS}::test_a_confirmed_failure_past_the_cap_is_confirmed_once_more_and_never_deferred",)),
    Mutant("past the cap a confirmed failure is never deferred (rule 9)", "tasks/failover.py",
           "            instance = confirmed_directly(op)",
           "            return \"deferred past the cap\"",
           (f"{OPS}::test_a_confirmed_failure_past_the_cap_is_confirmed_once_more_and_never_deferred",)),
    Mutant("a replayed notification is dropped ", "app/store/ingress.py",
           "        return bool(self.r.set(keys.notification_seen(digest), 1, nx=True, px=max(1, int(window * 1000))))",
           "        return True",
           (f"{NOTICES}::test_a_replayed_notification_is_dropped_and_checks_are_limited_per_pool",)),
    Mutant("notifications check one pool at most once per interval ", "app/store/ingress.py",
           "        return bool(self.r.set(keys.notification_check(pid, role), 1, nx=True, px=max(1, int(interval * 1000))))",
           "        return True",
           (f"{NOTICES}::test_a_replayed_notification_is_dropped_and_checks_are_limited_per_pool",
            f"{NOTICES}::test_an_offline_standby_gets_the_lost_standby_recheck_within_the_same_limits")),
    Mutant("a standby's notifications never hold back its primary's failover check", "app/store/ingress.py",
           "set(keys.notification_check(pid, role), 1,",
           "set(keys.notification_check(pid, \"either\"), 1,",
           (f"{NOTICES}::test_an_offline_standby_gets_the_lost_standby_recheck_within_the_same_limits",)),
    Mutant("a lost standby whose primary is down too gets the failover, triggered by the recheck", "tasks/sweep.py",
           "    if not is_running(primary):",
           "    if False:",
           (f"{SWEEP}::test_recheck_of_a_lost_standby_whose_primary_is_down_too_triggers_the_failover",)),
    Mutant("the standby recheck asks the provider without the lock", "tasks/sweep.py",
           "    if not _standby_kept(pool) or s.is_locked(pid):\n",
           "    if not _standby_kept(pool) or s.is_locked(pid) or s.acquire(pid, cfg.lock_ttl) is None:\n",
           (f"{SWEEP}::test_a_failover_trigger_during_the_rechecks_provider_calls_is_not_turned_away",)),
    Mutant("a notification naming a standby starts its recheck", "app/commands.py",
           "    for role, found in ((\"primary\", s.primaries), (\"standby\", s.standbys)):",
           "    for role, found in ((\"primary\", s.primaries),):",
           (f"{NOTICES}::test_an_offline_standby_gets_the_lost_standby_recheck_within_the_same_limits",)),
    Mutant("a DNS lookup is under the attempt's deadline", "app/urls.py",
           "        return answer.result(timeout=max(0.0, seconds))",
           "        return answer.result()",
           ("tests/unit/test_webhooks.py::test_a_name_server_that_never_answers_is_under_the_attempts_deadline",)),
    Mutant("?wait holders are capped overall and per tenant ", "app/api/warmpool.py",
           "        return runtime.store().wait_op(op_id, wait) if holding else None",
           "        return runtime.store().wait_op(op_id, wait)",
           (f"{API}::test_past_the_wait_caps_the_202_answers_at_once",)),
    Mutant("a body past MAX_CONTENT_LENGTH is refused on every route ", "app/__init__.py",
           "            raise RequestEntityTooLarge()",
           "            pass",
           ("tests/api/test_bad_input.py::test_a_body_past_max_content_length_is_413_on_every_route",)),
    Mutant("a revoked key gets 401 at once", "app/store/apikeys.py",
           "        return None if revoked else configured.get(key) or stored",
           "        return configured.get(key) or stored",
           (f"{API}::test_a_key_from_the_setting_can_be_revoked",)),
    Mutant("a tenant's pools are capped ", "app/store/pools.py",
           "        return bool(self._claim_machine(keys=[keys.tenant_pools(tenant)], args=[machine_id, limit]))",
           "        return True",
           (f"{API}::test_a_tenant_past_its_pool_limit_gets_a_clear_403",)),
    Mutant("a pool that never held anything stops being healed", "tasks/heal.py",
           "NEVER_HELD_ATTEMPTS = 3",
           "NEVER_HELD_ATTEMPTS = 10**9",
           ("tests/unit/test_heal.py::test_a_pool_that_never_held_anything_stops_being_healed_after_a_few_failures",)),
    Mutant("a pool given up on tells its tenant's webhooks", "app/events.py",
           "webhook=\"pool.heal_given_up\"",
           "webhook=None",
           ("tests/unit/test_heal.py::test_a_pool_that_never_held_anything_stops_being_healed_after_a_few_failures",)),
    Mutant("the placeholder key change-me stops the service", "app/settings.py",
           "PLACEHOLDER_KEYS = {\"change-me\", \"changeme\"}",
           "PLACEHOLDER_KEYS = set()",
           ("tests/unit/test_settings_hosts.py::test_the_placeholder_key_is_refused",)),
    Mutant("a provisioning backlog never reserves the budget ahead of a failover (rule 7)", "app/runtime.py",
           "        horizon = -1 if urgent.get() else 2 * interval",
           "        horizon = -1",
           ("tests/unit/test_budget.py::test_a_call_without_a_slot_within_the_wait_gives_its_thread_back_unsent",)),
    Mutant("the reconciler reads the pool again before destroying (rule 13)", "tasks/reconcile.py",
           "        if resource_id in referenced(pool):\n            return \"its pool references it now\"\n",
           "",
           ("tests/unit/test_reconcile.py::test_the_pool_is_read_again_before_anything_is_destroyed",)),
    Mutant("a standby shown as anything but stopped is found and replaced (rule 15)", "tasks/sweep.py",
           "STOPPED = (\"exited\", \"stopped\")",
           "STOPPED = (\"exited\", \"stopped\", \"offline\", \"unknown\")",
           (f"{SWEEP}::test_a_standby_the_provider_shows_lost_is_rechecked_in_one_call_for_the_fleet",
            f"{SWEEP}::test_recheck_replaces_a_lost_standby_on_the_same_host",
            "tests/faults/test_faults.py::test_a_failed_standby_is_replaced_before_it_is_needed")),
    Mutant("a lost standby is destroyed before its replacement is made (rule 15)", "tasks/sweep.py",
           "        runtime.vast().destroy_instance(lost)\n",
           "        pass\n",
           (f"{SWEEP}::test_recheck_replaces_a_lost_standby_on_the_same_host",)),
    Mutant("a duplicate delivery of a done step does nothing (rule 2)", "app/store/pools.py",
           "            if expect_seq is not None and (old or {}).get(\"seq\", 0) != expect_seq:\n"
           "                raise FencedOut(pid)\n",
           "",
           (f"{UNIT}::test_save_pool_with_an_expected_step_refuses_a_duplicate_delivery",)),
    Mutant("the store follows the sentinels' master", "app/store/__init__.py",
           "    return sentinels.master_for(master, db=address.db, password=address.password, **CLIENT_OPTIONS)\n",
           "    host, port = sentinels.discover_master(master)\n"
           "    return redis.Redis(host=host, port=port, db=address.db, password=address.password, **CLIENT_OPTIONS)\n",
           ("tests/faults/test_sentinel.py::test_the_redis_master_killed_mid_failover_is_followed_to_its_replica",)),
    Mutant("a new lock is on a replica before its holder goes on (Sentinel)", "app/store/locks.py",
           "        if not self.replicas_to_wait:\n            return script(keys=script_keys, args=args)\n",
           "        return script(keys=script_keys, args=args)\n",
           (f"{LOCKS}::test_behind_sentinel_a_new_epoch_waits_for_a_replica_and_a_lone_master_goes_on",)),
    # issue 22: guards that no test protected (each mutant breaks a small named function's body)
    Mutant("every primary-labelled instance is stopped before the standby starts (rule 3)", "tasks/failover.py",
           "    return op.vast.labelled(primary_label(op))\n",
           "    return op.vast.list_instances({\"id\": {\"eq\": op.ctx[\"old_primary\"]}}).instances\n",
           (f"{OPS}::test_a_failover_stops_every_primary_labelled_instance_before_the_standby_starts",)),
    Mutant("a confirmation that cannot reach the provider cancels (rule 6)", "tasks/failover.py",
           "        return f\"provider unavailable ({exc})\"",
           "        return None",
           (f"{OPS}::test_a_confirmation_that_cannot_reach_the_provider_cancels",)),
    Mutant("a confirmation that sees a transitional status cancels (rule 14)", "tasks/failover.py",
           "    if is_running(instance) or status in TRANSITIONAL:",
           "    if is_running(instance):",
           (f"{OPS}::test_a_confirmation_that_sees_a_transitional_status_cancels",)),
    Mutant("a step's heartbeat runs while the step works (rule 12)", "tasks/base.py",
           "    return op.store.heartbeat(op.pid, op.held, op.settings.lock_ttl)",
           "    return contextlib.nullcontext(op.store.heartbeat(op.pid, op.held, op.settings.lock_ttl))",
           (f"{STEPS}::test_a_step_longer_than_the_lock_ttl_keeps_its_lock",)),
    Mutant("a replica that never completed a copy is not moved to", "tasks/hostfailover.py",
           "    return bool(pool.get(\"replica_volume_id\") and pool.get(\"replica_data_at\"))",
           "    return bool(pool.get(\"replica_volume_id\"))",
           ("tests/unit/test_replica.py::"
            "test_a_host_lost_with_a_replica_that_never_completed_a_copy_fails_over_on_its_own_host",)),
    Mutant("a standby given up is destroyed (rules 3 and 10)", "tasks/failover.py",
           "    op.vast.destroy_instance(standby)\n",
           "",
           (f"{OPS}::test_a_standby_given_up_is_destroyed_before_a_fresh_one_is_made",)),
    Mutant("a renewal on a host with only short rentals keeps the old standby", "tasks/renewal.py",
           "    return end is not None and end < time.time() + margin",
           "    return False",
           (f"{OPS}::test_a_renewal_on_a_host_with_only_short_rentals_keeps_the_old_standby",)),
    Mutant("the rebuild writes a record only where there is none, atomically (rule 13)", "app/store/pools.py",
           "            self.save_pool(pool, held, only_new=True)",
           "            self.save_pool(pool, held)",
           ("tests/unit/test_rebuild.py::test_a_record_written_during_the_listing_is_never_overwritten",
            f"{UNIT}::test_create_pool_writes_only_where_there_is_no_record",
            "tests/unit/test_rebuild.py::test_a_record_written_between_the_rebuilds_check_and_its_write_is_kept")),
    Mutant("the rebuild's check for no record and its write cannot interleave (rule 13)", "app/store/pools.py",
           "            self.save_pool(pool, held, only_new=True)",
           "            if self.get_pool(pool_id(pool[\"tenant\"], pool[\"machine_id\"])) is not None:\n"
           "                raise PoolExists(pool[\"machine_id\"])\n"
           "            self.save_pool(pool, held)",
           ("tests/unit/test_rebuild.py::test_a_record_written_between_the_rebuilds_check_and_its_write_is_kept",)),
    Mutant("the rebuild keeps the oldest stopped standby", "tasks/rebuild.py",
           "    return min((row for row in stopped if _role(row) == \"standby\"), key=_order, default=None)",
           "    return max((row for row in stopped if _role(row) == \"standby\"), key=_order, default=None)",
           ("tests/integration/test_rebuild.py::test_of_two_stopped_standbys_the_oldest_is_the_standby",)),
    Mutant("a step that meets Redis away runs again, the operation not failed", "app/store/__init__.py",
           "STORE_AWAY = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)",
           "STORE_AWAY = ()",
           (f"{STEPS}::test_a_store_restart_during_a_step_runs_the_step_again",)),
    Mutant("a webhook attempt's whole exchange has one hard deadline", "app/urls.py",
           "    timer = threading.Timer(deadline, cut)",
           "    timer = threading.Timer(3600, cut)",
           (f"{HOOKS}::test_an_attempt_has_one_deadline_for_the_whole_exchange",)),
    Mutant("a tenant's webhook attempts in flight are capped", "app/store/webhooks.py",
           "if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end\n",
           "",
           ("tests/unit/test_webhooks.py::test_attempts_in_flight_are_capped_per_tenant",
            f"{HOOKS}::test_one_tenants_slow_receivers_hold_no_other_tenants_deliveries")),
    Mutant("a webhook registration resolves no name (no API thread waits on DNS)", "app/api/webhooks.py",
           "        check_url(url, runtime.settings().webhook_allow_private)",
           "        __import__('app.urls').urls.check_destination(url, runtime.settings().webhook_allow_private,\n"
           "                                                       within=5)",
           (f"{WEBHOOKS_UNIT}::test_registering_a_webhook_resolves_no_name",)),
    Mutant("the sweep judges the primaries before it looks for lost standbys", "tasks/sweep.py",
           "    _judge(s, cfg, failed, last_ok)\n",
           "    missing_standby += _lost_standbys(s, cfg)\n    _judge(s, cfg, failed, last_ok)\n",
           (f"{SWEEP}::test_the_failures_the_first_list_found_are_triggered_before_the_lost_standby_list",)),
    Mutant("any unexpected failure of a webhook attempt is a recorded failed attempt", "tasks/webhooks.py",
           "    except Exception as exc:  # anything else", "    except ZeroDivisionError as exc:  # anything else",
           (f"{WEBHOOKS_UNIT}::test_a_non_ascii_url_is_refused_and_any_unexpected_failure_is_a_recorded_attempt",)),
    Mutant("a private IPv4 address inside an IPv6 one (NAT64, 6to4, Teredo, mapped) is refused", "app/urls.py",
           "    if address.version != 6:\n        return []\n", "    if True:\n        return []\n",
           (f"{WEBHOOKS_UNIT}::test_a_private_ipv4_inside_ipv6_is_refused",)),
    Mutant("a webhook resend never overwrites an attempt recorded meanwhile", "app/store/webhooks.py",
           "self.r.transaction(transaction, keys.delivery(delivery_id), keys.webhooks_pending(tenant),",
           "self.r.transaction(transaction, keys.webhooks_pending(tenant),",
           (f"{WEBHOOKS_UNIT}::test_a_resend_racing_an_attempt_keeps_the_attempt_and_one_that_expired_is_404",)),
    Mutant("a web thread never waits for the provider's rate budget", "app/runtime.py",
           "    return reserving_within(0)", "    return contextlib.nullcontext()",
           ("tests/unit/test_budget.py::test_a_web_thread_never_waits_for_a_slot",)),
    Mutant("a hosts-cache miss waits for the budget only while it holds a wait slot", "app/api/warmpool.py",
           "(contextlib.nullcontext() if holding else without_waiting())", "(contextlib.nullcontext())",
           ("tests/api/test_api.py::test_hosts_503_with_retry_after_when_the_rate_budget_has_no_slot_now",)),
    Mutant("GET /warmpool/hosts caches one search per GPU query, whatever the price", "app/api/warmpool.py",
           'offers_query(args["gpu_name"], None, args["verified"])',
           'offers_query(args["gpu_name"], args["max_price"], args["verified"])',
           (f"{API}::test_hosts_are_cached_briefly",)),
    Mutant("a tenant's pending webhook deliveries are capped (429 past it)", "app/store/webhooks.py",
           "            if self._pending_count(pipe, tenant) >= pending_limit:\n"
           "                raise TooManyPending(tenant)\n",
           "",
           (f"{WEBHOOKS_UNIT}::test_a_tenants_pending_deliveries_are_capped_past_which_a_test_or_resend_is_429",)),
    Mutant("the webhook relay sends no message for a tenant whose slots are all in flight", "app/store/webhooks.py",
           "                    if free[tenant] <= 0:",
           "                    if False:",
           (f"{WEBHOOKS_UNIT}::test_the_relay_sends_no_message_for_a_tenant_whose_slots_are_all_in_flight",)),
    Mutant("a webhook delivery keeps only its latest attempts", "app/store/webhooks.py",
           "[attempt])[-ATTEMPTS_KEPT:]", "[attempt])",
           (f"{WEBHOOKS_UNIT}::test_a_delivery_keeps_only_its_latest_attempts",)),
    Mutant("a webhook is sent to the address that was checked (no DNS rebinding)", "app/urls.py",
           "socket.create_connection((self.destination.address, self.destination.port)",
           "socket.create_connection((self.destination.host, self.destination.port)",
           (f"{HOOKS}::test_dns_rebinding_cannot_move_a_delivery_past_the_check",
            "tests/operator/test_rebinding.py::"
            "test_dns_rebinding_through_the_webhooks_worker_never_reaches_the_rebound_address")),
    Mutant("a webhook attempt's claim outlives the broker's visibility timeout", "tasks/webhooks.py",
           "    return cfg.visibility_timeout + cfg.webhook_timeout",
           "    return 120",
           ("tests/unit/test_webhooks.py::test_an_attempts_claim_outlives_the_brokers_visibility_timeout",)),
    Mutant("in a mass failure a fenced standby starts before another pool's stop (rule 7)", "tasks/failover.py",
           "FINISH, FENCE, AFTER = 0, 1, 2",
           "FINISH, FENCE, AFTER = 1, 0, 2",
           ("tests/unit/test_budget.py::test_a_failovers_puts_rank_a_fenced_start_first_then_priority_then_failure_time",)),
    Mutant("a ranked provider call takes its slot only when no better-ranked call waits (rule 7)", "app/store/budget.py",
           "local ahead = redis.call('ZRANK', KEYS[2], claim)",
           "local ahead = 0",
           ("tests/unit/test_budget.py::test_ranked_slots_go_to_the_best_rank_waiting_not_the_first_to_ask",)),
    Mutant("a confirmation reads only a poll round that started after it asked (rule 14)", "app/store/polls.py",
           'seen is None or seen["round"] < since',
           "seen is None",
           ("tests/unit/test_polls.py::test_a_waiter_never_reads_a_round_older_than_its_question",
            "tests/unit/test_operations.py::test_one_list_call_confirms_every_pending_failure")),
    Mutant("a shared poll round never queues for the list budget (rule 7)", "app/runtime.py",
           "    return reserving_within(max(1, pages))",
           "    return contextlib.nullcontext()",
           ("tests/unit/test_budget.py::"
            "test_a_call_without_queueing_takes_no_slot_beyond_the_next_and_gives_its_thread_back",)),
    Mutant("a poll round of several pages reserves as far ahead as its pages need (rule 7)", "app/runtime.py",
           "    return reserving_within(max(1, pages))",
           "    return reserving_within(1)",
           ("tests/unit/test_budget.py::test_a_poll_round_of_several_pages_reserves_as_far_ahead_as_its_pages_need",)),
    Mutant("a poll round reads only instances asked about lately (rule 16)", "app/store/polls.py",
           "AWAITED_FOR = 10.0", "AWAITED_FOR = 60.0",
           ("tests/unit/test_polls.py::test_an_instance_not_asked_about_for_a_while_leaves_the_round",)),
    Mutant("a fence skips its label list only when a later sweep counted no other primary (rule 3)",
           "tasks/failover.py",
           '    return counts.get(primary_label(op), 0) > (1 if op.ctx["primary_labelled"] else 0)',
           "    return False",
           ("tests/unit/test_operations.py::"
            "test_an_instance_that_also_carries_the_primary_label_is_stopped_before_the_standby_starts",)),
    # issue 18's tenant hygiene: each breaks a named Lua script or a named function's line
    Mutant("a webhook DELETE touches only the caller's own webhook", "app/store/webhooks.py",
           "if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end\n",
           "redis.call('HDEL', KEYS[1], ARGV[1])\n",
           (f"{WEBHOOKS_UNIT}::test_a_delete_of_another_tenants_webhook_touches_nothing",)),
    Mutant("a tenant's webhooks are capped (MAX_WEBHOOKS), checked and added in one script", "app/store/webhooks.py",
           "if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end\n",
           "",
           (f"{SENDER}::test_a_tenants_webhooks_are_capped",
            f"{HOOKS}::test_the_webhook_cap_holds_under_parallel_posts")),
    Mutant("no log line names a webhook's URL", "tasks/webhooks.py",
           "        error = type(exc).__name__  # its text may name the address",
           "        error = f\"{type(exc).__name__}: {exc}\"",
           (f"{SENDER}::test_no_log_line_names_a_webhooks_url",)),
    Mutant("a pinned https connection names the host in SNI and checks its certificate against it", "app/urls.py",
           "context.wrap_socket(self.sock, server_hostname=self.destination.host)",
           "context.wrap_socket(self.sock, server_hostname=self.destination.address)",
           (f"{SENDER}::test_the_pinned_connection_sends_the_name_as_sni_on_https",)),
    Mutant("a pool's state changes only from the states its named transition leaves", "app/pools.py",
           "    if pool[field] not in allowed:",
           "    if False:",
           ("tests/unit/test_pools.py::test_a_transition_leaves_only_the_states_it_names",)),
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", dest="words", action="append", metavar="WORDS",
                        help="run only the mutants whose guarantee contains this text (case-insensitive); "
                             "given more than once, those that contain any of them")
    parser.add_argument("-j", "--jobs", type=int, default=2, help="mutants tested at once, each in its own copy")
    parsed = parser.parse_args(argv)
    words = [w.lower() for w in parsed.words or [""]]
    chosen = [m for m in MUTANTS if any(w in m.guarantee.lower() for w in words)]
    if not chosen:
        parser.error(f"no mutant's guarantee contains any of {words}")
    # one copy of the tree per job: a mutant is applied, tested and restored in its own copy
    trees: queue.Queue[Path] = queue.Queue()
    for _ in range(parsed.jobs):
        tree = Path(tempfile.mkdtemp(prefix="warmpool-mutants-"))
        shutil.copytree(ROOT, tree, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "var", "*.egg-info"))
        trees.put(tree)

    def check(mutant: Mutant) -> bool:
        tree, started = trees.get(), time.monotonic()
        try:
            caught = run(tree, mutant)
        finally:
            trees.put(tree)
        print(f"{'killed ' if caught else 'SURVIVED'}  {mutant.guarantee}  ({time.monotonic() - started:.0f} s)",
              flush=True)
        return caught

    with concurrent.futures.ThreadPoolExecutor(parsed.jobs) as pool:
        survivors = [m for m, caught in zip(chosen, pool.map(check, chosen)) if not caught]
    print(f"{len(chosen) - len(survivors)} killed, {len(survivors)} survived")
    while not trees.empty():
        shutil.rmtree(trees.get(), ignore_errors=True)
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
