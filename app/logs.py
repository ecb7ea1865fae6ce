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


# where Celery logs, at INFO, each task that beat sends, a worker receives, discards (expired) and finishes
CELERY_TASK_LOGGERS = ("celery.beat", "celery.worker.strategy", "celery.worker.request", "celery.app.trace")


class RoutineAtDebug(logging.Filter):
    """Celery's per-task INFO lines for the beat schedule's routine tasks, demoted to DEBUG.

    A relay every second and a sweep every 2 s make several such lines a second, which bury every
    other line (and `warmpool dev`'s banner). Celery has no per-task log level, so this filter, put on
    its loggers, relabels them: shown with ``-l DEBUG``, dropped at INFO. Every other task keeps INFO.
    """

    def __init__(self, routine_tasks: set[str]):
        super().__init__()
        self.routine_tasks = routine_tasks

    def names(self, record: logging.LogRecord) -> set:
        """The task names a record is about: beat's ``(entry, task)`` arguments, a worker's ``data``."""
        data = getattr(record, "data", None)
        named = {data.get("name")} if isinstance(data, dict) else set()
        return named | (set(record.args) if isinstance(record.args, tuple) else set())

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or not self.names(record) & self.routine_tasks:
            return True
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


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
