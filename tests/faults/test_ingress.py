"""What the API lets in, on real processes (gunicorn as the Procfile runs it, workers, the simulator): replayed
notifications, a flood of ``?wait`` requests, a body past MAX_CONTENT_LENGTH. None of them delays another tenant."""

import concurrent.futures
import hashlib
import hmac
import json
import signal
import socket
import urllib.parse

import requests

from app.store import keys
from tests.conftest import ENV, wait_until
from tests.faults.test_faults import free_hosts, provisioned

NOTIFICATIONS = "/api/v1/provider/notifications"
KEYS = {"acme": {"Authorization": "Bearer acme-key"}, "globex": {"Authorization": "Bearer globex-key"}}


def signed(body: dict) -> dict:
    raw = json.dumps(body).encode()
    digest = hmac.new(ENV["VAST_WEBHOOK_SECRET"].encode(), raw, hashlib.sha256).hexdigest()
    return {"data": raw, "headers": {"Content-Type": "application/json", "X-Vast-Signature-256": f"sha256={digest}"}}


def events(stack, pid: str, kind: str) -> list[dict]:
    return [e for e in stack.store.events(pid) if e["event"] == kind]


def test_replayed_notifications_beside_a_real_failure_of_another_tenants_pool(clean_stack):
    stack = clean_stack
    url = stack.http()
    provisioned(stack, [201])
    host = free_hosts(stack, 2)[1]
    rv = stack.api("POST", "/api/v1/warmpool/provision", tenant="globex",
                   json={"machine_id": 202, "host_machine_id": host, "gpu_name": "RTX_4090"})
    assert stack.wait_task(rv.json["task_id"])["state"] == "SUCCESS"
    stack.wait_state(202, "active", tenant="globex")
    # a captured "offline" of acme's healthy primary, sent again and again, and with its fields varied
    offline = {"event": "instance_offline", "instance_id": stack.pool(201)["primary_gpu_id"]}
    actions = [requests.post(url + NOTIFICATIONS, timeout=10, **signed(body)).json()["action"]
               for body in [offline] * 12 + [{**offline, "seq": n} for n in range(12)]]
    assert actions[0] == "failover check" and not any(a == "failover check" for a in actions[1:]), actions
    wait_until(lambda: events(stack, "acme:201", "failover_cancelled"), timeout=30, message="the check to cancel")
    globex = stack.pool(202, "globex")["primary_gpu_id"]
    stack.sim("POST", f"/_sim/instances/{globex}/fail")  # meanwhile a real failure of another tenant's pool
    wait_until(lambda: (p := stack.pool(202, "globex"))["failover_count"] == 1 and p["state"] == "active",
               timeout=30, message="globex's failover")
    assert stack.pool(202, "globex")["primary_gpu_id"] != globex
    assert not events(stack, "globex:202", "failover_cap_exceeded")  # the false ones took no slot
    assert stack.redis.zcard(keys.FAILOVERS) == 1  # only the confirmed failure counted against the cap
    assert stack.pool(201)["failover_count"] == 0 and len(events(stack, "acme:201", "provider_notice")) == 1


def test_a_wait_flood_never_starves_healthz_or_another_tenant(clean_stack):
    stack = clean_stack
    url = stack.http()
    stack.worker.signal(signal.SIGSTOP)  # nothing ends: every ?wait would hold its web thread for all its wait
    try:
        with concurrent.futures.ThreadPoolExecutor(40) as pool:
            flood = [pool.submit(requests.post, f"{url}/api/v1/warmpool/provision?wait=60", timeout=90,
                                 headers=KEYS["acme"], json={"machine_id": 300 + n, "host_machine_id": 1})
                     for n in range(40)]  # more than gunicorn's 2 x 16 threads
            wait_until(lambda: sum(f.done() for f in flood) == 36, timeout=60, message="the 202s past the cap")
            assert stack.store.wait_holders("acme") == 4 == stack.store.wait_holders()  # WAIT_MAX_HOLDERS_PER_TENANT
            assert requests.get(url + "/healthz", timeout=10).json() == {"status": "ok"}
            assert requests.get(url + "/readyz", timeout=10).status_code in (200, 503)  # answers; no worker is seen
            other = requests.get(url + "/api/v1/warmpool/pools", headers=KEYS["globex"], timeout=10)
            assert other.status_code == 200 and other.json()["count"] == 0
            for key in stack.redis.scan_iter(keys.op("*")):  # the operations end: the four waiting answer at once
                stack.store.update_op(key.removeprefix(keys.op("")), state="FAILURE", error="ended by the test")
            answers = [f.result() for f in flood]
    finally:
        stack.redis.flushdb()  # what the frozen workers would have provisioned
        stack.worker.signal(signal.SIGCONT)
    assert sorted(a.status_code for a in answers) == [200] * 4 + [202] * 36
    assert all(urllib.parse.urlparse(a.headers["Location"]).path == f"/api/v1/tasks/{a.json()['task_id']}"
               for a in answers if a.status_code == 202)
    assert stack.store.wait_holders() == 0


def test_a_5mb_body_is_refused_before_it_is_read(clean_stack):
    address = urllib.parse.urlparse(clean_stack.http())
    with socket.create_connection((address.hostname, address.port), timeout=20) as conn:
        # the headers announce 5 MB; only 64 KiB follow: an answer now means the rest was never waited for
        conn.sendall(f"POST {NOTIFICATIONS} HTTP/1.1\r\nHost: {address.netloc}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {5 << 20}\r\n\r\n".encode() + b"x" * (64 << 10))
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), answer[:300]
    assert json.loads(body)["code"] == 413 and "MAX_CONTENT_LENGTH" in json.loads(body)["message"]
