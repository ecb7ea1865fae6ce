"""Fakes for unit tests: a fakeredis-backed Store, recorded enqueueing, a fake provider, the app.

The service reads its store and provider through ``functools.cache`` functions
imported into each module (``from app.runtime import store``), so the fakes are
put in place by replacing those module attributes. Every way of enqueueing work
is recorded instead of sent, including any ``Task.apply_async`` nobody expected.
"""

import importlib
from dataclasses import dataclass, field

import fakeredis
import pytest
from celery.app.task import Task

from app.settings import Settings
from app.store import ACTIVE, Store, new_pool, pool_id, split_pool_id

REAL_LAUNCH = importlib.import_module("tasks.failover").launch  # before any test replaces it
KEYS = {"acme": "acme-key", "globex": "globex-key"}  # as tests/conftest.py sets WARMPOOL_API_KEYS

# the modules that call store() / vast() and must see the fakes
STORE_USERS = ("app.api.warmpool", "app.api.auth", "app.api.tasks", "app.api.probes",
               "tasks.health", "tasks.failover", "tasks.cleanup", "tasks.base")


def fake_store() -> Store:
    return Store(fakeredis.FakeRedis(decode_responses=True))


def snapshot(r) -> dict:
    """Every key of a Redis with its type and value, to compare before and after a request."""
    out = {}
    for key in r.keys("*"):
        kind = r.type(key)
        if kind == "string":
            value = r.get(key)
        elif kind == "hash":
            value = r.hgetall(key)
        elif kind == "set":
            value = sorted(r.smembers(key))
        elif kind == "list":
            value = r.lrange(key, 0, -1)
        elif kind == "zset":
            value = r.zrange(key, 0, -1, withscores=True)
        else:
            value = kind
        out[key] = (kind, value)
    return out


class FakeVast:
    """A provider for the API's hosts route: records searches, answers ``offers`` or raises ``error``."""

    def __init__(self):
        self.offers: list[dict] = []
        self.error: Exception | None = None
        self.searches: list[dict] = []

    def search_offers(self, query: dict) -> list[dict]:
        self.searches.append(query)
        if self.error:
            raise self.error
        return self.offers


@dataclass
class FakeEnv:
    store: Store
    vast: FakeVast
    client: object
    enqueued: list = field(default_factory=list)

    @property
    def r(self):
        return self.store.r

    def api(self, method: str, path: str, tenant: str | None = "acme", key: str | None = None, **kwargs):
        headers = dict(kwargs.pop("headers", {}) or {})
        if key is not None:
            headers["Authorization"] = key
        elif tenant is not None:
            headers["Authorization"] = f"Bearer {KEYS[tenant]}"
        return self.client.open(path, method=method, headers=headers, **kwargs)

    def reset(self):
        self.r.flushall()
        self.enqueued.clear()
        self.vast.searches.clear()
        self.vast.error = None

    def add_pool(self, machine_id: int, tenant: str = "acme", **fields) -> dict:
        """Write a pool as its lock holder would (fenced), and leave the lock free."""
        pid = pool_id(tenant, machine_id)
        pool = new_pool(tenant, machine_id, **{
            "state": ACTIVE, "host_machine_id": 88888, "volume_id": 12345, "primary_gpu_id": 1000 + machine_id,
            "standby_gpu_id": 2000 + machine_id, "standby_state": "stopped", "primary_ssh_host": "ssh4.vast.ai",
            "primary_ssh_port": 12345, **fields})
        held = self.store.acquire(pid, 10)
        self.store.save_pool(pool, held)
        self.store.release(pid, held, 10)
        return self.store.get_pool(pid)

    def hold_lock(self, machine_id: int, tenant: str = "acme"):
        """Take a machine's lock as a running operation would."""
        held = self.store.acquire(pool_id(tenant, machine_id), 30)
        assert held is not None
        return held

    def kinds(self) -> list[str]:
        return [e[0] for e in self.enqueued]


def install(monkeypatch, env: FakeEnv) -> None:
    """Point every module at the fakes and record every enqueue instead of sending it."""
    for name in STORE_USERS:
        monkeypatch.setattr(importlib.import_module(name), "store", lambda: env.store)
    monkeypatch.setattr(importlib.import_module("app.api.warmpool"), "vast", lambda: env.vast)

    provision = importlib.import_module("tasks.provision")
    failover = importlib.import_module("tasks.failover")
    cleanup = importlib.import_module("tasks.cleanup")

    class Chain:
        def __init__(self, search=False):
            self.search = search

        def delay(self, ctx):
            env.enqueued.append(("provision", {"search": self.search, **ctx}))

    def launch(s, pid, held, trigger, detected_at=None, triggered_at=None, op_id=None):
        tenant, machine_id = split_pool_id(pid)
        op_id = op_id or s.new_op(tenant, machine_id, "failover")
        env.enqueued.append(("failover", {"pid": pid, "trigger": trigger, "epoch": held.epoch, "op_id": op_id}))
        return op_id

    monkeypatch.setattr(provision, "provision_chain", Chain)
    monkeypatch.setattr(failover, "launch", launch)
    monkeypatch.setattr(cleanup, "start_cleanup", lambda ctx: env.enqueued.append(("cleanup", ctx)))
    monkeypatch.setattr(cleanup.when_unlocked, "delay",
                        lambda pid, operation, op_id: env.enqueued.append(
                            ("when_unlocked", {"pid": pid, "operation": operation, "op_id": op_id})))
    monkeypatch.setattr(failover.trigger, "delay",
                        lambda pid, primary, detected_at, triggered_at=None: env.enqueued.append(
                            ("trigger", {"pid": pid, "primary": primary, "detected_at": detected_at})))
    health = importlib.import_module("tasks.health")
    monkeypatch.setattr(health.check_capacity, "delay", lambda: env.enqueued.append(("check_capacity", {})))

    # anything else that would reach the broker is recorded too (and would fail "nothing enqueued")
    def apply_async(self, args=None, kwargs=None, **options):
        env.enqueued.append(("apply_async", {"task": self.name, "args": args}))

    monkeypatch.setattr(Task, "apply_async", apply_async)


def make_env(monkeypatch) -> FakeEnv:
    from app import create_app

    env = FakeEnv(store=fake_store(), vast=FakeVast(), client=None)
    install(monkeypatch, env)
    env.client = create_app().test_client()  # not TESTING: a 500 is answered, as in production
    return env


def settings(**overrides) -> Settings:
    return Settings(**{"lock_ttl": 10.0, "failover_threshold": 3, "health_check_interval": 10.0,
                       "capacity_check_interval": 3600.0, **overrides})


@pytest.fixture
def env(monkeypatch) -> FakeEnv:
    return make_env(monkeypatch)


@pytest.fixture
def store() -> Store:
    return fake_store()
