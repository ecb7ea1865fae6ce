"""Settings from the environment; hosts grouped from Vast offers; the offers query."""

import inspect
import re

import pytest

from app import runtime
from app.hosts import group_hosts, offers_query, user_gpu_name, vast_gpu_name
from app.settings import Settings

# every variable Settings.from_env reads (tests/conftest.py sets many of them for the stack)
SETTINGS_VARS = sorted(set(re.findall(r'"([A-Z][A-Z0-9_]+)"', inspect.getsource(Settings.from_env))))


@pytest.fixture
def clean_env(monkeypatch):
    for name in SETTINGS_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


# -- settings -------------------------------------------------------------------------------------


def test_defaults_without_environment(clean_env):
    s = Settings.from_env()
    assert s == Settings()
    assert s.redis_url == "redis://127.0.0.1:6379/0" and s.vast_api_url == "https://console.vast.ai"
    assert s.api_keys == {} and s.failover_threshold == 2 and s.health_check_interval == 2.0
    assert s.reconcile_destroy_orphans is False


def test_every_variable_is_read(clean_env):
    env = {"REDIS_URL": "redis://r:1/2", "VAST_API_URL": "http://sim:8090", "VAST_API_KEY": "vk",
           "WARMPOOL_API_KEYS": "acme:k1, globex:k2", "HEALTH_CHECK_INTERVAL": "0.25", "FAILOVER_THRESHOLD": "5",
           "PROVIDER_POLL_INTERVAL": "0.5", "STANDBY_START_TIMEOUT": "7", "INSTANCE_READY_TIMEOUT": "8",
           "LOCK_TTL": "9", "FAILOVERS_PER_MINUTE": "4", "HEAL_INTERVAL": "11", "RECONCILE_INTERVAL": "12",
           "RECONCILE_DESTROY_ORPHANS": "yes", "CAPACITY_CHECK_INTERVAL": "13", "HOSTS_CACHE_SECONDS": "0",
           "WARMPOOL_DEFAULT_IMAGE": "img:1", "MAX_CONTENT_LENGTH": "2048", "WAIT_MAX_HOLDERS": "6",
           "WAIT_MAX_HOLDERS_PER_TENANT": "2", "NOTIFICATION_REPLAY_WINDOW": "60", "NOTIFICATION_CHECK_INTERVAL": "5",
           "WARMPOOL_MAX_POOLS_PER_TENANT": "7"}
    for name, value in env.items():
        clean_env.setenv(name, value)
    s = Settings.from_env()
    assert (s.redis_url, s.vast_api_url, s.vast_api_key) == ("redis://r:1/2", "http://sim:8090", "vk")
    assert s.api_keys == {"k1": "acme", "k2": "globex"}
    assert (s.health_check_interval, s.failover_threshold, s.poll_interval) == (0.25, 5, 0.5)
    assert (s.standby_start_timeout, s.instance_ready_timeout, s.lock_ttl) == (7.0, 8.0, 9.0)
    assert s.failovers_per_minute == 4
    assert s.reconcile_destroy_orphans is True
    assert (s.capacity_check_interval, s.hosts_cache_seconds, s.default_image) == (13.0, 0.0, "img:1")
    assert (s.max_content_length, s.wait_max_holders, s.wait_max_holders_per_tenant) == (2048, 6, 2)
    assert (s.notification_replay_window, s.notification_check_interval, s.max_pools_per_tenant) == (60.0, 5.0, 7)


@pytest.mark.parametrize("name", ["MAX_CONTENT_LENGTH", "WAIT_MAX_HOLDERS", "WARMPOOL_MAX_POOLS_PER_TENANT"])
def test_a_limit_below_one_is_refused_by_name(clean_env, name):
    clean_env.setenv(name, "0")
    with pytest.raises(ValueError, match=name):
        Settings.from_env()


def test_secrets_are_not_in_the_repr(clean_env):
    clean_env.setenv("VAST_API_KEY", "vast-secret-123")
    clean_env.setenv("WARMPOOL_API_KEYS", "acme:tenant-secret-456")
    text = repr(Settings.from_env())
    assert "vast-secret-123" not in text and "tenant-secret-456" not in text


@pytest.mark.parametrize("raw, keys", [
    ("", {}),
    ("acme:k1", {"k1": "acme"}),
    (" acme:k1 , globex:k2 ,", {"k1": "acme", "k2": "globex"}),
    ("acme:key:with:colons", {"key:with:colons": "acme"}),
])
def test_api_keys_parse(clean_env, raw, keys):
    clean_env.setenv("WARMPOOL_API_KEYS", raw)
    assert Settings.from_env().api_keys == keys


@pytest.mark.parametrize("raw", ["tenant1:change-me", "acme:k1,globex:CHANGE-ME"])
def test_the_placeholder_key_is_refused(clean_env, raw):
    clean_env.setenv("WARMPOOL_API_KEYS", raw)
    with pytest.raises(ValueError, match="WARMPOOL_API_KEYS.*placeholder"):
        Settings.from_env()


@pytest.mark.parametrize("raw", ["acme", "acme:", ":key", "acme:k1,globex", "acme:k1,,:k2"])
def test_bad_api_keys_raise(clean_env, raw):
    clean_env.setenv("WARMPOOL_API_KEYS", raw)
    with pytest.raises(ValueError, match="tenant:key"):
        Settings.from_env()


@pytest.mark.parametrize("raw, value", [("1", True), ("TRUE", True), ("on", True), ("Yes", True),
                                        ("0", False), ("false", False), ("OFF", False), ("no", False), ("", False)])
def test_booleans_parse(clean_env, raw, value):
    clean_env.setenv("RECONCILE_DESTROY_ORPHANS", raw)
    assert Settings.from_env().reconcile_destroy_orphans is value


@pytest.mark.parametrize("raw", ["maybe", "2", "tru", "y"])
def test_bad_booleans_raise(clean_env, raw):
    clean_env.setenv("RECONCILE_DESTROY_ORPHANS", raw)
    with pytest.raises(ValueError, match="RECONCILE_DESTROY_ORPHANS"):
        Settings.from_env()


NUMBERS = re.findall(r'_(?:float|int)\("([A-Z][A-Z0-9_]+)"', inspect.getsource(Settings.from_env))


@pytest.mark.parametrize("name, raw, message", [
    ("HEALTH_CHECK_INTERVAL", "abc", "HEALTH_CHECK_INTERVAL must be a number > 0, got 'abc'"),
    ("HEALTH_CHECK_INTERVAL", "-1", "HEALTH_CHECK_INTERVAL must be a number > 0, got '-1'"),
    ("LOCK_TTL", "0", "LOCK_TTL must be a number > 0, got '0'"),
    ("LOCK_TTL", "", "LOCK_TTL must be a number > 0, got ''"),
    ("LOCK_TTL", "nan", "LOCK_TTL must be a number > 0, got 'nan'"),
    ("STANDBY_START_TIMEOUT", "inf", "STANDBY_START_TIMEOUT must be a number > 0, got 'inf'"),
    ("FAILOVER_THRESHOLD", "three", "FAILOVER_THRESHOLD must be a whole number >= 1, got 'three'"),
    ("FAILOVER_THRESHOLD", "2.5", "FAILOVER_THRESHOLD must be a whole number >= 1, got '2.5'"),
    ("FAILOVERS_PER_MINUTE", "0", "FAILOVERS_PER_MINUTE must be a whole number >= 1, got '0'"),
    ("CREATE_GRACE", "-0.5", "CREATE_GRACE must be a number >= 0, got '-0.5'"),
    ("RECONCILE_MAX_SHARE", "1.5", "RECONCILE_MAX_SHARE must be a number >= 0 and <= 1, got '1.5'"),
])
def test_a_bad_number_is_refused_naming_the_variable_and_its_range(clean_env, name, raw, message):
    clean_env.setenv(name, raw)
    with pytest.raises(ValueError) as refused:
        Settings.from_env()
    assert str(refused.value) == message


@pytest.mark.parametrize("name", NUMBERS)
def test_every_number_refuses_a_negative_and_a_word(clean_env, name):
    assert len(NUMBERS) > 15  # the pattern finds them
    for raw in ("-1", "soon"):
        clean_env.setenv(name, raw)
        with pytest.raises(ValueError, match=f"^{name} must be .*, got '{raw}'$"):
            Settings.from_env()


def test_zero_and_the_upper_bound_are_taken_where_they_mean_something(clean_env):
    for name in ("FAILOVER_MIN_SECONDS", "CREATE_GRACE", "HOSTS_CACHE_SECONDS", "RECONCILE_GRACE"):
        clean_env.setenv(name, "0")
    clean_env.setenv("RECONCILE_MAX_SHARE", "1")
    clean_env.setenv("FAILOVER_THRESHOLD", " 1 ")
    s = Settings.from_env()
    assert (s.failover_min_seconds, s.create_grace, s.hosts_cache_seconds, s.reconcile_grace) == (0, 0, 0, 0)
    assert (s.reconcile_max_share, s.failover_threshold) == (1.0, 1)


@pytest.mark.parametrize("raw", ["{not json", "[4.5]", '{"create_instance": -1}', '{"create_instance": "4.5"}'])
def test_bad_rate_limits_are_refused_naming_the_variable(clean_env, raw):
    clean_env.setenv("VAST_RATE_LIMITS", raw)
    with pytest.raises(ValueError, match="^VAST_RATE_LIMITS must be a JSON object of seconds >= 0"):
        Settings.from_env()


def test_a_process_builds_its_settings_once_and_reset_reads_the_environment_again(clean_env):
    runtime.reset()
    try:
        clean_env.setenv("LOCK_TTL", "7")
        built = runtime.settings()
        clean_env.setenv("LOCK_TTL", "8")
        assert runtime.settings() is built and built.lock_ttl == 7
        runtime.reset()
        assert runtime.settings().lock_ttl == 8
    finally:
        clean_env.undo()
        runtime.reset()  # the next test's settings come from the session's environment


# -- hosts -----------------------------------------------------------------------------------------------


def offer(id, machine_id, num_gpus, dph, gpu_frac=None, reliability=0.99, verification="verified",
          gpu_name="RTX 4090", geolocation="US"):
    return {"id": id, "machine_id": machine_id, "num_gpus": num_gpus, "dph_total": dph,
            "gpu_frac": gpu_frac if gpu_frac is not None else num_gpus / 8, "reliability": reliability,
            "verification": verification, "gpu_name": gpu_name, "geolocation": geolocation}


def test_gpu_names_convert_both_ways():
    assert vast_gpu_name("RTX_4090") == "RTX 4090" and user_gpu_name("RTX 4090") == "RTX_4090"
    assert user_gpu_name(vast_gpu_name("H100_SXM")) == "H100_SXM"


def test_group_hosts_one_row_per_machine_with_the_seed_fields():
    offers = [offer(1, 88888, 1, 0.40), offer(2, 88888, 1, 0.50), offer(3, 88888, 3, 1.35, gpu_frac=0.75),
              offer(4, 77777, 1, 0.30, geolocation="CA")]
    hosts = group_hosts(offers, min_gpus=2)
    assert [h["machine_id"] for h in hosts] == [88888]  # 77777 has one free GPU
    host = hosts[0]
    assert host == {
        "machine_id": 88888, "total_gpus": 4, "available_gpus": 3, "gpu_name": "RTX_4090",
        "avg_price_per_hour": 0.45, "reliability": 0.99, "verified": True, "geolocation": "US",
        "can_create_warm_pool": True, "offers": host["offers"]}
    assert [o["offer_id"] for o in host["offers"]] == [1, 2]  # the single-GPU offers
    assert host["offers"][0] == {"offer_id": 1, "machine_id": 88888, "gpu_name": "RTX_4090", "num_gpus": 1,
                                 "price_per_hour": 0.40, "reliability": 0.99, "verified": True, "geolocation": "US"}


def test_group_hosts_min_gpus_and_can_create():
    offers = [offer(1, 1, 1, 0.3), offer(2, 2, 2, 0.8), offer(3, 2, 1, 0.4), offer(4, 3, 4, 2.0)]
    assert {h["machine_id"] for h in group_hosts(offers, min_gpus=2)} == {2, 3}
    assert [h["machine_id"] for h in group_hosts(offers, min_gpus=4)] == [3]
    single = {h["machine_id"]: h for h in group_hosts(offers, min_gpus=1)}
    assert set(single) == {1, 2, 3}
    assert not single[1]["can_create_warm_pool"] and single[2]["can_create_warm_pool"]
    assert group_hosts([], min_gpus=1) == []


def test_group_hosts_without_single_offers_prices_the_largest_per_gpu():
    host, = group_hosts([offer(9, 5, 4, 2.0)], min_gpus=2)
    assert host["avg_price_per_hour"] == 0.5 and [o["offer_id"] for o in host["offers"]] == [9]
    assert host["total_gpus"] == 8  # 4 free at gpu_frac 0.5


def test_group_hosts_best_first_cheapest_then_most_reliable():
    offers = [offer(1, 10, 2, 1.0, reliability=0.90), offer(2, 11, 2, 0.6, reliability=0.80),
              offer(3, 12, 2, 1.0, reliability=0.99), offer(4, 13, 2, 0.6, reliability=0.95)]
    assert [h["machine_id"] for h in group_hosts(offers)] == [13, 11, 12, 10]


def test_group_hosts_unverified_and_missing_frac():
    host, = group_hosts([{**offer(1, 3, 2, 1.0, verification="unverified"), "gpu_frac": None}])
    assert host["verified"] is False and host["offers"][0]["verified"] is False
    assert host["total_gpus"] == 2


def test_offers_query_filters():
    base = offers_query()
    assert base["rentable"] == {"eq": True} and base["rented"] == {"eq": False}
    assert base["verified"] == {"eq": True} and base["order"] == [["dph_total", "asc"]]
    assert not {"gpu_name", "dph_total", "machine_id", "num_gpus"} & set(base)
    q = offers_query("RTX_4090", 0.5, verified=False, machine_id=88888, num_gpus=1)
    assert "verified" not in q
    assert q["gpu_name"] == {"eq": "RTX 4090"} and q["dph_total"] == {"lte": 0.5}
    assert q["machine_id"] == {"eq": 88888} and q["num_gpus"] == {"eq": 1}
    assert offers_query(max_price=0)["dph_total"] == {"lte": 0}  # a price of 0 is still a filter
