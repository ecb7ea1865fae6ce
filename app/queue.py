"""The Celery app, as the web process sees it: a producer that sends tasks by name.

The web process never imports ``tasks/`` (the steps, the beat tasks, the worker's kombu patch): it sends a task
by its name, and ``celeryconfig.task_routes`` picks the queue: a step's from its operation's declaration
(``app/operations.py``), any other task's by name. The workers register their tasks on this same app
(``tasks/__init__.py``).
"""

from celery import Celery

celery_app = Celery("warmpool")
celery_app.config_from_object("celeryconfig")


def enqueue(name: str, *args, **kwargs) -> None:
    """Send the task called ``name`` with these arguments."""
    celery_app.send_task(name, args, kwargs)
