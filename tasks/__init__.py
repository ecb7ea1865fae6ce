"""The Celery app: workers run the provider steps, beat runs the sweeps.

Start a worker with ``celery -A tasks worker -Q failover,provision,health``.
"""

import logging

from celery.signals import celeryd_init, heartbeat_sent, setup_logging, task_postrun, task_prerun, worker_ready
from kombu.transport import redis as kombu_redis

from app import logs
from app.queue import celery_app


class _QoS(kombu_redis.QoS):
    """kombu 5.7's Redis QoS, minus crashes when Redis restarts.

    After a reconnect, the old channel's connection is gone: acknowledging or
    restoring through it raises AttributeError and stops the worker
    ("Unrecoverable error"). Skipping that is safe here: unacknowledged messages
    stay in Redis and come back after the visibility timeout, and a step delivered
    twice is ignored (tasks/base.py).
    """

    def _connected(self) -> bool:
        return self.channel.connection is not None and self.channel.connection.client is not None

    def restore_unacked_once(self, stderr=None):
        return super().restore_unacked_once(stderr) if self._connected() else None

    def ack(self, delivery_tag):
        return super().ack(delivery_tag) if self._connected() else None

    def reject(self, delivery_tag, requeue=False):
        return super().reject(delivery_tag, requeue) if self._connected() else None


kombu_redis.Channel.QoS = _QoS

# the sweeps and the relay that beat sends every second or two, and the capacity check that the sweep sends
# every 30 s, log at DEBUG, not INFO (app/logs.py)
_routine_at_debug = logs.RoutineAtDebug({entry["task"] for entry in celery_app.conf.beat_schedule.values()}
                                        | {"warmpool.health.check_capacity"})
for _name in logs.CELERY_TASK_LOGGERS:
    logging.getLogger(_name).addFilter(_routine_at_debug)


@task_prerun.connect
def _urgency(task=None, **_):
    """Failover and health steps take the provider's rate budget before provisioning does."""
    from app.runtime import urgent

    urgent.set((task.request.delivery_info or {}).get("routing_key") in ("failover", "health"))


@task_prerun.connect
def _log_context(args=None, **_):
    """The records a step logs carry its operation: the API's task_id, the tenant and the machine_id."""
    logs.operation.set(logs.operation_fields(args or ()))


@task_postrun.connect
def _log_context_end(**_):
    logs.operation.set({})  # the thread runs other tasks next


if logs.log_format() == "json":
    @setup_logging.connect
    @celeryd_init.connect  # earlier: before the worker's first warning
    def _json_logs(loglevel=None, **_):
        """WARMPOOL_LOG_FORMAT=json: one JSON object per line, in place of Celery's own text format."""
        logs.configure_json(loglevel or "INFO")


@heartbeat_sent.connect
def _seen(**_):
    """Tell /readyz that a worker is consuming."""
    from app import runtime

    runtime.store().mark_worker_seen()


@worker_ready.connect
def _ready(**_):
    """Tell `warmpool dev` that Flower may start: the worker's first heartbeat comes before its control
    queue consumes, and Flower's inspect calls sent in between are never answered."""
    from app import runtime

    runtime.store().mark_worker_seen(ready=True)
