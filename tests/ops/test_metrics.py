"""/metrics: one scrape of the API shows what every worker did, parsed with prometheus_client's own parser."""

import time

import pytest
import redis
import requests
from prometheus_client.parser import text_string_to_metric_families

from app.metrics import render
from app.processes import free_port
from app.store import Store, keys
from tests.conftest import RedisServer
from tests.ops.conftest import METRICS_TOKEN


def families(text: str) -> dict:
    return {family.name: family for family in text_string_to_metric_families(text)}


def sample(family, name: str | None = None, **labels) -> float:
    """The value of the one sample of ``family`` with these labels (and this sample name)."""
    found = [s.value for s in family.samples
             if (name is None or s.name == name) and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (family.name, name, labels, family.samples)
    return found[0]


def scrape(url: str) -> dict:
    rv = requests.get(url + "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=10)
    assert rv.status_code == 200 and rv.headers["Content-Type"].startswith("text/plain")
    return families(rv.text)


def test_one_scrape_shows_the_failovers_of_every_worker(ops_stack, failed_over):
    metrics = scrape(ops_stack.url)

    failovers = metrics["warmpool_failovers"]
    assert failovers.type == "counter"
    assert sample(failovers, trigger="manual", result="success") == 1
    assert sample(failovers, trigger="health", result="success") == 1
    assert sum(s.value for s in metrics["warmpool_failovers_started"].samples) == 2

    duration = metrics["warmpool_failover_duration_seconds"]
    assert duration.type == "histogram"
    assert sample(duration, "warmpool_failover_duration_seconds_count") == 2
    assert sample(duration, "warmpool_failover_duration_seconds_bucket", le="+Inf") == 2
    assert sample(duration, "warmpool_failover_duration_seconds_sum") > 0
    phases = metrics["warmpool_failover_phase_seconds"]
    assert sample(phases, "warmpool_failover_phase_seconds_count", phase="start_standby") == 2
    assert sample(phases, "warmpool_failover_phase_seconds_count", phase="detect") == 1  # the health one

    provider = metrics["warmpool_provider_requests"]
    assert sample(provider, endpoint="create_instance", code="200") >= 4  # primary, standby, two new standbys
    assert sample(provider, endpoint="list_instances", code="200") > 0  # the sweeps

    pools = metrics["warmpool_pools"]
    assert sample(pools, state="active") == 1
    assert sum(s.value for s in pools.samples) == 1
    assert time.time() - 60 < metrics["warmpool_last_sweep_timestamp_seconds"].samples[0].value <= time.time()
    build = metrics["warmpool_build_info"]
    assert build.samples[0].value == 1 and build.samples[0].labels["version"]
    assert {"warmpool_unknown_sweeps", "warmpool_orphans", "warmpool_last_sweep_duration_seconds"} <= set(metrics)


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"Basic {METRICS_TOKEN}"])
def test_metrics_ask_for_the_token_when_it_is_set(ops_stack, authorization):
    headers = {"Authorization": authorization} if authorization else {}
    rv = requests.get(ops_stack.url + "/metrics", headers=headers, timeout=10)
    assert rv.status_code == 401 and rv.headers["WWW-Authenticate"] == "Bearer"
    assert set(rv.json()) >= {"code", "status", "message"} and METRICS_TOKEN not in rv.text
    assert requests.get(ops_stack.url + "/healthz", timeout=10).ok  # the probes stay open


@pytest.fixture
def private_redis():
    server = RedisServer(free_port())
    server.start()
    yield redis.Redis.from_url(server.url, decode_responses=True)
    server.stop(kill=True)


def test_each_outcome_counts_once_with_cumulative_buckets(private_redis):
    store = Store(private_redis)
    store.event("t:1", "failover_started", "", trigger="health")
    store.event("t:1", "failover_completed", "", trigger="health", recovery_time_seconds=31.5,
                phases={"detect": 4.0, "start_standby": 27.0})
    store.event("t:2", "failover_failed", "", trigger="manual")
    store.event("t:3", "failover_cancelled", "", trigger="health")
    store.event("t:3", "degraded", "no standby", operation="failover")  # not a failover's end by itself
    store.event("t:4", "standby_lost", "", standby_gpu_id=7, status="offline")
    store.event("t:5", "standby_lost", "", standby_gpu_id=8, status="gone")
    store.count_provider_response("show_instance", 200)
    store.count_provider_response("show_instance", 429)
    store.count_provider_response("show_instance", None)

    metrics = families(render(store).decode())

    failovers = metrics["warmpool_failovers"]
    assert {(s.labels["trigger"], s.labels["result"]): s.value for s in failovers.samples} == {
        ("health", "success"): 1, ("manual", "failure"): 1, ("health", "cancelled"): 1}
    duration = metrics["warmpool_failover_duration_seconds"]
    buckets = {s.labels["le"]: s.value for s in duration.samples if s.name.endswith("_bucket")}
    assert buckets["30.0"] == 0 and buckets["45.0"] == 1 and buckets["+Inf"] == 1
    assert buckets["600.0"] == buckets["900.0"] == 1  # buckets reach 900 s: an instance may load that long
    for trigger in ("health", "notification", "manual", "switchover", "expiry", "heal"):  # the real values
        assert trigger in failovers.documentation and trigger in metrics["warmpool_failovers_started"].documentation
    assert sample(duration, "warmpool_failover_duration_seconds_sum") == 31.5
    phases = metrics["warmpool_failover_phase_seconds"]
    assert sample(phases, "warmpool_failover_phase_seconds_bucket", phase="detect", le="5.0") == 1
    assert sample(phases, "warmpool_failover_phase_seconds_bucket", phase="detect", le="2.5") == 0
    provider = metrics["warmpool_provider_requests"]
    assert {s.labels["code"]: s.value for s in provider.samples} == {"200": 1, "429": 1, "none": 1}
    lost = metrics["warmpool_standbys_lost"]
    assert {s.labels["status"]: s.value for s in lost.samples if s.name.endswith("_total")} == {"offline": 1, "gone": 1}
    assert sample(metrics["warmpool_last_sweep_timestamp_seconds"]) == 0  # never swept


def test_a_scrape_reads_as_much_with_one_pool_as_with_a_thousand(private_redis):
    """No per-pool read: the bytes Redis sends for a scrape do not grow with the number of pools."""
    store = Store(private_redis)
    record = '{"state": "active", "tenant": "t", "padding": "%s"}' % ("x" * 500)

    def add_pools(first: int, count: int):
        with private_redis.pipeline() as pipe:
            for machine in range(first, first + count):
                pipe.set(keys.pool(f"t:{machine}"), record)
                pipe.sadd(keys.POOLS, f"t:{machine}")
                pipe.sadd(keys.tenant_pools("t"), machine)
            pipe.hincrby(keys.BY_STATE, "active", count)
            pipe.execute()

    def bytes_read_by_a_scrape() -> int:
        before = private_redis.info("stats")["total_net_output_bytes"]
        render(store)
        return private_redis.info("stats")["total_net_output_bytes"] - before

    add_pools(1, 1)
    bytes_read_by_a_scrape()  # the first scrape loads the scripts and connections
    with_one = bytes_read_by_a_scrape()
    add_pools(2, 999)
    with_a_thousand = bytes_read_by_a_scrape()
    assert abs(with_a_thousand - with_one) < 100, (with_one, with_a_thousand)  # a thousand records: 500 kB
