"""Celery settings, read from the environment (``python -m celeryconfig`` checks the syntax).

Every task is short: one provider step. Waits are retries with a countdown, so a
killed worker's message comes back after ``visibility_timeout`` and the step runs
again (steps are idempotent).
"""

import os

_redis = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
_sweep = float(os.environ.get("HEALTH_CHECK_INTERVAL", "10"))

broker_url = os.environ.get("CELERY_BROKER_URL", _redis)
broker_connection_retry_on_startup = True
broker_transport_options = {
    # longer than any one step (a provider call is bounded at 60 s) plus a retry's countdown
    "visibility_timeout": float(os.environ.get("CELERY_VISIBILITY_TIMEOUT", "300")),
    "unacked_restore_interval": 1,
    "unacked_restore_throttle": 1,
}
imports = ("tasks.provision", "tasks.failover", "tasks.cleanup", "tasks.health")

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

# failover is never starved by a provisioning backlog (design rule 7)
task_default_queue = "provision"
task_routes = {
    "warmpool.failover.*": {"queue": "failover"},
    "warmpool.health.*": {"queue": "health"},
}

beat_schedule = {
    "health-sweep": {"task": "warmpool.health.sweep", "schedule": _sweep, "options": {"expires": _sweep}},
    "heal": {"task": "warmpool.health.heal",
             "schedule": float(os.environ.get("HEAL_INTERVAL", "60")), "options": {"expires": 30}},
    "reconcile": {"task": "warmpool.health.reconcile",
                  "schedule": float(os.environ.get("RECONCILE_INTERVAL", "300")), "options": {"expires": 60}},
}
