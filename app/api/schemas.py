"""Request and response schemas; field names are the seed document's."""

import time
from datetime import timezone

from marshmallow import Schema, ValidationError, fields, validate

from app.pools import cost_per_hour, redacted_env

MAX_ID = 2**53 - 1  # ids stay exact in every JSON client
GPU_NAME = validate.Regexp(r"^[A-Za-z0-9][A-Za-z0-9_ .-]{0,63}\Z", error="Not a GPU name, e.g. RTX_4090.")
IMAGE = validate.Regexp(r"^[A-Za-z0-9][A-Za-z0-9_./:@-]{0,1023}\Z", error="Not a Docker image reference.")


class Integer(fields.Integer):
    """An integer in [low, high]; in JSON, true/false, 1.5 or "1" is not one (query strings are text)."""

    def __init__(self, low: int, high: int, strict: bool = True, **kwargs):
        super().__init__(strict=strict, validate=validate.Range(low, high), **kwargs)

    def _validated(self, value):
        if isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return super()._validated(value)


class Id(Integer):
    def __init__(self, **kwargs):
        super().__init__(1, MAX_ID, **kwargs)


class Price(fields.Float):
    def __init__(self, **kwargs):
        super().__init__(allow_nan=False, validate=validate.Range(0, 1000), **kwargs)


ONSTART_MAX = 4048  # Vast's limit for args + onstart: 4096 by its API spec, 4048 on other pages; the lower
ENV_NAME = validate.Regexp(r"^(-p \d{1,5}(:\d{1,5})?(/(tcp|udp))?|[A-Za-z_][A-Za-z0-9_]{0,127})\Z",
                           error="Not an environment variable name, nor a port request like '-p 8080:8080'.")


class PoolSpecSchema(Schema):
    """What a pool is made of; every field has the seed's default."""
    gpu_name = fields.String(load_default=None, allow_none=True, validate=GPU_NAME,
                             metadata={"example": "RTX_4090"})
    image = fields.String(load_default=None, validate=IMAGE,
                          metadata={"example": "pytorch/pytorch:2.1.0-cuda12.1-cudnn8-runtime"})
    disk_size = Integer(8, 4096, load_default=50, metadata={"description": "GB"})
    volume_size = Integer(1, 65536, load_default=100, metadata={"description": "GB"})
    replica = fields.Boolean(load_default=None, allow_none=True, metadata={
        "description": "keep a copy of the volume on another host, refreshed every REPLICA_COPY_INTERVAL s, so a "
                       "host failure moves the pool there; absent or null: WARMPOOL_REPLICA_DEFAULT"})
    priority = Integer(-1000, 1000, load_default=0, metadata={
        "description": "when many pools fail at once, a higher priority is failed over first (its provider calls "
                       "go ahead of lower ones'); equal priorities keep the order of their failures"})
    onstart = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=ONSTART_MAX), metadata={
        "description": "a script every instance of the pool runs when it starts (primary, standby, replacements, "
                       "moves): warm caches, restore a checkpoint before it takes traffic",
        "example": "python /workspace/warm_cache.py"})
    env = fields.Dict(keys=fields.String(validate=ENV_NAME), values=fields.String(validate=validate.Length(max=256)),
                      load_default=None, allow_none=True, validate=validate.Length(max=64), metadata={
                          "description": "environment of every instance of the pool; a '-p 8080:8080' key asks for "
                                         "a container port (see primary_ports)",
                          "example": {"MODEL": "llama", "-p 8080:8080": "1"}})


class ProvisionSchema(PoolSpecSchema):
    machine_id = Id(required=True, metadata={"description": "the machine (instance) to protect"})
    host_machine_id = Id(required=True, metadata={"description": "the Vast.ai host"})


class EnableSchema(PoolSpecSchema):
    """As provision's, but a field left out keeps the pool's own (a new pool's: provision's defaults)."""
    max_price = Price(load_default=None, allow_none=True, metadata={"description": "$/h per GPU"})
    disk_size = Integer(8, 4096, metadata={"description": "GB; absent: the pool's own (50 for a new one)"})
    volume_size = Integer(1, 65536, metadata={"description": "GB; absent: the pool's own (100 for a new one)"})
    priority = Integer(-1000, 1000, metadata={"description": "as for provision; absent: the pool's own (0 for a new one)"})


SWITCHOVER_HORIZON_DAYS = 366
SWITCHOVER_PAST_SECONDS = 60  # a time further back is a mistake (a wrong year or zone), not "now"


def switchover_time(at) -> None:
    if at.timestamp() < time.time() - SWITCHOVER_PAST_SECONDS:
        raise ValidationError("is in the past; leave it out to switch over at once")
    if at.timestamp() > time.time() + SWITCHOVER_HORIZON_DAYS * 86400:
        raise ValidationError(f"is more than {SWITCHOVER_HORIZON_DAYS} days ahead")


class SwitchoverSchema(Schema):
    at = fields.AwareDateTime(format="iso", default_timezone=timezone.utc, load_default=None, allow_none=True,
                              validate=switchover_time, metadata={
                                  "description": "when (ISO 8601; UTC when it has no offset); absent: at once, "
                                                 "within a health-check interval", "example": "2026-12-24T03:00:00Z"})


class WaitSchema(Schema):
    wait = fields.Float(load_default=0, allow_nan=False, validate=validate.Range(0, 120),
                        metadata={"description": "seconds to wait for the operation to end (at most 120); "
                                                 "when too many requests wait already, the 202 answers at once"})


class HostsQuerySchema(Schema):
    gpu_name = fields.String(load_default=None, validate=GPU_NAME)
    min_gpus = Integer(1, 64, strict=False, load_default=2)
    max_price = Price(load_default=None)
    verified = fields.Boolean(load_default=True)


class StatusSchema(Schema):
    machine_id = fields.Integer()
    state = fields.String(metadata={"enum": ["disabled", "searching", "provisioning", "active", "failover",
                                             "degraded"]})
    host_machine_id = fields.Integer(allow_none=True)
    volume_id = fields.Integer(allow_none=True)
    primary_gpu_id = fields.Integer(allow_none=True)
    standby_gpu_id = fields.Integer(allow_none=True)
    standby_state = fields.String(metadata={"enum": ["none", "stopped", "starting", "running"]})
    primary_ssh_host = fields.String(allow_none=True)
    primary_ssh_port = fields.Integer(allow_none=True)
    primary_public_ipaddr = fields.String(allow_none=True, metadata={"description": "the primary host's address"})
    primary_ports = fields.Dict(allow_none=True, metadata={
        "description": 'the primary\'s port map as Vast lists it: {"8080/tcp": [{"HostIp": "0.0.0.0", "HostPort": '
                       '"20065"}]}; a failover changes it'})
    last_health_check = fields.String(allow_none=True)
    failover_count = fields.Integer()
    last_failover_at = fields.String(allow_none=True)
    error_message = fields.String(allow_none=True)
    # beyond the seed
    fallback = fields.String(allow_none=True)
    gpu_name = fields.String(allow_none=True)
    last_failover = fields.Dict(allow_none=True, metadata={"description": "recovery time and per-phase seconds"})
    priority = fields.Integer(dump_default=0, metadata={"description": "the order of failovers in a mass failure"})
    replica = fields.Boolean(allow_none=True, metadata={"description": "the pool's choice; null: the default"})
    replica_host_machine_id = fields.Integer(allow_none=True, metadata={"description": "the replica's host"})
    replica_volume_id = fields.Integer(allow_none=True)
    replica_data_at = fields.String(allow_none=True, metadata={
        "description": "the replica holds the volume's data as of this time (the start of the last completed copy)"})
    onstart = fields.String(allow_none=True)
    env = fields.Function(lambda pool: redacted_env(pool.get("env")), metadata={
        "type": "object", "nullable": True,
        "description": "the pool's env; the value of a name like *KEY*, *SECRET*, *TOKEN*, *PASS* ... shows as ***"})
    cost_per_hour = fields.Function(lambda pool: cost_per_hour(pool) if "disk_size" in pool else None, metadata={
        "type": "object", "description": "$/h from Vast's listed prices: primary (GPUs and disk, running), "
                                         "standby_storage (its disk, billed while stopped), volume, replica, total; "
                                         "a part is null until its price was seen (complete: false); null in "
                                         "an operation result's short status"})
    scheduled_switchover = fields.Dict(allow_none=True, metadata={
        "description": 'a planned switchover to the standby: {"at": ISO time, "requested_at": ISO time}'})
    task_id = fields.String(attribute="op_id", allow_none=True,
                            metadata={"description": "the pool's latest operation, at /api/v1/tasks/<task_id>"})
    updated_at = fields.String()


class PoolListSchema(Schema):
    pools = fields.List(fields.Nested(StatusSchema))
    count = fields.Integer()
    cost_per_hour = fields.Float(metadata={"description": "the tenant's total $/h over its pools (known parts)"})


class OfferSchema(Schema):
    offer_id = fields.Integer()
    machine_id = fields.Integer()
    gpu_name = fields.String()
    num_gpus = fields.Integer()
    price_per_hour = fields.Float()
    reliability = fields.Float()
    verified = fields.Boolean()
    geolocation = fields.String(allow_none=True)


class HostSchema(Schema):
    machine_id = fields.Integer()
    total_gpus = fields.Integer()
    available_gpus = fields.Integer()
    gpu_name = fields.String()
    avg_price_per_hour = fields.Float()
    reliability = fields.Float()
    verified = fields.Boolean()
    geolocation = fields.String(allow_none=True)
    can_create_warm_pool = fields.Boolean()
    offers = fields.List(fields.Nested(OfferSchema))


class HostListSchema(Schema):
    hosts = fields.List(fields.Nested(HostSchema))
    count = fields.Integer()


class OperationSchema(Schema):
    """An operation's answer: 202 with ``task_id``, or with ``?wait`` the seed's synchronous body."""
    success = fields.Boolean()
    message = fields.String()
    task_id = fields.String()
    status = fields.Nested(StatusSchema)
    recovery_time_seconds = fields.Float()
    new_primary_gpu_id = fields.Integer()
    phases = fields.Dict()


class ToggleSchema(Schema):
    status = fields.String(metadata={"enum": ["enabled", "disabled"]})
    message = fields.String()
    fallback = fields.String()
    task_id = fields.String()


class EventListSchema(Schema):
    machine_id = fields.Integer()
    events = fields.List(fields.Dict())


class TaskSchema(Schema):
    task_id = fields.String()
    state = fields.String(metadata={"enum": ["PENDING", "STARTED", "RETRY", "SUCCESS", "FAILURE"]})
    operation = fields.String()
    machine_id = fields.Integer()
    step = fields.String()
    result = fields.Dict(allow_none=True)
    error = fields.String(allow_none=True)
    created_at = fields.String()
    updated_at = fields.String()
