"""What a warm pool is: its record, its states, and the named changes of state.

A pool record is a ``Pool``: a typed dict, stored as JSON by ``app.store``, whose
keys and their types mypy checks wherever a pool is read or written. Every change
of state has a name here, so the rules of the state machine (docs/architecture.md)
live in one file. Nothing here talks to Redis or to the provider.
"""

import hashlib
import json
import re
import time
from datetime import datetime, timezone
from enum import StrEnum
from typing import Literal, NotRequired, TypedDict, Unpack, overload


class State(StrEnum):
    """The seed's six pool states."""
    DISABLED = "disabled"
    SEARCHING = "searching"
    PROVISIONING = "provisioning"
    ACTIVE = "active"
    FAILOVER = "failover"
    DEGRADED = "degraded"


class StandbyState(StrEnum):
    """What the pool's standby instance is doing (none: the pool has no standby)."""
    NONE = "none"
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"


class PrimaryFields(TypedDict, total=False):
    """What the pool keeps of its primary's provider row (``primary_fields``): how users reach it, and its prices."""
    primary_public_ipaddr: str | None
    primary_ssh_host: str | None
    primary_ssh_port: int | None
    primary_ports: dict | None
    primary_dph_base: float | None
    host_storage_cost: float | None


class ReplicaFields(TypedDict, total=False):
    """What the pool keeps of its volume's replica on another host (tasks/replica.py)."""
    replica_host_machine_id: int | None
    replica_volume_id: int | None
    replica_data_at: str | None  # ISO: the replica holds the data of then
    replica_copy_started: float | None  # epoch s: a copy under way
    replica_storage_cost: float | None


class Creating(TypedDict):
    """A create sent and not yet answered (``tasks.provision.create_once``, rule 12)."""
    role: str
    at: float  # epoch s


class Moving(TypedDict):
    """A move to the replica's host under way (tasks/hostfailover.py), filled in step by step."""
    host_machine_id: int
    volume_id: int
    data_at: str  # ISO: the replica holds the data of then
    primary_gpu_id: int | None  # the primary rented on the replica's host, once rented
    old_instance_ids: NotRequired[list[int]]  # the old host's instances, once stopped
    address: NotRequired[PrimaryFields]  # the new primary's, once it runs


class RetireHost(TypedDict):
    """The old host's instances and volume, destroyed after a move (``tasks.replica.retire_host``): what is left."""
    host_machine_id: int | None
    volume_id: int | None
    instance_ids: list[int]
    next_at: NotRequired[float]  # epoch s: what the provider refused is tried again then


class PlannedSwitchover(TypedDict):
    """A planned switchover to the standby (tasks/switchover.py)."""
    at: str  # ISO
    requested_at: str  # ISO


class Pool(PrimaryFields, ReplicaFields, total=False):
    """A pool's record. A typed dict rather than a dataclass: it is the JSON the store keeps and the API shows,
    written field by field by the steps (``Operation.save``), and mypy checks each key and its type all the same.

    Not total, so the same type checks a partial write too (``**fields: Unpack[Pool]`` in the transitions and
    ``Operation.save``). A whole record has every key all the same: ``new_pool`` writes each one (a unit test
    holds it to this type's keys), and ``loaded_pool`` fills in one added since a record was written. A field
    that a step needs set is read with ``required``.
    """
    tenant: str
    machine_id: int
    state: State
    enabled: bool
    host_machine_id: int | None
    volume_id: int | None
    primary_gpu_id: int | None
    standby_gpu_id: int | None
    standby_state: StandbyState
    failover_count: int
    last_failover_at: str | None
    last_failover: dict | None  # the last failover's phases and recovery times (``Operation.failover_times``)
    error_message: str | None
    fallback: str | None
    # the spec
    gpu_name: str | None
    max_price: float | None
    image: str | None
    disk_size: int
    volume_size: int
    onstart: str | None  # lifecycle hooks passed to every instance the pool creates
    env: dict[str, str] | None
    priority: int  # failed over ahead of lower priorities when many pools fail at once
    # the operation under way, and the healer's
    op_id: str | None
    seq: int  # the step counter: a step delivered twice runs once (rule 2)
    creating: Creating | None
    retire_gpu_id: int | None
    heal_attempts: int
    next_heal_at: float
    heal_given_up: bool
    cleanup_pending: bool
    created_at: str
    updated_at: str
    # whether the pool wants a replica of its volume (``ReplicaFields``); None: WARMPOOL_REPLICA_DEFAULT
    replica: bool | None
    replica_retry_at: float
    moving: Moving | None
    retire_host: RetireHost | None
    renew_after: float  # a standby renewal failed: not before then (tasks/renewal.py)
    scheduled_switchover: PlannedSwitchover | None


# the fields that hold a provider id: the ids a step may need set (``required``)
IdField = Literal["host_machine_id", "volume_id", "primary_gpu_id", "standby_gpu_id", "retire_gpu_id",
                  "replica_host_machine_id", "replica_volume_id"]
# the field that holds each instance role's provider id
INSTANCE_FIELDS: dict[str, Literal["primary_gpu_id", "standby_gpu_id"]] = {
    "primary": "primary_gpu_id", "standby": "standby_gpu_id"}


class FieldMissing(RuntimeError):
    """A step needs a field of the pool set that is not: a bug in the caller (or a record changed under it)."""

    def __init__(self, pid: str, field: str):
        self.pid, self.field = pid, field
        super().__init__(f"pool {pid}: {field} is not set")


@overload
def required(pool: Pool, field: IdField) -> int: ...
@overload
def required(pool: Pool, field: Literal["replica_copy_started"]) -> float: ...
@overload
def required(pool: Pool, field: Literal["replica_data_at"]) -> str: ...
@overload
def required(pool: Pool, field: Literal["last_failover"]) -> dict: ...
@overload
def required(pool: Pool, field: Literal["moving"]) -> Moving: ...
@overload
def required(pool: Pool, field: Literal["retire_host"]) -> RetireHost: ...
@overload
def required(pool: Pool, field: Literal["scheduled_switchover"]) -> PlannedSwitchover: ...


def required(pool: Pool, field: IdField | Literal["replica_copy_started", "replica_data_at", "last_failover",
                                                  "moving", "retire_host", "scheduled_switchover"]) -> object:
    """The pool's ``field``, which the caller knows is set (the step that set it came first); FieldMissing if it
    is not. Narrows ``X | None`` to ``X`` once, where the step reads it, instead of at each use."""
    value = pool.get(field)
    if value is None:
        raise FieldMissing(pool_id(pool["tenant"], pool["machine_id"]), field)
    return value


# a pool in one of these has an operation of its own going, or is protected already
BUSY = (State.SEARCHING, State.PROVISIONING, State.ACTIVE, State.FAILOVER)
ROLES = ("primary", "standby", "volume")


def now_iso() -> str:
    return iso_at(time.time())


def epoch_seconds(at: str) -> float:
    """An ISO time of ours (``now_iso``) as epoch seconds."""
    return datetime.fromisoformat(at).timestamp()


def iso_at(epoch: float) -> str:
    """An epoch time as the API shows times."""
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def pool_id(tenant: str, machine_id: int) -> str:
    return f"{tenant}:{machine_id}"


def split_pool_id(pid: str) -> tuple[str, int]:
    tenant, _, machine = pid.rpartition(":")
    return tenant, int(machine)


def label(tenant: str, machine_id: int, role: str) -> str:
    """Provider label of a pool's instance (role primary/standby): tenant, machine and role (rule 13)."""
    return f"warmpool-{tenant}-{machine_id}-{role}"


def instance_labels(tenant: str, machine_id: int) -> tuple[str, str]:
    """The labels of every instance a pool makes: its primary's and its standby's."""
    return label(tenant, machine_id, "primary"), label(tenant, machine_id, "standby")


def volume_name(tenant: str, machine_id: int, kind: str = "volume") -> str:
    """Name of a pool's volume (``kind`` "replica": its replica on another host). Vast allows only letters,
    digits and '_' (64 at most), so a tenant name that does not fit is replaced by a short, stable hash of itself."""
    name = f"warmpool_{tenant}_{machine_id}_{kind}"
    if not re.fullmatch(r"[A-Za-z0-9]{1,32}", tenant) or len(name) > 64:
        name = f"warmpool_h{hashlib.sha256(tenant.encode()).hexdigest()[:16]}_{machine_id}_{kind}"
    return name


def parse_label(name: str) -> tuple[str, str] | None:
    """``warmpool-<tenant>-<machine>-<role>`` -> (pool id, role); None for anything else."""
    if not name.startswith("warmpool-"):
        return None
    tenant_machine, _, role = name[len("warmpool-"):].rpartition("-")
    tenant, _, machine = tenant_machine.rpartition("-")
    if role not in ("primary", "standby") or not tenant or not machine.isdigit():
        return None
    return pool_id(tenant, int(machine)), role


def primary_fields(instance: dict | None) -> PrimaryFields:
    """What the pool keeps of its primary's provider row (None: no primary). How users reach it: the host's public
    address, the SSH proxy's host and port, and the port map (``{"8080/tcp": [{"HostIp": ..., "HostPort":
    "20065"}]}``, as Vast lists it; a new instance has a new map, so a failover changes all of them). And its prices
    as Vast lists them: the GPUs' $/h (``dph_base``) and the host's storage $/GB-month (``storage_cost``)."""
    instance = instance or {}
    return {"primary_public_ipaddr": instance.get("public_ipaddr"), "primary_ssh_host": instance.get("ssh_host"),
            "primary_ssh_port": instance.get("ssh_port"), "primary_ports": instance.get("ports") or None,
            "primary_dph_base": instance.get("dph_base"), "host_storage_cost": instance.get("storage_cost")}


ADDRESS_FIELDS = ("primary_public_ipaddr", "primary_ssh_host", "primary_ssh_port", "primary_ports")
HOURS_PER_MONTH = 720  # Vast's storage_total_cost = storage_cost ($/GB-month) x GB / 720


def cost_per_hour(pool: Pool) -> dict:
    """What the pool costs an hour, from Vast's prices as its rows listed them (None: a price not seen yet): the
    running primary (GPUs and its disk), the stopped standby's disk (storage is billed while stopped), the volume
    and the replica volume."""
    storage, gpus = pool.get("host_storage_cost"), pool.get("primary_dph_base")

    def stored(exists, gb, per_gb_month):
        if not exists:
            return 0.0
        return None if per_gb_month is None else gb * per_gb_month / HOURS_PER_MONTH

    disk = stored(pool["primary_gpu_id"] is not None, pool["disk_size"], storage)
    parts = {
        "primary": 0.0 if pool["primary_gpu_id"] is None else None if disk is None or gpus is None else disk + gpus,
        "standby_storage": stored(pool["standby_gpu_id"] is not None, pool["disk_size"], storage),
        "volume": stored(pool["volume_id"] is not None, pool["volume_size"], storage),
        "replica": stored(pool.get("replica_volume_id") is not None, pool["volume_size"],
                          pool.get("replica_storage_cost")),
    }
    shown = {k: None if v is None else round(v, 4) for k, v in parts.items()}
    known = [v for v in shown.values() if v is not None]  # the total is the sum of the parts as shown
    return {**shown, "total": round(sum(known), 4), "complete": len(known) == len(parts)}


def address_of(pool: Pool) -> dict:
    """The pool's primary's address fields (``primary_fields``), as events carry them."""
    return {name: pool.get(name) for name in ADDRESS_FIELDS}


SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASS|CREDENTIAL|AUTH|PRIVATE|CERT|SESSION|COOKIE|DSN", re.I)


def redacted_env(env: dict | None) -> dict | None:
    """A pool's ``env`` as the API shows it: the value of any name that looks like a secret's is hidden."""
    return env and {name: "***" if SECRET_NAME.search(name) else value for name, value in env.items()}


def new_pool(tenant: str, machine_id: int, /, **fields: Unpack[Pool]) -> Pool:
    pool: Pool = {
        "tenant": tenant, "machine_id": machine_id, "state": State.PROVISIONING, "enabled": True,
        "host_machine_id": None, "volume_id": None, "primary_gpu_id": None, "standby_gpu_id": None,
        "standby_state": StandbyState.NONE, **primary_fields(None),
        "failover_count": 0, "last_failover_at": None, "last_failover": None,
        "error_message": None, "fallback": None, "gpu_name": None, "max_price": None,
        "image": None, "disk_size": 50, "volume_size": 100,
        # lifecycle hooks passed to every instance the pool creates: a start script and its environment
        "onstart": None, "env": None,
        "op_id": None, "seq": 0, "creating": None, "retire_gpu_id": None, "heal_attempts": 0,
        "next_heal_at": 0.0, "heal_given_up": False, "cleanup_pending": False, "created_at": now_iso(), "updated_at": now_iso(),
        # a replica of the volume on another host (tasks/replica.py); "replica" None: WARMPOOL_REPLICA_DEFAULT
        "replica": None, "replica_host_machine_id": None, "replica_volume_id": None, "replica_data_at": None,
        "replica_copy_started": None, "replica_storage_cost": None, "replica_retry_at": 0.0,
        "moving": None, "retire_host": None, "renew_after": 0.0, "priority": 0, "scheduled_switchover": None,
    }
    pool.update(fields)
    return pool


def loaded_pool(raw: str | bytes) -> Pool:
    """A pool record as the store keeps it (JSON): its states as enums, and a field added since it was written
    with ``new_pool``'s default."""
    record = json.loads(raw)
    pool = new_pool(record["tenant"], record["machine_id"], **record)
    pool.update({"state": State(pool["state"]), "standby_state": StandbyState(pool["standby_state"])})
    return pool


def known_ids(*ids: int | None) -> set[int]:
    """The provider ids among ``ids`` that are set (a pool's id fields hold None for what it has not)."""
    return {i for i in ids if i is not None}


def is_watched(pool: Pool) -> bool:
    """Whether the health sweep watches this pool's primary."""
    return pool["enabled"] and pool["state"] in (State.ACTIVE, State.DEGRADED) and pool["primary_gpu_id"] is not None


def is_unsettled(pool: Pool) -> bool:
    """Whether the healer should look at this pool: enabled, and degraded or in the middle of an operation;
    or a cleanup that has not finished."""
    return bool(pool.get("cleanup_pending")) or (
        pool["enabled"] and pool["state"] not in (State.ACTIVE, State.DISABLED) and not pool.get("heal_given_up"))


def never_held(pool: Pool) -> bool:
    """Nothing was ever rented for it: no volume, no primary, no standby (a GPU name no host has, say)."""
    return pool["volume_id"] is None and pool["primary_gpu_id"] is None and pool["standby_gpu_id"] is None


def has_resources(pool: Pool) -> bool:
    return bool(pool["primary_gpu_id"] and pool["standby_gpu_id"] and pool["volume_id"])


def refuses_provision(pool: Pool | None, host_machine_id: int) -> bool:
    """A machine keeps one pool: a busy one, or one with a volume on another host, must be cleaned up first."""
    return pool is not None and (pool["state"] in BUSY or (
        pool["host_machine_id"] not in (None, host_machine_id) and pool["volume_id"] is not None))


# -- named changes of state ------------------------------------------------------------------
# The only writes of ``state`` and ``standby_state``. Each transition names the states it may leave: the states
# its callers reach it from (docs/architecture.md has the table); any other raises IllegalTransition.

ANY_STATE = frozenset(State)
ANY_STANDBY = frozenset(StandbyState)


class IllegalTransition(RuntimeError):
    """A named transition asked of a pool in a state it does not leave: a bug in the caller, never retried."""

    def __init__(self, pid: str, transition: str, source: str, allowed: frozenset):
        self.pid, self.transition, self.source = pid, transition, str(source)  # the plain value, not the enum's repr
        super().__init__(f"pool {pid}: {transition} does not leave {self.source!r} "
                         f"(only {', '.join(sorted(allowed))})")


def _leave(pool: Pool, transition: str, allowed: frozenset,
           field: Literal["state", "standby_state"] = "state") -> None:
    """Refuse the transition unless the pool's ``field`` is one of ``allowed``."""
    if pool[field] not in allowed:
        raise IllegalTransition(pool_id(pool["tenant"], pool["machine_id"]), transition, pool[field], allowed)


def to_provisioning(pool: Pool, search: bool, **spec: Unpack[Pool]) -> None:
    """An operator asked for a pool (provision or enable): protect it again, from scratch where needed. A new
    record is provisioning already; a busy one (searching, failover) is refused before this. A record that holds
    nothing rented (cleaned up) starts over on new instances and a new volume: its failover count and last
    failover, which describe what the cleanup gave back, start over; its ``seq`` and the machine's fencing epoch
    go on (rule 13), and its events stay."""
    _leave(pool, "to_provisioning", frozenset({State.DISABLED, State.DEGRADED, State.ACTIVE, State.PROVISIONING}))
    if never_held(pool):
        pool.update({"failover_count": 0, "last_failover_at": None, "last_failover": None})
    pool.update(spec)
    pool.update({"state": State.SEARCHING if search else State.PROVISIONING, "enabled": True, "fallback": None,
                 "error_message": None, "heal_given_up": False})


def to_searching(pool: Pool) -> None:
    """The healer retries a pool that has no host: it searches one first."""
    _leave(pool, "to_searching", frozenset({State.DEGRADED, State.PROVISIONING}))
    pool["state"] = State.SEARCHING


def to_host_found(pool: Pool, host_machine_id: int, gpu_name: str) -> None:
    """The search picked a host: provisioning on it (again, when the step is retried)."""
    _leave(pool, "to_host_found", frozenset({State.SEARCHING, State.PROVISIONING}))
    pool.update({"host_machine_id": host_machine_id, "gpu_name": gpu_name, "state": State.PROVISIONING})


def to_active(pool: Pool, **fields: Unpack[Pool]) -> None:
    """Protected: a running primary and a stopped standby (any state but a failover's, which promotes first)."""
    _leave(pool, "to_active", ANY_STATE - {State.FAILOVER})
    pool.update(fields)
    pool.update({"state": State.ACTIVE, "enabled": True, "error_message": None, "fallback": None, "heal_attempts": 0,
                 "next_heal_at": 0.0, "heal_given_up": False})


def to_replacing_standby(pool: Pool) -> None:
    """The standby is lost (destroyed): the pool keeps its primary and makes a new standby on the same host."""
    _leave(pool, "to_replacing_standby", frozenset({State.ACTIVE}))
    pool.update({"state": State.PROVISIONING, "standby_gpu_id": None, "standby_state": StandbyState.NONE})


def to_failover(pool: Pool, op_id: str) -> None:
    """A failover is decided: from now on the healer resumes it if it is interrupted."""
    _leave(pool, "to_failover", ANY_STATE - {State.FAILOVER})
    pool.update({"state": State.FAILOVER, "op_id": op_id})


def to_failover_cancelled(pool: Pool, state_before: str | None) -> None:
    """The failure was not confirmed: back to the state the failover began in (active for a resumed one)."""
    _leave(pool, "to_failover_cancelled", frozenset({State.FAILOVER}))
    pool["state"] = State.ACTIVE if state_before in (None, State.FAILOVER) else State(state_before)


def to_promoted(pool: Pool, primary_gpu_id: int, /, **fields: Unpack[Pool]) -> None:
    """The failover's new primary runs (the standby, or one on the replica's host): the pool has no standby until
    a new one is made, so it is provisioning."""
    _leave(pool, "to_promoted", frozenset({State.FAILOVER}))
    pool.update(fields)
    pool.update({"primary_gpu_id": primary_gpu_id, "standby_gpu_id": None, "standby_state": StandbyState.NONE,
                 "state": State.PROVISIONING, "error_message": None})


def to_disabled(pool: Pool, fallback: str | None = "cpu_standby") -> None:
    """No health checks, resources kept; the seed's CPU standby is the fallback. From any state: an operator's
    disable or cleanup."""
    _leave(pool, "to_disabled", ANY_STATE)
    pool.update({"state": State.DISABLED, "enabled": False, "fallback": fallback, "error_message": None})


def to_given_up(pool: Pool, reason: str) -> None:
    """Degraded, and no longer healed (it left the healer's index): an operator's enable or provision starts over."""
    _leave(pool, "to_given_up", frozenset({State.DEGRADED, State.PROVISIONING, State.SEARCHING}))
    pool.update({"state": State.DEGRADED, "error_message": reason, "heal_given_up": True})


def schedule_switchover(pool: Pool, at: float) -> None:
    """A switchover to the standby is planned for ``at`` (epoch s); one planned before is replaced."""
    pool["scheduled_switchover"] = {"at": iso_at(at), "requested_at": now_iso()}


def unschedule_switchover(pool: Pool) -> None:
    """The planned switchover starts now, is cancelled, or is dropped."""
    pool["scheduled_switchover"] = None


def to_degraded(pool: Pool, reason: str, retry_in: float, **fields: Unpack[Pool]) -> None:
    """Protected no longer, or only partly: the healer retries after ``retry_in`` seconds. From any state: any
    operation may fail, a cleanup's after it disabled the pool."""
    _leave(pool, "to_degraded", ANY_STATE)
    pool.update(fields)
    pool.update({"state": State.DEGRADED, "error_message": reason, "next_heal_at": time.time() + retry_in})


# -- the standby's own state --


def standby_starting(pool: Pool, standby_gpu_id: int) -> None:
    """The failover started the standby (or a fresh one on the host, in its place)."""
    _leave(pool, "standby_starting", ANY_STANDBY - {StandbyState.RUNNING}, "standby_state")
    pool.update({"standby_gpu_id": standby_gpu_id, "standby_state": StandbyState.STARTING})


def standby_stopped(pool: Pool, standby_gpu_id: int) -> None:
    """The pool has a stopped standby: one just made, kept, or left stopped by a failover that failed."""
    _leave(pool, "standby_stopped", ANY_STANDBY - {StandbyState.RUNNING}, "standby_state")
    pool.update({"standby_gpu_id": standby_gpu_id, "standby_state": StandbyState.STOPPED})


def standby_gone(pool: Pool) -> None:
    """The pool has no standby (destroyed, lost, or never made). From any standby state."""
    _leave(pool, "standby_gone", ANY_STANDBY, "standby_state")
    pool.update({"standby_gpu_id": None, "standby_state": StandbyState.NONE})
