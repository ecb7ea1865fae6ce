"""Fixtures for the operator tools: the API under gunicorn and a webhooks worker, both allowed to call
127.0.0.1 (WARMPOOL_WEBHOOK_ALLOW_PRIVATE=1 for them alone), and a webhook receiver on 127.0.0.1 that
checks every delivery with standardwebhooks' own verify.
"""

import socketserver
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from app.processes import free_port, listening, wait_until
from tests.conftest import API_KEYS, Worker

ALLOW_PRIVATE = {"WARMPOOL_WEBHOOK_ALLOW_PRIVATE": "1"}
# a delivery retried fast, three attempts in all, so a test sees the whole story in seconds; an attempt's
# deadline and the attempts in flight per tenant small enough for a slow receiver to reach both
FAST_RETRIES = {"WEBHOOK_RETRY_SCHEDULE": "0,1,1"}
DELIVERY_LIMITS = {"WEBHOOK_TIMEOUT": "4", "WEBHOOK_CONCURRENCY_PER_TENANT": "2"}


@pytest.fixture(scope="session")
def web(stack):
    """The API as the Procfile runs it, logging every request (to show what the server was sent)."""
    port = free_port()
    process = Worker("--bind", f"127.0.0.1:{port}", "--worker-class", "gthread", "--workers", "2", "--threads", "8",
                     "--access-logfile", "-", "app:create_app()", log=stack.logs / "operator-web.log",
                     program=(sys.executable, "-m", "gunicorn"), **ALLOW_PRIVATE).start()
    wait_until(lambda: listening(port), message="gunicorn to listen")
    yield Web(f"http://127.0.0.1:{port}", stack.logs / "operator-web.log")
    process.stop()


class Web:
    def __init__(self, url, log):
        self.url, self.log = url, log

    def api(self, method: str, path: str, tenant: str = "acme", **kwargs) -> requests.Response:
        headers = {"Authorization": f"Bearer {API_KEYS[tenant]}"}
        return requests.request(method, self.url + path, headers=headers, timeout=150, **kwargs)


@pytest.fixture(scope="session")
def webhooks_worker(stack):
    """A worker on the webhooks queue alone, as the Procfile's ``webhooks`` line runs it."""
    worker = Worker("worker", "-Q", "webhooks", "--pool", "threads", "--concurrency", "4", "-l", "INFO",
                    "-n", "webhooks@%h", "--without-mingle", "--without-gossip",
                    log=stack.logs / "webhooks-worker.log", **ALLOW_PRIVATE, **FAST_RETRIES,
                    **DELIVERY_LIMITS).start()
    yield worker
    worker.stop()


class Receiver:
    """A webhook endpoint: each path answers the status codes it is given in turn (then 204; a
    ``(status, headers)`` pair adds headers), verifies each request with the secret registered for it,
    and keeps what came."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.answers: dict[str, list[int | tuple[int, dict]]] = {}
        self.secrets: dict[str, str] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.receive(self.path, dict(self.headers), body)
                with receiver.lock:
                    answers = receiver.answers.get(self.path) or [204]
                    answer = answers.pop(0) if len(answers) > 1 else answers[0]
                status, headers = answer if isinstance(answer, tuple) else (answer, {})
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                if 300 <= status < 400:
                    self.send_header("Location", "/redirected")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def receive(self, path: str, headers: dict, body: bytes) -> None:
        request = {"path": path, "headers": {k.lower(): v for k, v in headers.items()}, "body": body}
        try:
            request["payload"] = Webhook(self.secrets[path]).verify(body, headers)
        except (KeyError, WebhookVerificationError) as exc:
            request["error"] = repr(exc)
        with self.lock:
            self.requests.append(request)

    def at(self, path: str) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if r["path"] == path]

    def subscribe(self, web: Web, path: str, tenant: str = "acme", **body) -> dict:
        rv = web.api("POST", "/api/v1/webhooks", tenant=tenant, json={"url": self.url + path, **body})
        assert rv.status_code == 201, rv.text
        self.secrets[path] = rv.json()["secret"]
        return rv.json()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


class Trickler:
    """A slow-loris receiver: it reads a request, sends a status line, then one header byte every
    ``pace`` seconds until the sender hangs up (or ``limit`` bytes); it counts the connections it holds
    open, their most at once, and the most bytes it trickled into one."""

    def __init__(self, pace: float = 0.5, limit: int = 40):
        self.lock, self.closing = threading.Lock(), threading.Event()
        self.open = self.most_open = self.requests = self.most_trickled = 0
        trickler = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                with trickler.lock:
                    trickler.open += 1
                    trickler.requests += 1
                    trickler.most_open = max(trickler.most_open, trickler.open)
                try:
                    self.request.recv(65536)
                    self.request.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                    for trickled in range(1, limit + 1):
                        if trickler.closing.wait(pace):
                            break
                        self.request.sendall(b"x")
                        with trickler.lock:
                            trickler.most_trickled = max(trickler.most_trickled, trickled)
                except OSError:
                    pass  # the sender gave up: what this receiver is for
                finally:
                    with trickler.lock:
                        trickler.open -= 1

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads, block_on_close, allow_reuse_address = True, False, True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def trickler():
    t = Trickler()
    yield t
    t.close()


def provisioned(web: Web, stack, machine_id: int, tenant: str = "acme", failovers: int = 0) -> dict:
    """A tenant's active pool on the first host that can hold one, after ``failovers`` failover tests."""
    hosts = web.api("GET", "/api/v1/warmpool/hosts", tenant=tenant).json()["hosts"]
    host = next(h for h in hosts if h["can_create_warm_pool"])
    rv = web.api("POST", "/api/v1/warmpool/provision?wait=60", tenant=tenant,
                 json={"machine_id": machine_id, "host_machine_id": host["machine_id"]})
    assert rv.status_code == 200 and rv.json()["success"], rv.text
    for _ in range(failovers):
        stack.wait_state(machine_id, "active", tenant=tenant)
        rv = web.api("POST", f"/api/v1/warmpool/failover/test/{machine_id}?wait=60", tenant=tenant)
        assert rv.status_code == 200 and rv.json()["success"], rv.text
    return stack.wait_state(machine_id, "active", tenant=tenant)
