"""A webhook delivery's retries follow the settings read when it runs (WEBHOOK_MAX_ATTEMPTS, WEBHOOK_RETRY_BACKOFF),
not values frozen when tasks/webhooks.py was imported."""

import pytest
from celery.exceptions import Retry

from app.pools import now_iso
from tasks import webhooks


def attempt(task, delivery_id: str, retries: int):
    """Run the delivery task as a worker runs its attempt number ``retries + 1``."""
    task.push_request(id="delivery", called_directly=False, retries=retries, args=[delivery_id], kwargs={},
                      delivery_info={"redelivered": False, "routing_key": "webhooks"})
    try:
        return task(delivery_id)
    finally:
        task.pop_request()


@pytest.fixture
def failing_delivery(env, monkeypatch) -> str:
    """A delivery of a failover event to a subscriber that answers 503 every time."""
    hook = env.store.add_webhook("acme", "https://hooks.example/warmpool", None)
    with env.r.pipeline() as pipe:
        env.store.queue_webhook_deliveries(pipe, "acme:1", {"event": "failover_started", "at": now_iso()})
        pipe.execute()
    monkeypatch.setattr(webhooks, "post", lambda *_: {"at": now_iso(), "status_code": 503, "error": "HTTP 503",
                                                       "duration_ms": 1.0})
    delivery, = env.store.deliveries(hook["id"])
    return delivery["id"]


def test_a_failed_attempt_is_retried_after_the_backoff_until_the_attempts_of_the_settings(env, failing_delivery):
    env.configure(webhook_max_attempts=2, webhook_retry_backoff=30)
    with pytest.raises(Retry):
        attempt(webhooks.deliver, failing_delivery, retries=0)
    retried, = [options for name, options in env.enqueued if name == "apply_async"]
    assert retried["task"] == "warmpool.webhooks.deliver" and 0 <= retried["countdown"] <= 30
    assert attempt(webhooks.deliver, failing_delivery, retries=1) == "failed"  # the second of 2: given up
    assert [a["status_code"] for a in env.store.get_delivery(failing_delivery)["attempts"]] == [503, 503]
