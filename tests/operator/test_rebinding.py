"""DNS rebinding through a real webhooks worker (issue 18): the name a webhook calls resolves, by a resolver the
test controls (tests/operator/resolver/sitecustomize.py, on the worker's PYTHONPATH), first to a public address
that the SSRF check allows, then to 127.0.0.1, where a receiver waits. The delivery goes to the address checked,
or is refused by the next attempt's check; it never reaches the rebound address."""

import json
import os
from pathlib import Path

import pytest

from app.processes import wait_until
from tests.conftest import Worker

RESOLVER_DIR = Path(__file__).resolve().parent / "resolver"
NAME = "rebind.test"
PUBLIC = "93.184.216.34"  # global, so the check allows it; the test's resolver refuses a connection to it
REBOUND = "127.0.0.1"  # where the receiver is: loopback, which the check refuses (private addresses not allowed)


@pytest.fixture
def rebinding_worker(clean_stack, webhooks_worker, tmp_path):
    """A webhooks worker as the Procfile runs one, private addresses NOT allowed, resolving through the test's
    resolver (its answers and what it saw in ``tmp_path``). The session's webhooks worker (private addresses
    allowed, the system's resolver) is stopped meanwhile, so that no delivery goes to it, then started again."""
    webhooks_worker.stop()
    resolver = tmp_path / "resolver.json"
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(RESOLVER_DIR), os.environ.get("PYTHONPATH")])),
           "WARMPOOL_TEST_RESOLVER": str(resolver), "WEBHOOK_TIMEOUT": "3", "WEBHOOK_RETRY_SCHEDULE": "0,0"}
    worker = Worker("worker", "-Q", "webhooks", "--pool", "threads", "--concurrency", "4", "-l", "INFO",
                    "-n", "rebinding@%h", "--without-mingle", "--without-gossip",
                    log=clean_stack.logs / "rebinding-worker.log", **env)
    worker.resolver = resolver
    yield worker
    worker.stop()
    webhooks_worker.start()


def seen(resolver: Path) -> list[dict]:
    log = Path(str(resolver) + ".log")
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.mark.timeout(90)
def test_dns_rebinding_through_the_webhooks_worker_never_reaches_the_rebound_address(clean_stack, rebinding_worker,
                                                                                      receiver):
    port = int(receiver.url.rsplit(":", 1)[1])
    rebinding_worker.resolver.write_text(json.dumps({"name": NAME, "answers": [PUBLIC, REBOUND], "port": port,
                                                           "refused": [PUBLIC]}))
    rebinding_worker.start()
    hook = clean_stack.store.add_webhook("acme", f"http://{NAME}:{port}/rebound?token=t", None)
    clean_stack.store.event("acme:1", "healed", "the host has a free GPU again")

    delivery = wait_until(lambda: (d := clean_stack.store.deliveries(hook["id"])) and d[0]["state"] != "pending"
                          and d[0], timeout=60, message="the delivery to end")
    assert receiver.at("/rebound?token=t") == [], "a delivery reached the rebound address"
    assert delivery["state"] == "failed"
    first, second = delivery["attempts"]
    # the first attempt's check got the public address and passed; it connected there, and nowhere else
    assert first["status_code"] is None and "loopback" not in first["error"], first
    # the second attempt's check got the rebound address and refused it before connecting
    assert second["status_code"] is None and "loopback, private or link-local" in second["error"], second
    assert seen(rebinding_worker.resolver) == [{"lookup": NAME, "answer": PUBLIC}, {"connect": PUBLIC, "port": port},
                                              {"lookup": NAME, "answer": REBOUND}]
    assert clean_stack.violations() == []  # and clean_stack's own end: never two instances up on one volume
