"""Every Redis key warmpool uses, in one place. Nothing outside ``app.store`` spells a key."""

from app.settings import DEFAULT_ACCOUNT


def pool(pid: str) -> str:
    return f"wp:pool:{pid}"


def lock(pid: str) -> str:
    return f"wp:lock:{pid}"


def epoch(pid: str) -> str:
    return f"wp:epoch:{pid}"


def events(pid: str) -> str:
    return f"wp:events:{pid}"


def tenant_pools(tenant: str) -> str:
    return f"wp:tenant:{tenant}:pools"


def op(op_id: str) -> str:
    return f"wp:op:{op_id}"


def op_done(op_id: str) -> str:
    return f"wp:op-done:{op_id}"


def _on_account(key: str, account: str) -> str:
    """A key of one Vast account's (rule 17); the default account's keep the names they had before accounts."""
    return key if account == DEFAULT_ACCOUNT else f"{key}@{account}"


def rate(endpoint: str, account: str = DEFAULT_ACCOUNT) -> str:
    return _on_account(f"wp:rate:{endpoint}", account)  # the next free slot of the account's endpoint


def ranked_claims(endpoint: str, account: str = DEFAULT_ACCOUNT) -> str:
    # sorted set: calls waiting their turn, by rank (Store.take_ranked_slot)
    return _on_account(f"wp:rate:{endpoint}:claims", account)


def ranked_expiry(endpoint: str, account: str = DEFAULT_ACCOUNT) -> str:
    # sorted set: the same calls, by when their claim lapses
    return _on_account(f"wp:rate:{endpoint}:claims:expiry", account)


def failovers(account: str = DEFAULT_ACCOUNT) -> str:
    return _on_account(FAILOVERS, account)  # sorted set: the account's confirmed failovers of the last minute


def awaited(account: str = DEFAULT_ACCOUNT) -> str:
    return _on_account("wp:awaited", account)  # sorted set: instances that steps wait on, until when


def awaited_round(account: str = DEFAULT_ACCOUNT) -> str:
    return _on_account("wp:awaited:round", account)


def awaited_poller(account: str = DEFAULT_ACCOUNT) -> str:
    return _on_account("wp:awaited:poller", account)


def seen(instance_id: int) -> str:
    return f"wp:seen:{instance_id}"


def cap_notice(pid: str) -> str:
    return f"wp:cap-notice:{pid}"  # a failover past the cap was said this minute


def notification_seen(digest: str) -> str:
    return f"wp:notification:{digest}"  # a Vast notification's body was taken (its sha256)


def notification_check(pid: str, role: str) -> str:
    return f"wp:notification-check:{pid}:{role}"  # a notification checked this pool's <role> lately


def wait_holders(tenant: str) -> str:
    return f"wp:waits:{tenant}"  # sorted set: one tenant's ?wait requests holding a slot, by deadline


def rebuild_tried(pid: str) -> str:
    return f"wp:rebuild-tried:{pid}"


def offers_cache(query: str) -> str:
    return f"wp:hosts:{query}"  # the provider's offers for GET /warmpool/hosts, by its search query


def webhooks(tenant: str) -> str:
    return f"wp:webhooks:{tenant}"  # hash: webhook id -> record (with its secret)


def webhook_deliveries(webhook_id: str) -> str:
    return f"wp:webhook:{webhook_id}:deliveries"  # list of delivery ids, newest first


def delivery(delivery_id: str) -> str:
    return f"wp:delivery:{delivery_id}"


def webhooks_in_flight(tenant: str) -> str:
    return f"wp:deliveries:in_flight:{tenant}"  # sorted set: delivery id -> when its slot lapses (epoch s)


def webhooks_pending(tenant: str) -> str:
    return f"wp:deliveries:pending:{tenant}"  # sorted set: delivery id -> when it expires (epoch s)


def delivery_claim(delivery_id: str, attempt: int) -> str:
    return f"wp:delivery:{delivery_id}:attempt:{attempt}"


def due_at(what: str) -> str:
    return f"wp:{what}:at"  # when the sweep last did ``what`` (capacity, audit)


def sweep_slot(n: int) -> str:
    return f"wp:sweep:slot:{n}"


POOLS = "wp:pools"                      # set of every pool id
WATCHED = "wp:watched"                  # pools whose primary the sweep watches
UNSETTLED = "wp:unsettled"              # pools the healer looks at
PRIMARIES = "wp:primaries"              # hash: primary instance id -> pool id (watched pools)
AUDIT_CURSOR = "wp:audit:cursor"        # where the sweep's rotating look at primaries goes on
STANDBYS = "wp:standbys"                # hash: standby instance id -> pool id (watched pools)
BY_STATE = "wp:pools:by_state"          # hash: state -> number of pools
SWITCHOVERS = "wp:switchovers"          # sorted set: pool id -> when its scheduled switchover is due (epoch s)
FAILOVERS = "wp:failovers"              # the default account's failovers(); the others' end in @<account>
API_KEYS = "wp:apikeys"                 # hash: sha256 of a key -> tenant
REVOKED_KEYS = "wp:apikeys:revoked"     # set: sha256 of keys revoked (WARMPOOL_API_KEYS ones too)
WAIT_HOLDERS = "wp:waits"               # sorted set: every ?wait request holding a slot, by deadline
WORKER_SEEN = "wp:worker:seen"
WORKER_READY = "wp:worker:ready"
SWEEP_RUNNING = "wp:sweep:running"
SWEEP_LAST = "wp:sweep:last"
SWEEP_LAST_TS = "wp:sweep:last:ts"
HEALTH_FAILS = "wp:health:fails"        # hash: pool id -> failed sweeps in a row
HEALTH_SINCE = "wp:health:since"        # hash: pool id -> when its first failed sweep was
PROVIDER_HEALTH = "wp:health:provider"
LABEL_COUNTS = "wp:label_counts"
UNKNOWN_SWEEPS = "wp:metrics:unknown_sweeps"
SWEEP_SECONDS = "wp:metrics:sweep_seconds"
ORPHANS = "wp:metrics:orphans"
# webhook deliveries (app/store/webhooks.py)
WEBHOOK_DUE = "wp:deliveries:due"  # sorted set: delivery id -> when its next attempt is due (epoch s)
WEBHOOK_RELAYING = "wp:webhooks:relaying"  # lock: one relay at a time
# metrics that workers count and /metrics reads (app/store/metrics.py)
METRIC_FAILOVERS = "wp:metrics:failovers"                  # hash: "<trigger>|<result>" -> failovers ended
METRIC_FAILOVERS_STARTED = "wp:metrics:failovers_started"  # hash: trigger -> failovers started
METRIC_FAILOVER_SECONDS = "wp:metrics:failover_seconds"    # hash: a histogram's fields (see _observe)
METRIC_PHASE_SECONDS = "wp:metrics:phase_seconds"          # hash: "<phase>|" + a histogram's fields
METRIC_PROVIDER_REQUESTS = "wp:metrics:provider_requests"  # hash: "<endpoint>|<code>" -> responses
METRIC_STANDBYS_LOST = "wp:metrics:standbys_lost"          # hash: the provider's status of a lost standby -> count
METRIC_WEBHOOK_DELIVERIES = "wp:metrics:webhook_deliveries"  # hash: result -> webhook attempts
