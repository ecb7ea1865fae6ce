"""The operation records: what ``GET /api/v1/tasks/<id>`` shows of a provision, failover or cleanup."""

import json
import time
import uuid

import redis

from app.pools import now_iso
from app.store import keys

OP_TTL = 7 * 24 * 3600
OP_ENDED = ("SUCCESS", "FAILURE")


class OperationRecords:
    """The operations' repository (mixed into ``Store``): one JSON record per operation, kept OP_TTL.

    Keys: ``keys.op(op_id)`` the record (``task_id``, ``tenant``, ``machine_id``, ``operation``, ``state``,
    ``step``, ``result``, ``error``, times); the channel ``keys.op_done(op_id)`` says when it ended.

    No method here is a compare-and-set: the record is written by whoever runs the operation (its steps, under
    the machine's lock), and the write itself compares nothing.

    Unconditional writes: ``new_op`` (a new id, a new record); ``update_op`` reads the record and writes it back
    with ``fields`` (the last write wins), except that an ended operation (OP_ENDED) keeps its outcome and only
    its ``step`` still changes; the write that ends it publishes on the channel.

    Plain reads: ``get_op``; ``wait_op`` reads until the record ends or its timeout passes, woken by the channel.
    """

    r: redis.Redis

    def new_op(self, tenant: str, machine_id: int, operation: str) -> str:
        op_id = uuid.uuid4().hex
        self.r.set(keys.op(op_id), json.dumps({
            "task_id": op_id, "tenant": tenant, "machine_id": machine_id, "operation": operation,
            "state": "PENDING", "step": "queued", "result": None, "error": None,
            "created_at": now_iso(), "updated_at": now_iso()}), ex=OP_TTL)
        return op_id

    def get_op(self, op_id: str) -> dict | None:
        raw = self.r.get(keys.op(op_id))
        return json.loads(raw) if raw else None

    def update_op(self, op_id: str, **fields) -> None:
        op = self.get_op(op_id)
        if op is None:
            return
        if op["state"] in OP_ENDED:
            # an ended operation keeps its outcome; only the step of its follow-up work still shows
            # (a failover's standby replacement)
            fields = {"step": fields["step"]} if "step" in fields else {}
            if not fields:
                return
        op.update(fields, updated_at=now_iso())
        self.r.set(keys.op(op_id), json.dumps(op), ex=OP_TTL)
        if fields.get("state") in OP_ENDED:
            self.r.publish(keys.op_done(op_id), op["state"])

    def wait_op(self, op_id: str, timeout: float) -> dict | None:
        """Block until the operation ends or ``timeout`` passes; return the record."""
        deadline = time.monotonic() + timeout
        pubsub = self.r.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(keys.op_done(op_id))
        try:
            while True:
                op = self.get_op(op_id)  # read after subscribing, so no end is missed
                left = deadline - time.monotonic()
                if op is None or op["state"] in OP_ENDED or left <= 0:
                    return op
                pubsub.get_message(timeout=min(left, 1.0))
        finally:
            pubsub.close()
