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

    Compare-and-set: ``update_op`` reads the record and writes it back with ``fields`` in a transaction that
    WATCHes it (retried when it changed in between), so the operation's context that a step's advance wrote
    there (``save_pool``, which WATCHes it too) is never overwritten by an older copy; an ended operation
    (OP_ENDED) keeps its outcome and only its ``step`` still changes; the write that ends it publishes on the
    channel.

    Unconditional write: ``new_op`` (a new id, a new record).

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
        key = keys.op(op_id)

        def write(pipe: redis.client.Pipeline) -> None:
            raw = pipe.get(key)
            if raw is None:
                return
            op = json.loads(raw)
            changed = fields
            if op["state"] in OP_ENDED:
                # an ended operation keeps its outcome; only the step of its follow-up work still shows
                # (a failover's standby replacement)
                changed = {"step": fields["step"]} if "step" in fields else {}
                if not changed:
                    return
            op.update(changed, updated_at=now_iso())
            pipe.multi()
            pipe.set(key, json.dumps(op), ex=OP_TTL)
            if changed.get("state") in OP_ENDED:
                pipe.publish(keys.op_done(op_id), op["state"])

        # WATCHed: a step's context saved meanwhile (``save_pool``) is never written back over with an older one
        self.r.transaction(write, key)

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
