"""The Celery app: workers run the provider steps, beat runs the sweeps.

Start a worker with ``celery -A tasks worker -Q failover,provision,health``.
"""

from celery import Celery

celery_app = Celery("warmpool")
celery_app.config_from_object("celeryconfig")
