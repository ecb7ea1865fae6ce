"""Settings, read from the environment once per process: the one source of configuration.

The web app, the workers, beat and Flower read the same variables, so a setting means the same
thing wherever it is used. ``Settings.from_env`` checks every value and names the variable and
its allowed range when one is wrong (``HEALTH_CHECK_INTERVAL must be a number > 0, got 'abc'``),
so a process stops at its start rather than misbehaving later. Each process builds it once:
``app.runtime.settings()``, which ``celeryconfig.py``, ``flowerconfig.py``, ``gunicorn.conf.py``
(through ``app.logs``) and the service's modules share.

Nothing else in ``app/``, ``tasks/``, ``sim/`` and the config files reads the environment, except
``warmpool dev``, which hands its environment on to the processes it starts (the simulator takes
its options from ``warmpool sim``'s). The command line's own options are not the service's settings:
click reads them through its documented ``envvar`` option (``--url``/``WARMPOOL_URL`` and
``--key``/``WARMPOOL_API_KEY`` in ``app/client.py``; the ports and ``WARMPOOL_TIME_SCALE`` of
``warmpool dev`` and ``warmpool sim`` in ``app/cli.py``).
"""

import hashlib
import json
import math
import os
import stat
from dataclasses import dataclass, field
from urllib.parse import urlsplit


def _number(name: str, default: float, convert: type, low: float, low_allowed: bool, high: float | None):
    """The variable as ``convert`` (int or float) within its range; an error names the variable and the range."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = convert(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and (value >= low if low_allowed else value > low)
            and (high is None or value <= high)):
        allowed = f"{'>=' if low_allowed else '>'} {low:g}" + (f" and <= {high:g}" if high is not None else "")
        raise ValueError(f"{name} must be {'a whole number' if convert is int else 'a number'} {allowed}, "
                         f"got {raw!r}")
    return value


def _float(name: str, default: float, *, at_least: float | None = None, at_most: float | None = None) -> float:
    """Seconds, counts or shares: > 0 unless ``at_least`` lets it be as low as that (0: none, off)."""
    return _number(name, default, float, at_least or 0.0, at_least is not None, at_most)


def _int(name: str, default: int, *, at_least: int = 1) -> int:
    return _number(name, default, int, at_least, True, None)


def _bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{name} must be a boolean, got {value!r}")


def _choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = os.environ.get(name, default).strip().lower() or default
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


# keys that examples and tutorials print: a service taking one is open to anyone who read them
PLACEHOLDER_KEYS = {"change-me", "changeme"}


def _api_keys(raw: str) -> dict[str, str]:
    """Parse ``tenant1:key1,tenant2:key2`` into ``{key: tenant}``."""
    keys = {}
    for pair in filter(None, (p.strip() for p in raw.split(","))):
        tenant, sep, key = pair.partition(":")
        if not sep or not tenant or not key:
            raise ValueError("WARMPOOL_API_KEYS entries must look like tenant:key")
        if key.lower() in PLACEHOLDER_KEYS:
            raise ValueError(f"WARMPOOL_API_KEYS: tenant {tenant}'s key is the placeholder {key!r}; "
                             f"make a real one with `warmpool create-key {tenant}`")
        keys[key] = tenant
    return keys


# the account of VAST_API_KEY: every tenant that VAST_ACCOUNTS does not map to a key of its own
DEFAULT_ACCOUNT = "default"


def account_name(key: str) -> str:
    """The name of the Vast account a key opens, safe to log and to put in a Redis key: the first 12 hex digits
    of the key's sha256 (the simulator names its accounts the same way)."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def _vast_accounts(path: str) -> tuple[dict[str, str], dict[str, str]]:
    """Read VAST_ACCOUNTS: the path of a JSON file ``{"tenant": "vast api key", ...}``, where a tenant's entry may
    also be ``{"key": "vast api key", "webhook_secret": "..."}``: the secret that account's notifications are
    signed with. Returns (tenant -> key, tenant -> webhook secret). It holds secrets, so it must be readable by its
    owner only (mode 600 or 400, like an ssh key): a file that its group or others can read is refused. Errors
    name the entry, never a key or a secret."""
    if not path:
        return {}, {}
    try:
        with open(path, "rb") as file:
            mode = os.fstat(file.fileno()).st_mode
            raw = file.read()
    except OSError as exc:
        raise ValueError(f"VAST_ACCOUNTS: cannot read {path!r}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError(f"VAST_ACCOUNTS: {path!r} holds API keys but its group or others may use it "
                         f"(mode {stat.S_IMODE(mode):o}); make it readable by the service only: chmod 600")
    try:
        accounts = json.loads(raw)
    except ValueError:
        accounts = None
    if not isinstance(accounts, dict):
        raise ValueError(f'VAST_ACCOUNTS: {path!r} must hold a JSON object of tenant to Vast API key, '
                         f'like {{"acme": "<key>"}}')
    keys, secrets = {}, {}
    for tenant, entry in accounts.items():
        if not tenant or ":" in tenant:
            raise ValueError(f"VAST_ACCOUNTS: {tenant!r} is not a tenant name")
        keys[tenant], secret = _account_entry(tenant, entry)
        if secret:
            secrets[tenant] = secret
    named_by: dict[str, str] = {}  # key -> the first tenant that names its account's secret
    for tenant, secret in secrets.items():  # one account, one secret: its tenants may not name different ones
        first = named_by.setdefault(keys[tenant], tenant)
        if secrets[first] != secret:
            raise ValueError(f"VAST_ACCOUNTS: tenants {first} and {tenant} share a Vast account but not its "
                             f"webhook_secret: give both the same one")
    return keys, secrets


def _account_entry(tenant: str, entry: object) -> tuple[str, str]:
    """One tenant's entry of VAST_ACCOUNTS: (its Vast API key, its account's webhook secret or "")."""
    if isinstance(entry, str):
        entry = {"key": entry}
    if not isinstance(entry, dict) or not set(entry) <= {"key", "webhook_secret"}:
        raise ValueError(f'VAST_ACCOUNTS: tenant {tenant}\'s entry must be its Vast API key, or an object '
                         f'{{"key": "<key>", "webhook_secret": "<secret>"}}')
    key, secret = entry.get("key"), entry.get("webhook_secret", "")
    if not isinstance(key, str) or not key.strip():
        raise ValueError(f"VAST_ACCOUNTS: tenant {tenant}'s key must be a non-empty string")
    if not isinstance(secret, str):
        raise ValueError(f"VAST_ACCOUNTS: tenant {tenant}'s webhook_secret must be a string")
    for name, value in (("key", key), ("webhook_secret", secret)):
        if value.strip().lower() in PLACEHOLDER_KEYS:
            raise ValueError(f"VAST_ACCOUNTS: tenant {tenant}'s {name} is a placeholder")
    return key.strip(), secret.strip()


# -- Redis Sentinel -----------------------------------------------------------------------------------------

SENTINEL_SCHEME = "sentinel://"


@dataclass(frozen=True)
class SentinelAddress:
    """Where the sentinels are (``REDIS_URL`` in Celery's form), which master they watch, and its database.
    ``password`` is the Redis master's (in the URL, as kombu reads it); the sentinels' own is a setting."""
    nodes: tuple[tuple[str, int], ...]
    db: int
    password: str | None = field(default=None, repr=False)


def sentinel_address(url: str, variable: str = "REDIS_URL") -> SentinelAddress | None:
    """Parse ``sentinel://[:password@]h1:26379[/db];sentinel://h2:26379;...``; None for a plain Redis URL.
    Errors name ``variable``, the setting the URL came from."""
    if not url.startswith(SENTINEL_SCHEME):
        return None
    nodes, dbs, passwords = [], set(), set()
    for number, part in enumerate(filter(None, (p.strip() for p in url.split(";"))), 1):
        try:
            parsed = urlsplit(part)
            port, db = parsed.port or 26379, int(parsed.path.strip("/") or 0)
        except ValueError:
            parsed = None
        if parsed is None or parsed.scheme != "sentinel" or not parsed.hostname:
            # the entry itself is not shown: it may carry the Redis password
            raise ValueError(f"{variable}: entry {number} is not sentinel://host:port[/db]; with sentinels "
                             "the form is sentinel://h1:26379;sentinel://h2:26379;sentinel://h3:26379")
        nodes.append((parsed.hostname, port))
        dbs.add(db)
        passwords.add(parsed.password)
    if len(dbs) > 1:
        raise ValueError(f"{variable}: every sentinel:// entry must name the same /db")
    passwords.discard(None)
    if len(passwords) > 1:
        raise ValueError(f"{variable}: the sentinel:// entries carry different Redis passwords")
    return SentinelAddress(tuple(nodes), dbs.pop(), passwords.pop() if passwords else None)


def _sentinel_master(master: str, **urls: str) -> str:
    """REDIS_SENTINEL_MASTER: required with sentinel:// URLs (kombu's worker exits at start without it);
    ``urls`` by the variable each came from, so that a malformed one is named."""
    master = master.strip()
    if any([sentinel_address(url, variable) for variable, url in urls.items()]) and not master:
        raise ValueError("REDIS_SENTINEL_MASTER must name the master the sentinels watch when REDIS_URL "
                         "or CELERY_BROKER_URL is sentinel://...")
    return master


def _schedule(name: str, default: tuple[float, ...]) -> tuple[float, ...]:
    """Parse ``0,5,300`` (seconds, one a step) into a tuple; an empty, negative or non-finite step is an error."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        steps = tuple(float(step) for step in raw.split(","))
    except ValueError:
        steps = ()
    if not steps or any(not math.isfinite(step) or step < 0 for step in steps):
        raise ValueError(f"{name} must be comma-separated seconds, like 0,5,300, got {raw!r}")
    return steps


# Standard Webhooks' example schedule: immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (about 27.6 h)
WEBHOOK_RETRY_SCHEDULE = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
WEBHOOK_DELIVERY_LIFETIME = 7 * 24 * 3600  # a delivery's record (and its place in the outbox) lasts this long
WEBHOOK_RETRY_JITTER = 0.1  # a retry waits up to this share of its delay longer, so retries after an outage spread
WEBHOOK_RETRY_AFTER_MAX = 10 * 3600  # a receiver's Retry-After is honoured up to this (the default's longest step)


def webhook_retry_span(schedule: tuple[float, ...]) -> float:
    """The longest a delivery can take from its event to its last attempt under ``schedule``: the first
    step as it is, each retry's step at its full jitter or a receiver's Retry-After at its cap, if longer."""
    return schedule[0] + sum(max(step * (1 + WEBHOOK_RETRY_JITTER), WEBHOOK_RETRY_AFTER_MAX)
                             for step in schedule[1:])


# Vast's documented minimum intervals between calls, per endpoint and API key
VAST_RATE_LIMITS = {"create_instance": 4.5, "destroy_instance": 3.0, "show_instance": 2.0,
                    "list_instances": 1.0, "manage_instance": 1.0, "volumes": 5.5, "search_offers": 6.0}


def _rate_limits(raw: str | None) -> dict[str, float]:
    try:
        limits = json.loads(raw) if raw else VAST_RATE_LIMITS
    except ValueError:
        limits = None
    if not isinstance(limits, dict) or not all(isinstance(v, (int, float)) and 0 <= v < math.inf
                                               for v in limits.values()):
        raise ValueError('VAST_RATE_LIMITS must be a JSON object of seconds >= 0, like {"create_instance": 4.5}')
    return limits


@dataclass(frozen=True)
class Settings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    # REDIS_URL sentinel://h1:26379;sentinel://h2:26379: the master the sentinels watch, and their own password
    redis_sentinel_master: str = ""
    redis_sentinel_password: str = field(default="", repr=False)
    broker_url: str = ""  # empty: the broker is REDIS_URL
    vast_api_url: str = "https://console.vast.ai"
    vast_api_key: str = field(default="", repr=False)
    # the secret of Vast's account notifications (X-Vast-Signature-256); empty: the receiver is off
    vast_webhook_secret: str = field(default="", repr=False)
    vast_rate_limits: dict[str, float] = field(default_factory=lambda: dict(VAST_RATE_LIMITS))
    # VAST_ACCOUNTS: tenant -> the API key of its own Vast account; a tenant not listed uses VAST_API_KEY's
    vast_accounts: dict[str, str] = field(default_factory=dict, repr=False)
    # VAST_ACCOUNTS too: tenant -> the secret its account's notifications are signed with (webhook_secret)
    vast_webhook_secrets: dict[str, str] = field(default_factory=dict, repr=False)
    api_keys: dict[str, str] = field(default_factory=dict, repr=False)
    # health sweep: seconds between sweeps; a primary fails over once it failed this many sweeps in a row
    # and for this long (a definitive status - offline, exited, gone - needs only a confirming call)
    health_check_interval: float = 2.0
    failover_threshold: int = 2
    failover_min_seconds: float = 3.0
    # how often a worker re-reads an instance it waits on
    poll_interval: float = 2.0
    # how long a started standby may take to run before it is given up
    standby_start_timeout: float = 120.0
    # how long a new instance may take to load before it is given up
    instance_ready_timeout: float = 900.0
    # a lock's time to live; a heartbeat renews it every third of that while a step works, so a killed
    # worker's machine is free again within this many seconds
    lock_ttl: float = 10.0
    # how long a create whose answer was lost may take to show up at the provider before it counts as never made
    create_grace: float = 35.0
    failovers_per_minute: int = 10
    reconcile_destroy_orphans: bool = False
    # the rentable-GPU check of standbys' hosts costs a search call, so it runs less often
    capacity_check_interval: float = 30.0
    hosts_cache_seconds: float = 15.0
    heal_interval: float = 3.0
    reconcile_interval: float = 300.0
    # the reconciler destroys nothing younger than this, and at most this share of what it sees in one run
    reconcile_grace: float = 600.0
    reconcile_max_share: float = 0.2
    # a primary or standby whose rental ends (its end_date) within this many seconds is replaced before its end
    expiry_margin: float = 86400.0
    # seconds between copies of a pool's volume to its replica on another host: the data-loss bound of a host failure
    replica_copy_interval: float = 300.0
    # whether a pool keeps a replica when its provision or enable body does not say
    replica_default: bool = False
    # WARMPOOL_DEV=1: the throwaway Redis of `warmpool dev`, so no warning that it does not persist
    dev: bool = False
    # a killed worker's message is delivered again after this; the healer resumes its operation sooner
    visibility_timeout: float = 300.0
    default_image: str = "pytorch/pytorch:2.1.0-cuda12.1-cudnn8-runtime"
    # logs: readable text, or one JSON object per line (app/logs.py)
    log_format: str = "text"
    # the bearer token /metrics asks for; empty: /metrics is open
    metrics_token: str = field(default="", repr=False)
    # webhook deliveries: the delay before each attempt (one attempt per step; the first counts from the event,
    # and the worst case must fit in WEBHOOK_DELIVERY_LIFETIME, see webhook_retry_span), the hard deadline of one
    # attempt's whole exchange, the attempts in flight per tenant, and whether loopback, private and
    # link-local destinations are allowed (a test or a lab; never on a shared service)
    webhook_retry_schedule: tuple[float, ...] = WEBHOOK_RETRY_SCHEDULE
    webhook_timeout: float = 15.0
    webhook_concurrency_per_tenant: int = 4
    # a tenant's deliveries not yet delivered or failed; past it, a test or resend answers 429
    webhook_pending_per_tenant: int = 100
    webhook_allow_private: bool = False
    # a request body past this many bytes is answered 413 before it is read
    max_content_length: int = 1024 * 1024
    # requests held by ?wait, overall and per tenant; past either, the 202 answers at once. Keep the overall cap
    # below one web worker's threads (the Procfile: 16), so /healthz and other tenants always find a thread
    wait_max_holders: int = 8
    wait_max_holders_per_tenant: int = 4
    # Vast's notifications: an identical body within this many seconds is a replay or a redelivery, dropped;
    # and one pool's failover check is triggered by notifications at most once per interval
    notification_replay_window: float = 3600.0
    notification_check_interval: float = 10.0
    max_pools_per_tenant: int = 100
    # where Flower can be reached, and its users (user:password,...); flowerconfig.py refuses a reachable Flower
    # without them (Flower reads FLOWER_BASIC_AUTH itself too: its own FLOWER_* options)
    flower_address: str = "127.0.0.1"
    flower_basic_auth: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        """A retry schedule fits in a delivery's lifetime. Each account's notifications are signed with its own
        secret: one that another account's holders know could forge this account's (errors name tenants, never a
        secret)."""
        span = webhook_retry_span(self.webhook_retry_schedule)
        if span > WEBHOOK_DELIVERY_LIFETIME:
            raise ValueError(
                f"WEBHOOK_RETRY_SCHEDULE could keep a delivery retrying for {span / 3600:.1f} h (its steps, each "
                f"retry {WEBHOOK_RETRY_JITTER:.0%} later at most or stretched by a receiver's Retry-After up to "
                f"{WEBHOOK_RETRY_AFTER_MAX / 3600:g} h), past a delivery's lifetime of "
                f"{WEBHOOK_DELIVERY_LIFETIME / 3600:g} h: use fewer or shorter steps")
        owner = {self.vast_webhook_secret: DEFAULT_ACCOUNT} if self.vast_webhook_secret else {}
        for tenant, secret in self.vast_webhook_secrets.items():
            account = self.account_of(tenant)
            if account == DEFAULT_ACCOUNT:
                raise ValueError(f"VAST_ACCOUNTS: tenant {tenant} is on VAST_API_KEY's account, whose notifications "
                                 f"are signed with VAST_WEBHOOK_SECRET: drop its webhook_secret")
            if owner.setdefault(secret, account) != account:
                raise ValueError(f"VAST_ACCOUNTS: tenant {tenant}'s webhook_secret is another Vast account's too "
                                 f"(VAST_WEBHOOK_SECRET's or another tenant's): give each account its own")

    @classmethod
    def from_env(cls) -> "Settings":
        vast_accounts, vast_webhook_secrets = _vast_accounts(os.environ.get("VAST_ACCOUNTS", "").strip())
        return cls(
            redis_url=os.environ.get("REDIS_URL", cls.redis_url),
            redis_sentinel_master=_sentinel_master(os.environ.get("REDIS_SENTINEL_MASTER", ""),
                                                   REDIS_URL=os.environ.get("REDIS_URL", cls.redis_url),
                                                   CELERY_BROKER_URL=os.environ.get("CELERY_BROKER_URL", "")),
            redis_sentinel_password=os.environ.get("REDIS_SENTINEL_PASSWORD", ""),
            broker_url=os.environ.get("CELERY_BROKER_URL", ""),
            vast_api_url=os.environ.get("VAST_API_URL", cls.vast_api_url),
            vast_api_key=os.environ.get("VAST_API_KEY", ""),
            vast_webhook_secret=os.environ.get("VAST_WEBHOOK_SECRET", ""),
            vast_rate_limits=_rate_limits(os.environ.get("VAST_RATE_LIMITS")),
            vast_accounts=vast_accounts,
            vast_webhook_secrets=vast_webhook_secrets,
            api_keys=_api_keys(os.environ.get("WARMPOOL_API_KEYS", "")),
            health_check_interval=_float("HEALTH_CHECK_INTERVAL", cls.health_check_interval),
            failover_threshold=_int("FAILOVER_THRESHOLD", cls.failover_threshold),
            failover_min_seconds=_float("FAILOVER_MIN_SECONDS", cls.failover_min_seconds, at_least=0),
            poll_interval=_float("PROVIDER_POLL_INTERVAL", cls.poll_interval),
            standby_start_timeout=_float("STANDBY_START_TIMEOUT", cls.standby_start_timeout),
            instance_ready_timeout=_float("INSTANCE_READY_TIMEOUT", cls.instance_ready_timeout),
            lock_ttl=_float("LOCK_TTL", cls.lock_ttl),
            create_grace=_float("CREATE_GRACE", cls.create_grace, at_least=0),
            failovers_per_minute=_int("FAILOVERS_PER_MINUTE", cls.failovers_per_minute),
            reconcile_destroy_orphans=_bool("RECONCILE_DESTROY_ORPHANS", cls.reconcile_destroy_orphans),
            capacity_check_interval=_float("CAPACITY_CHECK_INTERVAL", cls.capacity_check_interval),
            hosts_cache_seconds=_float("HOSTS_CACHE_SECONDS", cls.hosts_cache_seconds, at_least=0),
            heal_interval=_float("HEAL_INTERVAL", cls.heal_interval),
            reconcile_interval=_float("RECONCILE_INTERVAL", cls.reconcile_interval),
            reconcile_grace=_float("RECONCILE_GRACE", cls.reconcile_grace, at_least=0),
            reconcile_max_share=_float("RECONCILE_MAX_SHARE", cls.reconcile_max_share, at_least=0, at_most=1),
            expiry_margin=_float("EXPIRY_MARGIN", cls.expiry_margin),
            replica_copy_interval=_float("REPLICA_COPY_INTERVAL", cls.replica_copy_interval),
            replica_default=_bool("WARMPOOL_REPLICA_DEFAULT", cls.replica_default),
            dev=_bool("WARMPOOL_DEV", cls.dev),
            visibility_timeout=_float("CELERY_VISIBILITY_TIMEOUT", cls.visibility_timeout),
            default_image=os.environ.get("WARMPOOL_DEFAULT_IMAGE", cls.default_image),
            log_format=_choice("WARMPOOL_LOG_FORMAT", cls.log_format, ("text", "json")),
            metrics_token=os.environ.get("WARMPOOL_METRICS_TOKEN", ""),
            webhook_retry_schedule=_schedule("WEBHOOK_RETRY_SCHEDULE", WEBHOOK_RETRY_SCHEDULE),
            webhook_timeout=_float("WEBHOOK_TIMEOUT", cls.webhook_timeout),
            webhook_concurrency_per_tenant=_int("WEBHOOK_CONCURRENCY_PER_TENANT", cls.webhook_concurrency_per_tenant),
            webhook_pending_per_tenant=_int("WEBHOOK_PENDING_PER_TENANT", cls.webhook_pending_per_tenant),
            webhook_allow_private=_bool("WARMPOOL_WEBHOOK_ALLOW_PRIVATE", cls.webhook_allow_private),
            max_content_length=_int("MAX_CONTENT_LENGTH", cls.max_content_length),
            wait_max_holders=_int("WAIT_MAX_HOLDERS", cls.wait_max_holders),
            wait_max_holders_per_tenant=_int("WAIT_MAX_HOLDERS_PER_TENANT", cls.wait_max_holders_per_tenant),
            notification_replay_window=_float("NOTIFICATION_REPLAY_WINDOW", cls.notification_replay_window),
            notification_check_interval=_float("NOTIFICATION_CHECK_INTERVAL", cls.notification_check_interval),
            max_pools_per_tenant=_int("WARMPOOL_MAX_POOLS_PER_TENANT", cls.max_pools_per_tenant),
            flower_address=os.environ.get("FLOWER_ADDRESS") or cls.flower_address,
            flower_basic_auth=os.environ.get("FLOWER_BASIC_AUTH", ""),
        )

    def account_of(self, tenant: str) -> str:
        """The Vast account a tenant's pools live on (rule 17): its own key's, else the default one."""
        key = self.vast_accounts.get(tenant)
        return DEFAULT_ACCOUNT if key is None or key == self.vast_api_key else account_name(key)

    def accounts(self) -> list[str]:
        """Every account the service works on, the default first."""
        return [DEFAULT_ACCOUNT, *sorted({self.account_of(tenant) for tenant in self.vast_accounts} - {DEFAULT_ACCOUNT})]

    def webhook_secret(self, account: str) -> str:
        """The secret that the notifications of the Vast account ``account`` are signed with ("": none, the
        receiver of that account is off): VAST_WEBHOOK_SECRET for the default account, else its VAST_ACCOUNTS
        entry's ``webhook_secret``."""
        if account == DEFAULT_ACCOUNT:
            return self.vast_webhook_secret
        return next((secret for tenant, secret in self.vast_webhook_secrets.items()
                     if self.account_of(tenant) == account), "")

    def account_key(self, account: str) -> str:
        """The API key of an account named by ``account_of`` (KeyError for an account of no listed tenant)."""
        if account == DEFAULT_ACCOUNT:
            return self.vast_api_key
        return {account_name(key): key for key in self.vast_accounts.values()}[account]
