"""Log records as readable text (the default) or, with WARMPOOL_LOG_FORMAT=json, one JSON object per line.

gunicorn (``gunicorn.conf.py``), the Celery workers and beat (``tasks/__init__.py``) take the same
configuration. A JSON record has time, level, logger and message; a record logged while a step of
an operation runs also has the API's task_id, the tenant and the machine_id, so one query follows
an operation across the processes that ran its steps.
"""

import contextvars
import logging
import logging.config
import re

from app import runtime

# the fields of the operation this thread works on; set around each task (tasks/__init__.py)
operation: contextvars.ContextVar[dict] = contextvars.ContextVar("operation", default={})

POOL_ID = re.compile(r"(?P<tenant>.+):(?P<machine_id>\d+)")


def log_format() -> str:
    """``text`` or ``json`` (WARMPOOL_LOG_FORMAT), read before anything logs: by gunicorn's and Celery's set-up."""
    return runtime.settings().log_format


def operation_fields(args: tuple | list) -> dict:
    """The log fields of a task called with ``args``: a step's context dict, or a pool id first."""
    first = args[0] if args else None
    fields = {}
    if isinstance(first, dict) and "pid" in first:
        fields["task_id"] = first.get("op_id")
        first = first["pid"]
    match = POOL_ID.fullmatch(first) if isinstance(first, str) else None
    if match is None:
        return {}
    return {**fields, "tenant": match["tenant"], "machine_id": int(match["machine_id"])}


class OperationFields(logging.Filter):
    """Gives each record the fields of the operation running in its thread, if any."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in operation.get().items():
            record.__dict__.setdefault(name, value)
        return True


def json_config(level: str | int = "INFO") -> dict:
    """A ``logging.config.dictConfig`` for JSON lines: records on stderr, gunicorn's access log on stdout."""
    handler = {"class": "logging.StreamHandler", "formatter": "json", "filters": ["operation"]}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"operation": {"()": OperationFields}},
        "formatters": {"json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(levelname)s %(name)s %(message)s",
            "rename_fields": {"levelname": "level", "name": "logger"},
            "timestamp": "time",  # ISO 8601, UTC
        }},
        "handlers": {"stderr": {**handler, "stream": "ext://sys.stderr"},
                     "stdout": {**handler, "stream": "ext://sys.stdout"}},
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            # gunicorn's two loggers, named as gunicorn's own logconfig_dict names them
            "gunicorn.error": {"level": level, "handlers": [], "propagate": True},
            "gunicorn.access": {"level": "INFO", "handlers": ["stdout"], "propagate": False},
        },
    }


def configure_json(level: str | int = "INFO") -> None:
    logging.config.dictConfig(json_config(level))
    logging.captureWarnings(True)  # a warning is a record too, not a bare line on stderr
