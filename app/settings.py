"""Settings, read from the environment once per process.

The web app, the workers and beat all read the same variables, so a setting
means the same thing wherever it is used.
"""

import os
from dataclasses import dataclass, field


def _float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def _int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def _bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{name} must be a boolean, got {value!r}")


def _api_keys(raw: str) -> dict[str, str]:
    """Parse ``tenant1:key1,tenant2:key2`` into ``{key: tenant}``."""
    keys = {}
    for pair in filter(None, (p.strip() for p in raw.split(","))):
        tenant, sep, key = pair.partition(":")
        if not sep or not tenant or not key:
            raise ValueError("WARMPOOL_API_KEYS entries must look like tenant:key")
        keys[key] = tenant
    return keys


@dataclass(frozen=True)
class Settings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    vast_api_url: str = "https://console.vast.ai"
    vast_api_key: str = field(default="", repr=False)
    api_keys: dict[str, str] = field(default_factory=dict, repr=False)
    # health sweep: seconds between sweeps, and failed sweeps in a row before a failover
    health_check_interval: float = 10.0
    failover_threshold: int = 3
    # how often a worker re-reads an instance it waits on
    poll_interval: float = 2.0
    # how long a started standby may take to run before it is given up
    standby_start_timeout: float = 120.0
    # how long a new instance may take to load before it is given up
    instance_ready_timeout: float = 900.0
    # a lock's time to live; holders extend it while they work
    lock_ttl: float = 60.0
    failovers_per_minute: int = 10
    reconcile_destroy_orphans: bool = False
    # the rentable-GPU check of standbys' hosts costs a search call, so it runs less often
    capacity_check_interval: float = 30.0
    hosts_cache_seconds: float = 15.0
    default_image: str = "pytorch/pytorch:2.1.0-cuda12.1-cudnn8-runtime"

    @classmethod
    def from_env(cls) -> "Settings":
        return cls(
            redis_url=os.environ.get("REDIS_URL", cls.redis_url),
            vast_api_url=os.environ.get("VAST_API_URL", cls.vast_api_url),
            vast_api_key=os.environ.get("VAST_API_KEY", ""),
            api_keys=_api_keys(os.environ.get("WARMPOOL_API_KEYS", "")),
            health_check_interval=_float("HEALTH_CHECK_INTERVAL", cls.health_check_interval),
            failover_threshold=_int("FAILOVER_THRESHOLD", cls.failover_threshold),
            poll_interval=_float("PROVIDER_POLL_INTERVAL", cls.poll_interval),
            standby_start_timeout=_float("STANDBY_START_TIMEOUT", cls.standby_start_timeout),
            instance_ready_timeout=_float("INSTANCE_READY_TIMEOUT", cls.instance_ready_timeout),
            lock_ttl=_float("LOCK_TTL", cls.lock_ttl),
            failovers_per_minute=_int("FAILOVERS_PER_MINUTE", cls.failovers_per_minute),
            reconcile_destroy_orphans=_bool("RECONCILE_DESTROY_ORPHANS", cls.reconcile_destroy_orphans),
            capacity_check_interval=_float("CAPACITY_CHECK_INTERVAL", cls.capacity_check_interval),
            hosts_cache_seconds=_float("HOSTS_CACHE_SECONDS", cls.hosts_cache_seconds),
            default_image=os.environ.get("WARMPOOL_DEFAULT_IMAGE", cls.default_image),
        )
