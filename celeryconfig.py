"""Celery settings, built from this process's ``Settings`` (``python -m celeryconfig`` checks the syntax).

Every task is short: one provider step. Waits are retries with a countdown, so a
killed worker's message comes back after ``visibility_timeout`` and the step runs
again (steps are idempotent).
"""

from app import operations, runtime
from app.settings import SENTINEL_SCHEME

_settings = runtime.settings()
_sweep = _settings.health_check_interval
# end dates cost a list call per 25 instances: read them 144 times per EXPIRY_MARGIN (every 10 min by default)
_expiry = max(_settings.capacity_check_interval, _settings.expiry_margin / 144)
# copies start when due, and are seen landing, at least twice per copy interval
_replicas = min(_settings.capacity_check_interval, _settings.replica_copy_interval / 2)

broker_url = _settings.broker_url or _settings.redis_url
broker_connection_retry_on_startup = True
broker_transport_options: dict[str, object] = {
    # longer than any one step (a provider call is bounded at 60 s) plus a retry's countdown
    "visibility_timeout": _settings.visibility_timeout,
    "unacked_restore_interval": 1,
    "unacked_restore_throttle": 1,
}
if broker_url.startswith(SENTINEL_SCHEME):
    # kombu's sentinel transport asks the sentinels for the master on each connection, so the broker follows
    # a failover of Redis as the store does (app/store); Celery keeps no results, so there is no result backend
    broker_transport_options["master_name"] = _settings.redis_sentinel_master
    if _settings.redis_sentinel_password:
        broker_transport_options["sentinel_kwargs"] = {"password": _settings.redis_sentinel_password}
imports = ("tasks.provision", "tasks.failover", "tasks.cleanup", "tasks.sweep", "tasks.heal", "tasks.reconcile",
           "tasks.rebuild", "tasks.webhooks", "tasks.renewal", "tasks.expiry",
           "tasks.replica", "tasks.hostfailover", "tasks.switchover", "tasks.operations",
           "tasks.splitbrain")

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
timezone = "UTC"
enable_utc = True

# operation records in Redis are the results clients read; Celery keeps none
task_ignore_result = True
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
worker_send_task_events = True
task_send_sent_event = True

# failover is never starved by a provisioning backlog (rule 7 in docs/architecture.md)
task_default_queue = "provision"
# an operation's steps go to the queue its declaration names (app/operations.py); the other tasks by name
task_routes = (operations.step_routes(), {
    "warmpool.failover.trigger": {"queue": "failover"},
    "warmpool.health.*": {"queue": "health"},
    "warmpool.heal.*": {"queue": "health"},
    "warmpool.reconcile.*": {"queue": "health"},
    "warmpool.rebuild.*": {"queue": "health"},
    # deliveries wait on other people's servers: never in the failover or health queues
    "warmpool.webhooks.*": {"queue": "webhooks"},
})

beat_schedule = {
    "health-sweep": {"task": "warmpool.health.sweep", "schedule": _sweep, "options": {"expires": _sweep}},
    # planned switchovers start within a sweep interval of their time
    "switchovers": {"task": "warmpool.health.switchovers", "schedule": _sweep, "options": {"expires": _sweep}},
    "heal": {"task": "warmpool.heal.heal", "schedule": _settings.heal_interval,
             "options": {"expires": _settings.heal_interval}},
    "reconcile": {"task": "warmpool.reconcile.reconcile", "schedule": _settings.reconcile_interval,
                  "options": {"expires": 60}},
    # rentals that end, and replicas on other hosts: on the provision queue, so their calls never go before a
    # failover's (rule 7)
    "expiry-check": {"task": "warmpool.expiry.check", "schedule": _expiry, "options": {"expires": _expiry}},
    "replica-upkeep": {"task": "warmpool.replica.upkeep", "schedule": _replicas, "options": {"expires": _replicas}},
    # the webhook outbox into delivery tasks: a second at most between an event and its first attempt
    "webhook-relay": {"task": "warmpool.webhooks.relay", "schedule": 1.0, "options": {"expires": 1.0}},
}
