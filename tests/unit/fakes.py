"""Fakes for unit and API tests: a fakeredis-backed Store, a provider in memory, recorded enqueueing, the app.

The service reads its settings, store and provider through the ``functools.cache``
functions of ``app.runtime``, always looked up on that module (``runtime.store()``;
a step's ``op.store``, ``op.settings`` and ``op.vast`` come from them too), so the
fakes are put in place by replacing those three there alone (test_fakes.py checks
that no module imports them by name). Operations are started for real up to the broker:
the starters of ``app.operations`` run (they write the pool and the op record's
context) and the step they send is recorded instead (``FakeEnv.steps``), as is
every step a step sends next; ``run_steps`` delivers them as a worker would.
Every other way of enqueueing work is recorded too, including any
``Task.apply_async`` nobody expected.
"""

import functools
import importlib
import itertools
import time
from dataclasses import dataclass, field

import fakeredis
import pytest
from celery.app.task import Task
from celery.exceptions import Retry
from flask import Flask

from app import operations, queue, runtime
from app.pools import State, new_pool, pool_id
from app.settings import DEFAULT_ACCOUNT, Settings
from app.store import Store
from app.vast import InstanceListing, NotFound, OfferUnavailable, VastClient

KEYS = {"acme": "acme-key", "globex": "globex-key"}
VAST_URL = "http://vast.test"
REAL_VAST = runtime.vast  # the client by tenant, before any test replaces it
# the starters whose chains are recorded; the sweep's tasks whose .delay is, and the tasks whose sending by name
# (app/queue.py) is, each as (its name's last part, its arguments)
STARTERS = ("provision", "failover", "finish_failover", "replace_standby", "cleanup")
SWEEP_TASKS = {"trigger": ("pid", "primary", "detected_at", "triggered_at", "healthy_at"),
               "recheck_standby": ("pid",), "guard_split_brain": ("pid", "reason"), "check_capacity": ()}
SENT_BY_NAME = {**SWEEP_TASKS, "when_unlocked": ("pid", "operation", "op_id", "behind")}


def unit_settings(**overrides) -> Settings:
    """Settings for unit tests: fixed here, whatever the environment (tests/conftest.py tunes it for processes)."""
    return Settings(**{"api_keys": {key: tenant for tenant, key in KEYS.items()}, "vast_api_url": VAST_URL,
                       "vast_api_key": "vast-key", "vast_rate_limits": {}, "lock_ttl": 10.0,
                       "failover_threshold": 3, "failover_min_seconds": 0.0, "health_check_interval": 10.0,
                       "capacity_check_interval": 3600.0, "hosts_cache_seconds": 0.0, **overrides})


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


def _matches(row: dict, filters: dict) -> bool:
    """The v1 list's ``select_filters``, for the operators the service sends."""
    tests = {"eq": lambda v, x: v == x, "neq": lambda v, x: v != x, "in": lambda v, x: v in x,
             "notin": lambda v, x: v not in x}
    return all(tests[op](row.get(column), wanted) for column, ops in filters.items() for op, wanted in ops.items())


class FakeVast:
    """A provider in memory: instances and volumes as Vast shows them, every call recorded.

    ``fail[method] = exc`` makes that method raise (before any effect). Mutating calls first pass the
    fencing guard of the real client that ``app.runtime.vast`` builds, so a step that lost its lock
    cannot reach this provider either, exactly as it cannot reach Vast.
    """

    MUTATING = {"create_instance": ("create_instance", "PUT"), "start_instance": ("manage_instance", "PUT"),
                "stop_instance": ("manage_instance", "PUT"), "label_instance": ("manage_instance", "PUT"),
                "destroy_instance": ("destroy_instance", "DELETE"), "create_volume": ("volumes", "PUT"),
                "delete_volume": ("volumes", "DELETE")}

    def __init__(self, guard=None):
        self.guard = guard
        self.instances: dict[int, dict] = {}
        self.volumes: dict[int, dict] = {}
        self.offers: list[dict] = []
        self.volume_offers: list[dict] = [{"id": 900, "machine_id": 88888}]
        self.searches: list[dict] = []
        self.calls: list[tuple] = []
        self.fail: dict[str, Exception] = {}
        self.error: Exception | None = None  # for search_offers: the API's hosts route
        self.ids = itertools.count(5001)

    def _call(self, method: str, *args) -> None:
        if method in self.MUTATING and self.guard is not None:
            self.guard(*self.MUTATING[method])  # as the real client: the last word before the request leaves
        self.calls.append((method, *args))
        if method in self.fail:
            raise self.fail[method]

    def called(self, *methods: str) -> list[tuple]:
        return [c for c in self.calls if c[0] in methods]

    # -- instances -------------------------------------------------------------------------------

    def add_instance(self, label: str, status: str = "running", intended: str | None = None, **fields) -> int:
        instance_id = fields.pop("id", None) or next(self.ids)
        self.instances[instance_id] = {
            "id": instance_id, "label": label, "machine_id": 88888, "actual_status": status,
            "intended_status": intended or ("stopped" if status in ("stopped", "exited") else "running"),
            "ssh_host": "ssh4.vast.ai" if status == "running" else None,
            "ssh_port": 20000 + instance_id % 1000 if status == "running" else None,
            "start_date": time.time(), **fields}
        return instance_id

    def search_offers(self, query: dict) -> list[dict]:
        self.searches.append(query)
        self._call("search_offers", query)
        if self.error:
            raise self.error
        return self.offers

    def create_instance(self, offer_id: int, *, image: str, disk: float, label: str, target_state: str = "running",
                        volume_info: dict | None = None, onstart: str | None = None, env: dict | None = None,
                        **_) -> int:
        self._call("create_instance", offer_id, label)
        if offer_id not in {o["id"] for o in self.offers}:
            raise OfferUnavailable("no_such_ask", 404, "no_such_ask", "offer gone")
        # the hooks as Vast lists them: onstart, and env as extra_env pairs
        return self.add_instance(label, "running" if target_state == "running" else "stopped", target_state,
                                 onstart=onstart, extra_env=[[k, v] for k, v in (env or {}).items()])

    def show_instance(self, instance_id: int) -> dict | None:
        self._call("show_instance", instance_id)
        return self.instances.get(instance_id)

    labelled = VastClient.labelled  # the real one: a list call, which this fake answers

    def list_instances(self, select_filters: dict | None = None, *, attempts: int | None = None) -> InstanceListing:
        self._call("list_instances", select_filters)
        rows = [dict(row) for _, row in sorted(self.instances.items()) if _matches(row, select_filters or {})]
        counts: dict[str, int] = {}
        for row in self.instances.values():
            counts[row["label"]] = counts.get(row["label"], 0) + 1
        return InstanceListing(rows, counts, len(self.instances))

    def _instance(self, instance_id: int) -> dict:
        if instance_id not in self.instances:
            raise NotFound(f"instance {instance_id}", 404)
        return self.instances[instance_id]

    def start_instance(self, instance_id: int) -> None:
        self._call("start_instance", instance_id)
        self._instance(instance_id).update(intended_status="running", actual_status="running",
                                           ssh_host="ssh4.vast.ai", ssh_port=20000 + instance_id % 1000)

    def stop_instance(self, instance_id: int) -> None:
        self._call("stop_instance", instance_id)
        self._instance(instance_id).update(intended_status="stopped", actual_status="stopped")

    def label_instance(self, instance_id: int, label: str) -> None:
        self._call("label_instance", instance_id, label)
        self._instance(instance_id)["label"] = label

    def destroy_instance(self, instance_id: int) -> None:
        self._call("destroy_instance", instance_id)
        self.instances.pop(instance_id, None)

    def cancel_copy(self, dst_id: int) -> bool:
        self._call("cancel_copy", dst_id)
        return False  # no copy under way

    # -- volumes -----------------------------------------------------------------------------------

    def add_volume(self, name: str, **fields) -> int:
        volume_id = fields.pop("id", None) or next(self.ids)
        self.volumes[volume_id] = {"id": volume_id, "label": name, "start_date": time.time(), **fields}
        return volume_id

    def search_volume_offers(self, query: dict) -> list[dict]:
        self._call("search_volume_offers", query)
        return self.volume_offers

    def create_volume(self, offer_id: int, size: int, name: str) -> int:
        self._call("create_volume", offer_id, name)
        return self.add_volume(name)

    def show_volumes(self) -> list[dict]:
        self._call("show_volumes")
        return [dict(v) for v in self.volumes.values()]

    def delete_volume(self, volume_id: int) -> None:
        self._call("delete_volume", volume_id)
        self.volumes.pop(volume_id, None)


@dataclass
class FakeEnv:
    store: Store
    vast: FakeVast
    settings: Settings
    client: object = None
    enqueued: list = field(default_factory=list)
    steps: list = field(default_factory=list)  # (task name, message) of every operation step sent

    @property
    def r(self):
        return self.store.r

    def configure(self, **overrides) -> Settings:
        """Change settings for the rest of the test (every module reads these)."""
        self.settings = unit_settings(**overrides)
        return self.settings

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
        self.steps.clear()
        self.vast.searches.clear()
        self.vast.calls.clear()
        self.vast.error = None

    def add_pool(self, machine_id: int, tenant: str = "acme", **fields) -> dict:
        """Write a pool as its lock holder would (fenced), and leave the lock free."""
        pid = pool_id(tenant, machine_id)
        pool = new_pool(tenant, machine_id, **{
            "state": State.ACTIVE, "host_machine_id": 88888, "volume_id": 12345, "primary_gpu_id": 1000 + machine_id,
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

    def of(self, kind: str) -> list[dict]:
        return [e[1] for e in self.enqueued if e[0] == kind]


def started_record(env: FakeEnv, step: str, message: dict) -> dict:
    """A started operation as tests read it: its first step's message, its context (from its op record), the
    ``step`` sent and the ``steps`` its declaration runs in that context."""
    ctx = env.store.get_op(message["op_id"])["context"]
    return {**message, **ctx, "step": step, "steps": operations.DECLARED[ctx["operation"]].path(ctx)}


def _recording_starter(env: FakeEnv, name: str, real):
    """The real starter, with the step it sends recorded as ``(name, started_record(...))``."""
    def start(*args, **kwargs):
        before = len(env.steps)
        result = real(*args, **kwargs)
        for step, message in env.steps[before:]:
            env.enqueued.append((name, started_record(env, step, message)))
        return result
    return start


def deliver(task, *args, redelivered: bool = False, queue: str = "provision"):
    """Run ``task`` as a worker delivers it."""
    task.push_request(id="delivery", called_directly=False, retries=0, args=list(args), kwargs={},
                      delivery_info={"redelivered": redelivered, "routing_key": queue})
    try:
        return task(*args)
    finally:
        task.pop_request()


def run_steps(env: FakeEnv, polls: int = 0, next_round: bool = False) -> list[str]:
    """Deliver the operation steps sent so far, and the ones they send, in order, as a worker would; a step that
    waits (a retry) is delivered again with the message it sent, up to ``polls`` times in all, or, with
    ``next_round``, once each after the next poll round is made due. The names of the steps that ran."""
    from app.store import keys
    from tasks import celery_app

    celery_app.loader.import_default_modules()  # every step registered, as in a worker (celeryconfig.imports)
    ran = []
    while env.steps:
        name, message = env.steps.pop(0)
        waited = 0
        while True:
            try:
                deliver(celery_app.tasks[name], message)
                break
            except Retry:
                waited += 1
                if next_round and waited == 1:
                    env.store.r.set(keys.awaited_round(), 0)
                elif (polls := polls - 1) < 0:
                    raise
                message = env.of("apply_async")[-1]["args"][0]
        ran.append(name)
    return ran


def install(monkeypatch, env: FakeEnv) -> None:
    """Point the service at the fakes (through ``app.runtime``) and record every enqueue instead of sending it."""
    monkeypatch.setattr(runtime, "settings", lambda: env.settings)
    monkeypatch.setattr(runtime, "store", lambda: env.store)
    monkeypatch.setattr(runtime, "vast", lambda tenant=None: env.vast)

    for name in STARTERS:
        monkeypatch.setattr(operations, name, _recording_starter(env, name, getattr(operations, name)))

    def record(task: str, args, kwargs) -> None:
        short = task.rsplit(".", 1)[-1]
        if task in operations.step_routes():
            env.steps.append((task, args[0]))
        elif short in SENT_BY_NAME:
            env.enqueued.append((short, {**dict(zip(SENT_BY_NAME[short], args)), **kwargs}))
        else:
            env.enqueued.append(("send_task", {"task": task, "args": args, "kwargs": kwargs}))

    monkeypatch.setattr(queue.celery_app, "send_task", lambda name, args=(), kwargs=None, **options:
                        record(name, args, kwargs or {}))
    sweep = importlib.import_module("tasks.sweep")
    for task in SWEEP_TASKS:
        monkeypatch.setattr(getattr(sweep, task), "delay", lambda *args, _task=getattr(sweep, task).name, **kwargs:
                            record(_task, args, kwargs))

    # anything else that would reach the broker is recorded too (and would fail "nothing enqueued")
    def apply_async(self, args=None, kwargs=None, **options):
        env.enqueued.append(("apply_async", {"task": self.name, "args": args, "kwargs": kwargs,
                                             "countdown": options.get("countdown")}))

    monkeypatch.setattr(Task, "apply_async", apply_async)


def real_client():
    """The provider client exactly as ``app.runtime.vast`` builds it (rate budget, fencing guard), on the
    fakes' settings and store: for tests that check what reaches the wire, with ``responses``."""
    return runtime.account_client.__wrapped__(DEFAULT_ACCOUNT)


@functools.cache
def web_app() -> Flask:
    """One app per test process, not TESTING (a 500 is answered, as in production). Building one takes about
    0.15 s (flask-smorest writes the OpenAPI document of every route), and the app reaches settings, store and
    provider through ``app.runtime`` at each request, so every test's own fakes answer; only
    MAX_CONTENT_LENGTH is read at creation, from the unit settings every test shares."""
    from app import create_app

    return create_app()


def make_env(monkeypatch) -> FakeEnv:
    env = FakeEnv(store=fake_store(), vast=FakeVast(), settings=unit_settings())
    install(monkeypatch, env)
    env.vast.guard = real_client().guard
    env.client = web_app().test_client()
    return env


@pytest.fixture
def env(monkeypatch) -> FakeEnv:
    return make_env(monkeypatch)


@pytest.fixture
def store() -> Store:
    return fake_store()
