"""The warm pool resource: the seed's endpoints, plus the pool list and event history.

Views validate, authorize, take the machine's lock when an operation starts
(that is what answers 409), write the pool record and enqueue the steps. They
never write to the provider and never wait, except for ``?wait=``.
"""

import json

from flask import g, url_for
from flask.views import MethodView
from flask_smorest import abort

from app import vast as provider
from app.api import Blueprint
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
    ToggleSchema,
    WaitSchema,
)
from app.hosts import group_hosts, offers_query
from app.runtime import Throttled, settings, store, vast
from app.store import ACTIVE, DEGRADED, DISABLED, PROVISIONING, SEARCHING, Held, new_pool, pool_id
from tasks import cleanup, failover, provision
from tasks.base import Operation

blp = Blueprint("warmpool", __name__, url_prefix="/api/v1/warmpool",
                description="GPU warm pools: status, hosts, provision, enable/disable, failover test, cleanup.")
blp.before_request(authenticate)

MACHINE = f"<int(min=1, max={MAX_ID}):machine_id>"
# states in which a pool has an operation of its own going or is already protected
BUSY_STATES = (SEARCHING, PROVISIONING, ACTIVE, "failover")


def status_of(pool: dict, last_sweep: str | None) -> dict:
    """The seed's status: the pool record, and the last sweep that checked it."""
    return {**pool, "last_health_check": last_sweep if pool["state"] in (ACTIVE, DEGRADED) else None}


def get_pool(machine_id: int) -> dict:
    return get_status(machine_id)[0]


def get_status(machine_id: int) -> tuple[dict, str | None]:
    pool, last_sweep = store().get_pool_and_last_sweep(pool_id(g.tenant, machine_id))
    if pool is None:
        abort(404, message=f"No warm pool for machine {machine_id}")
    return pool, last_sweep


def take_lock(machine_id: int) -> Held:
    held = store().acquire(pool_id(g.tenant, machine_id), settings().lock_ttl)
    if held is None:
        abort(409, message=f"An operation is in flight for machine {machine_id}; try again when it ends")
    return held


def release(machine_id: int, held: Held) -> None:
    store().release(pool_id(g.tenant, machine_id), held, settings().lock_ttl)


def accepted(op_id: str, body: dict, wait: float):
    """202 with the task's Location, or, when the operation ends within ``wait`` s, 200 and its result."""
    if wait:
        op = store().wait_op(op_id, wait)
        if op["state"] == "SUCCESS":
            return op["result"], 200
        if op["state"] == "FAILURE":
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
        last_sweep = store().last_sweep()
        pools = [status_of(p, last_sweep) for p in store().tenant_pools(g.tenant)]
        return {"pools": pools, "count": len(pools)}


@blp.route("/events/" + MACHINE)
class Events(MethodView):
    @blp.response(200, EventListSchema)
    @blp.alt_response(401, response="DEFAULT_ERROR")
    @blp.alt_response(404, response="DEFAULT_ERROR")
    def get(self, machine_id):
        """What happened to a machine's warm pool, newest first"""
        get_pool(machine_id)
        return {"machine_id": machine_id, "events": store().events(pool_id(g.tenant, machine_id))}


@blp.route("/hosts")
class Hosts(MethodView):
    @blp.arguments(HostsQuerySchema, location="query")
    @blp.response(200, HostListSchema)
    @blp.alt_response(401, response="DEFAULT_ERROR")
    @blp.alt_response(503, response="DEFAULT_ERROR")
    def get(self, args):
        """Multi-GPU hosts that can hold a warm pool"""
        cache_key = "wp:hosts:" + json.dumps(args, sort_keys=True)
        cached = store().r.get(cache_key)
        if cached:
            hosts = json.loads(cached)
        else:
            try:
                offers = vast().search_offers(offers_query(args["gpu_name"], args["max_price"], args["verified"]))
            except (provider.VastError, Throttled) as exc:
                abort(503, message=f"Vast.ai is unavailable: {type(exc).__name__}", headers={"Retry-After": "5"})
            hosts = group_hosts(offers, args["min_gpus"])
            if settings().hosts_cache_seconds > 0:
                store().r.set(cache_key, json.dumps(hosts), px=int(settings().hosts_cache_seconds * 1000))
        return {"hosts": hosts, "count": len(hosts)}


@blp.route("/provision")
class Provision(MethodView):
    @blp.arguments(ProvisionSchema)
    @blp.arguments(WaitSchema, location="query")
    @blp.response(202, OperationSchema, headers=LOCATION)
    @blp.alt_response(401, response="DEFAULT_ERROR")
    @blp.alt_response(200, schema=OperationSchema, success=True, description="the operation ended within ?wait")
    @blp.alt_response(409, response="DEFAULT_ERROR")
    def post(self, spec, query):
        """Provision a warm pool on a host: volume, running primary, stopped standby"""
        machine_id = spec.pop("machine_id")
        pid = pool_id(g.tenant, machine_id)
        held = take_lock(machine_id)
        pool = store().get_pool(pid)
        if pool and (pool["state"] in BUSY_STATES or (pool["host_machine_id"] not in (None, spec["host_machine_id"])
                                                     and pool["volume_id"])):
            release(machine_id, held)
            abort(409, message=f"Machine {machine_id} already has a warm pool ({pool['state']} on host "
                               f"{pool['host_machine_id']}); clean it up first")
        spec["image"] = spec["image"] or settings().default_image
        pool = {**(pool or new_pool(g.tenant, machine_id)), **spec, "state": PROVISIONING, "enabled": True,
                "error_message": None, "fallback": None}
        store().save_pool(pool, held)
        op_id = store().new_op(g.tenant, machine_id, "provision")
        provision.provision_chain().delay(Operation.begin(pid, "provision", held, op_id))
        return accepted(op_id, {"success": True, "message": f"Provisioning warm pool for machine {machine_id}",
                                "status": status_of(pool, store().last_sweep())}, query["wait"])


@blp.route("/enable/" + MACHINE)
class Enable(MethodView):
    @blp.arguments(EnableSchema(), required=False)
    @blp.arguments(WaitSchema, location="query")
    @blp.response(200, ToggleSchema)
    @blp.alt_response(401, response="DEFAULT_ERROR")
    @blp.alt_response(409, response="DEFAULT_ERROR")
    def post(self, spec, query, machine_id):
        """Enable the warm pool; a machine without resources gets a host searched and provisioned"""
        pid = pool_id(g.tenant, machine_id)
        held = take_lock(machine_id)
        pool = store().get_pool(pid)
        body = {"status": "enabled", "message": f"Warm pool enabled for machine {machine_id}"}
        complete = pool and pool["primary_gpu_id"] and pool["standby_gpu_id"] and pool["volume_id"]
        if complete or (pool and pool["state"] in BUSY_STATES):
            if pool["state"] == DISABLED:
                pool.update(state=ACTIVE, enabled=True, fallback=None)
                store().save_pool(pool, held)
                store().event(pid, "enabled", "warm pool enabled")
            release(machine_id, held)
            return body
        search = not (pool and pool["host_machine_id"])
        spec = {k: v for k, v in spec.items() if v is not None}
        spec.setdefault("image", settings().default_image)
        pool = {**(pool or new_pool(g.tenant, machine_id)), **spec, "enabled": True, "fallback": None,
                "error_message": None, "state": SEARCHING if search else PROVISIONING}
        store().save_pool(pool, held)
        store().event(pid, "enabled", "warm pool enabled; " + ("searching a host" if search else "provisioning"))
        op_id = store().new_op(g.tenant, machine_id, "provision")
        provision.provision_chain(search).delay(Operation.begin(pid, "provision", held, op_id))
        if query["wait"]:
            store().wait_op(op_id, query["wait"])
        return {**body, "task_id": op_id}


@blp.route("/disable/" + MACHINE)
class Disable(MethodView):
    @blp.response(200, ToggleSchema)
    @blp.alt_response(401, response="DEFAULT_ERROR")
    @blp.alt_response(404, response="DEFAULT_ERROR")
    def post(self, machine_id):
        """Disable the warm pool; resources are kept and CPU standby is the fallback"""
        pid = pool_id(g.tenant, get_pool(machine_id)["machine_id"])
        body = {"status": "disabled", "message": f"Warm pool disabled for machine {machine_id}",
                "fallback": "cpu_standby"}
        held = store().acquire(pid, settings().lock_ttl)
        if held is None:
            # an operation runs: disable right after it
            op_id = store().new_op(g.tenant, machine_id, "disable")
            cleanup.when_unlocked.delay(pid, "disable", op_id)
            return {**body, "task_id": op_id,
                    "message": f"Warm pool for machine {machine_id} is disabled when its running operation ends"}
        cleanup.disable_pool(store(), pid, held)
        release(machine_id, held)
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
        pid = pool_id(g.tenant, get_pool(machine_id)["machine_id"])
        held = take_lock(machine_id)
        state = store().get_pool(pid)["state"]
        if state != ACTIVE:
            release(machine_id, held)
            abort(409, message=f"Cannot test failover in state {state}")
        op_id = failover.launch(store(), pid, held, "manual")
        return accepted(op_id, {"success": True, "message": f"Failover test started for machine {machine_id}"},
                        query["wait"])


@blp.route("/cleanup/" + MACHINE)
class Cleanup(MethodView):
    @blp.arguments(WaitSchema, location="query")
    @blp.response(202, OperationSchema, headers=LOCATION)
    @blp.alt_response(401, response="DEFAULT_ERROR")
    @blp.alt_response(200, schema=OperationSchema, success=True, description="the cleanup ended within ?wait")
    @blp.alt_response(404, response="DEFAULT_ERROR")
    def delete(self, query, machine_id):
        """Destroy the primary, the standby and the volume; the record stays, disabled"""
        pid = pool_id(g.tenant, get_pool(machine_id)["machine_id"])
        op_id = store().new_op(g.tenant, machine_id, "cleanup")
        held = store().acquire(pid, settings().lock_ttl)
        if held is None:
            cleanup.when_unlocked.delay(pid, "cleanup", op_id)  # queued behind the running operation
        else:
            cleanup.start_cleanup(Operation.begin(pid, "cleanup", held, op_id))
        return accepted(op_id, {"success": True, "message": f"Cleaning up warm pool for machine {machine_id}"},
                        query["wait"])
