"""The Celery app: workers run the provider steps, beat runs the sweeps.

Start a worker with ``celery -A tasks worker -Q failover,provision,health``.
"""

import time

from celery import Celery
from celery.signals import heartbeat_sent, worker_ready

celery_app = Celery("warmpool")
celery_app.config_from_object("celeryconfig")


@heartbeat_sent.connect
@worker_ready.connect
def _seen(**_):
    """Tell /readyz that a worker is consuming."""
    from app.runtime import store

    store().r.set("wp:worker:seen", time.time(), ex=60)
