"""The warm pool resource: the seed's endpoints, plus the pool list and event history.

Views are thin: they validate, call one command of ``app.commands`` (which owns
every decision about a pool's state) or read the store, and shape the answer.
They never call the provider for writes and never wait, except for ``?wait=`` (capped: ``waited``).
"""

import contextlib
import math
import time

from flask import g, url_for
from flask.views import MethodView

from app import commands, runtime
from app import vast as provider
from app.api import Blueprint, abort
from app.api.auth import authenticate
from app.api.schemas import (
    MAX_ID,
    EnableSchema,
    EventListSchema,
    HostListSchema,
    HostsQuerySchema,
    OperationSchema,
    PoolListSchema,
    ProvisionSchema,
    StatusSchema,
    SwitchoverSchema,
    ToggleSchema,
    WaitSchema,
)
from app.hosts import group_hosts, offers_query
from app.pools import Pool, State, cost_per_hour, pool_id, required
from app.runtime import Throttled, without_waiting
from app.store import Busy

blp = Blueprint("warmpool", __name__, url_prefix="/api/v1/warmpool",
                description="GPU warm pools: status, hosts, provision, enable/disable, failover test, cleanup.")
blp.before_request(authenticate)

MACHINE = f"<int(min=1, max={MAX_ID}):machine_id>"


class PoolStatus(Pool, total=False):
    """A pool as the API shows it."""
    last_health_check: str | None


def status_of(pool: Pool, last_sweep: str | None) -> PoolStatus:
    """The seed's status: the pool record, and the last sweep that checked it (never before the pool existed)."""
    checked = pool["state"] in (State.ACTIVE, State.DEGRADED) and last_sweep and last_sweep >= pool["created_at"]
    return {**pool, "last_health_check": last_sweep if checked else None}


def get_status(machine_id: int) -> tuple[Pool, str | None]:
    pool, last_sweep = runtime.store().get_pool_and_last_sweep(pool_id(g.tenant, machine_id))
    if pool is None:
        abort(404, message=f"No warm pool for machine {machine_id}")
    return pool, last_sweep


@contextlib.contextmanager
def answers(machine_id: int):
    """The commands' refusals, as the API's errors."""
    try:
        yield
    except commands.NotFound:
        abort(404, message=f"No warm pool for machine {machine_id}")
    except Busy:
        abort(409, message=f"An operation is in flight for machine {machine_id}; try again when it ends")
    except commands.Conflict as exc:
        abort(409, message=str(exc))
    except commands.TooManyPools as exc:
        abort(403, message=str(exc))


def waited(op_id: str, wait: float) -> dict | None:
    """The operation's record once it ends or ``wait`` s pass; None at once when there is no wait, or when
    WAIT_MAX_HOLDERS (or a tenant's WAIT_MAX_HOLDERS_PER_TENANT) requests already wait: a waiting request holds
    a web thread, so the caps keep threads free for /healthz and for every other tenant."""
    if not wait:
        return None
    cfg = runtime.settings()
    with runtime.store().wait_slot(g.tenant, wait, cfg.wait_max_holders, cfg.wait_max_holders_per_tenant) as holding:
        return runtime.store().wait_op(op_id, wait) if holding else None


def accepted(started: commands.Started, body: dict, wait: float):
    """202 with the task's Location, or, when the operation ends within ``wait`` s, 200 and its result."""
    op_id = started.op_id
    op = waited(op_id, wait) if op_id else None
    if op and op["state"] == "SUCCESS":
        return op["result"], 200
    if op and op["state"] == "FAILURE":
        return {"success": False, "message": op["error"], "task_id": op_id}, 200
    return {**body, "task_id": op_id}, 202, {"Location": url_for("tasks.Task", task_id=op_id)}


LOCATION = {"Location": {"description": "the task resource to poll", "schema": {"type": "string"}}}


@blp.route("/status/" + MACHINE)
class Status(MethodView):
    @blp.response(200, StatusSchema)
    @blp.alt_response(401, response="DEFAULT_ERROR")
    @blp.alt_response(404, response="DEFAULT_ERROR")
    def get(self, machine_id):
        """Warm pool status of a machine"""
        return status_of(*get_status(machine_id))


@blp.route("/pools")
class Pools(MethodView):
    @blp.response(200, PoolListSchema)
    @blp.alt_response(401, response="DEFAULT_ERROR")
    def get(self):
        """This tenant's warm pools"""
        last_sweep = runtime.store().last_sweep()
        pools = [status_of(p, last_sweep) for p in runtime.store().tenant_pools(g.tenant)]
        total = round(sum(cost_per_hour(p)["total"] for p in pools), 4)
        return {"pools": pools, "count": len(pools), "cost_per_hour": total}


@blp.route("/events/" + MACHINE)
class Events(MethodView):
    @blp.response(200, EventListSchema)
    @blp.alt_response(401, response="DEFAULT_ERROR")
    @blp.alt_response(404, response="DEFAULT_ERROR")
    def get(self, machine_id):
        """What happened to a machine's warm pool, newest first"""
        get_status(machine_id)
        return {"machine_id": machine_id, "events": runtime.store().events(pool_id(g.tenant, machine_id))}


@blp.route("/hosts")
class Hosts(MethodView):
    @blp.arguments(HostsQuerySchema, location="query")
    @blp.response(200, HostListSchema)
    @blp.alt_response(401, response="DEFAULT_ERROR")
    @blp.alt_response(503, response="DEFAULT_ERROR")
    def get(self, args):
        """Multi-GPU hosts that can hold a warm pool"""
        offers = cached_offers(offers_query(args["gpu_name"], None, args["verified"]))
        if args["max_price"] is not None:  # filtered here, so every price shares one cached search
            offers = [offer for offer in offers if offer["dph_total"] <= args["max_price"]]
        hosts = group_hosts(offers, args["min_gpus"])
        return {"hosts": hosts, "count": len(hosts)}


# how long a miss of the hosts cache may hold its web thread: a queued search, then the call itself
HOSTS_MISS_SECONDS = 90.0


def cached_offers(query: dict) -> list[dict]:
    """The provider's offers for ``query``, cached HOSTS_CACHE_SECONDS. A miss waits for a rate-budget slot only
    while it holds one of the tenant's ``?wait`` slots (the same caps, so waits never take every web thread);
    past them it takes a slot only if one is free now, else 503 with Retry-After."""
    offers = runtime.store().cached_offers(query)
    if offers is None:
        cfg = runtime.settings()
        try:
            with runtime.store().wait_slot(g.tenant, HOSTS_MISS_SECONDS, cfg.wait_max_holders,
                                           cfg.wait_max_holders_per_tenant) as holding, \
                    (contextlib.nullcontext() if holding else without_waiting()):
                offers = runtime.vast(g.tenant).search_offers(query)
        except Throttled as exc:
            abort(503, message="The provider's rate budget is busy; try again shortly",
                  headers={"Retry-After": str(max(1, math.ceil(exc.retry_in)))})
        except provider.VastError as exc:
            abort(503, message=f"Vast.ai is unavailable: {type(exc).__name__}", headers={"Retry-After": "5"})
        runtime.store().cache_offers(query, offers, runtime.settings().hosts_cache_seconds)
    return offers


@blp.route("/provision")
class Provision(MethodView):
    @blp.arguments(ProvisionSchema)
    @blp.arguments(WaitSchema, location="query")
    @blp.response(202, OperationSchema, headers=LOCATION)
    @blp.alt_response(401, response="DEFAULT_ERROR")
    @blp.alt_response(200, schema=OperationSchema, success=True, description="the operation ended within ?wait")
    @blp.alt_response(409, response="DEFAULT_ERROR")
    @blp.alt_response(403, response="DEFAULT_ERROR", description="the tenant has WARMPOOL_MAX_POOLS_PER_TENANT pools")
    def post(self, spec, query):
        """Provision a warm pool on a host: volume, running primary, stopped standby"""
        machine_id = spec.pop("machine_id")
        with answers(machine_id):
            started = commands.provision(g.tenant, machine_id, spec)
        return accepted(started, {"success": True, "message": f"Provisioning warm pool for machine {machine_id}",
                                  "status": status_of(started.pool, runtime.store().last_sweep())}, query["wait"])


@blp.route("/enable/" + MACHINE)
class Enable(MethodView):
    @blp.arguments(EnableSchema(), required=False)
    @blp.arguments(WaitSchema, location="query")
    @blp.response(200, ToggleSchema)
    @blp.alt_response(202, schema=ToggleSchema, success=True, headers=LOCATION,
                      description="a provision started (or its result, with ?wait)")
    @blp.alt_response(401, response="DEFAULT_ERROR")
    @blp.alt_response(409, response="DEFAULT_ERROR")
    @blp.alt_response(403, response="DEFAULT_ERROR", description="the tenant has WARMPOOL_MAX_POOLS_PER_TENANT pools")
    def post(self, spec, query, machine_id):
        """Enable the warm pool; a machine without resources gets a host searched and provisioned"""
        with answers(machine_id):
            started = commands.enable(g.tenant, machine_id, spec)
        body = {"status": "enabled", "message": f"Warm pool enabled for machine {machine_id}"}
        if started.op_id is None:
            return body
        body["task_id"] = started.op_id
        op = waited(started.op_id, query["wait"])
        if op and op["state"] == "SUCCESS":
            return {**body, "message": f"Warm pool enabled and provisioned for machine {machine_id}"}
        if op and op["state"] == "FAILURE":
            return {**body, "message": f"Warm pool enabled for machine {machine_id}; provisioning failed: "
                                       f"{op['error']}"}
        return body, 202, {"Location": url_for("tasks.Task", task_id=started.op_id)}


@blp.route("/disable/" + MACHINE)
class Disable(MethodView):
    @blp.response(200, ToggleSchema)
    @blp.alt_response(401, response="DEFAULT_ERROR")
    @blp.alt_response(404, response="DEFAULT_ERROR")
    def post(self, machine_id):
        """Disable the warm pool; resources are kept and CPU standby is the fallback"""
        with answers(machine_id):
            started = commands.disable(g.tenant, machine_id)
        body = {"status": "disabled", "message": f"Warm pool disabled for machine {machine_id}",
                "fallback": "cpu_standby"}
        if started.queued:
            return {**body, "task_id": started.op_id,
                    "message": f"Warm pool for machine {machine_id} is disabled when its running operation ends"}
        return body


@blp.route("/failover/test/" + MACHINE)
class FailoverTest(MethodView):
    @blp.arguments(WaitSchema, location="query")
    @blp.response(202, OperationSchema, headers=LOCATION)
    @blp.alt_response(401, response="DEFAULT_ERROR")
    @blp.alt_response(200, schema=OperationSchema, success=True, description="the failover ended within ?wait")
    @blp.alt_response(404, response="DEFAULT_ERROR")
    @blp.alt_response(409, response="DEFAULT_ERROR")
    def post(self, query, machine_id):
        """Test failover: stop the primary, start and promote the standby, replace the standby"""
        with answers(machine_id):
            started = commands.test_failover(g.tenant, machine_id)
        return accepted(started, {"success": True, "message": f"Failover test started for machine {machine_id}",
                                  "status": status_of(started.pool, runtime.store().last_sweep())}, query["wait"])


@blp.route("/switchover/" + MACHINE)
class Switchover(MethodView):
    @blp.arguments(SwitchoverSchema(), required=False)
    @blp.response(200, OperationSchema)
    @blp.alt_response(401, response="DEFAULT_ERROR")
    @blp.alt_response(404, response="DEFAULT_ERROR")
    @blp.alt_response(409, response="DEFAULT_ERROR")
    def post(self, spec, machine_id):
        """Plan a switchover to the standby: at ``at``, or at once; a plan made before is replaced"""
        at = spec["at"].timestamp() if spec.get("at") else time.time()
        with answers(machine_id):
            pool = commands.plan_switchover(g.tenant, machine_id, at)
        return {"success": True, "message": f"Switchover of machine {machine_id} planned for "
                                            f"{required(pool, 'scheduled_switchover')['at']}",
                "status": status_of(pool, runtime.store().last_sweep())}

    @blp.response(200, OperationSchema)
    @blp.alt_response(401, response="DEFAULT_ERROR")
    @blp.alt_response(404, response="DEFAULT_ERROR")
    @blp.alt_response(409, response="DEFAULT_ERROR")
    def delete(self, machine_id):
        """Cancel the planned switchover"""
        try:
            with answers(machine_id):
                pool = commands.cancel_switchover(g.tenant, machine_id)
        except commands.NotPlanned:
            abort(404, message=f"No switchover planned for machine {machine_id}")
        return {"success": True, "message": f"Switchover of machine {machine_id} cancelled",
                "status": status_of(pool, runtime.store().last_sweep())}


@blp.route("/cleanup/" + MACHINE)
class Cleanup(MethodView):
    @blp.arguments(WaitSchema, location="query")
    @blp.response(202, OperationSchema, headers=LOCATION)
    @blp.alt_response(401, response="DEFAULT_ERROR")
    @blp.alt_response(200, schema=OperationSchema, success=True, description="the cleanup ended within ?wait")
    @blp.alt_response(404, response="DEFAULT_ERROR")
    def delete(self, query, machine_id):
        """Destroy the primary, the standby and the volume; the record stays, disabled"""
        with answers(machine_id):
            started = commands.cleanup(g.tenant, machine_id)
        return accepted(started, {"success": True, "message": f"Cleaning up warm pool for machine {machine_id}"},
                        query["wait"])
