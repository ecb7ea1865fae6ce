"""REDIS_URL in Celery's Sentinel form: parsed and validated (app/settings.py), and the clients built from it
(app/store, celeryconfig.py) go through the sentinels. No server is needed: nothing here connects."""

import importlib

import pytest
from redis.sentinel import SentinelConnectionPool

from app import runtime
from app.settings import SentinelAddress, Settings, sentinel_address
from app.store import Store

SENTINELS = "sentinel://:s3cret@h1:26379/2;sentinel://:s3cret@h2:26380/2;sentinel://:s3cret@h3/2"


@pytest.fixture
def sentinel_env(monkeypatch):
    for name in ("REDIS_URL", "CELERY_BROKER_URL", "REDIS_SENTINEL_MASTER", "REDIS_SENTINEL_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_a_sentinel_url_names_every_sentinel_the_db_and_the_master_password():
    assert sentinel_address(SENTINELS) == SentinelAddress((("h1", 26379), ("h2", 26380), ("h3", 26379)), 2, "s3cret")
    assert sentinel_address("sentinel://a:1;sentinel://b:2;") == SentinelAddress((("a", 1), ("b", 2)), 0, None)
    assert sentinel_address("redis://127.0.0.1:6379/0") is None


@pytest.mark.parametrize("variable", ["REDIS_URL", "CELERY_BROKER_URL"])
@pytest.mark.parametrize("url", ["sentinel://a:1;redis://b:2", "sentinel://a:1/0;sentinel://b:2/1",
                                 "sentinel://a:port", "sentinel://:x@a:1;sentinel://:y@b:2", "sentinel://a:1/db"])
def test_a_bad_sentinel_url_is_refused_naming_its_variable_and_not_its_password(sentinel_env, variable, url):
    sentinel_env.setenv(variable, url)
    sentinel_env.setenv("REDIS_SENTINEL_MASTER", "mymaster")
    with pytest.raises(ValueError, match=f"^{variable}: ") as refused:
        Settings.from_env()
    assert ":x@" not in str(refused.value) and ":y@" not in str(refused.value)


@pytest.mark.parametrize("variable", ["REDIS_URL", "CELERY_BROKER_URL"])
def test_sentinels_without_a_master_name_are_refused(sentinel_env, variable):
    sentinel_env.setenv(variable, SENTINELS)
    with pytest.raises(ValueError, match="REDIS_SENTINEL_MASTER"):
        Settings.from_env()


def test_the_sentinel_settings_are_read_and_the_password_kept_out_of_the_repr(sentinel_env):
    sentinel_env.setenv("REDIS_URL", SENTINELS)
    sentinel_env.setenv("REDIS_SENTINEL_MASTER", " mymaster ")
    sentinel_env.setenv("REDIS_SENTINEL_PASSWORD", "sentinel-secret")
    settings = Settings.from_env()
    assert (settings.redis_sentinel_master, settings.redis_sentinel_password) == ("mymaster", "sentinel-secret")
    assert "sentinel-secret" not in repr(settings)


def test_the_store_behind_sentinels_asks_them_for_the_master_and_waits_for_a_replica():
    store = Store.from_url(SENTINELS, "mymaster", "sentinel-secret")
    pool = store.r.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.is_master and pool.service_name == "mymaster"
    assert (pool.connection_kwargs["db"], pool.connection_kwargs["password"]) == (2, "s3cret")
    manager = pool.sentinel_manager
    assert [(s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"],
             s.connection_pool.connection_kwargs["password"]) for s in manager.sentinels] == \
        [("h1", 26379, "sentinel-secret"), ("h2", 26380, "sentinel-secret"), ("h3", 26379, "sentinel-secret")]
    assert store.replicas_to_wait == 1
    assert Store.from_url("redis://127.0.0.1:6379/0").replicas_to_wait == 0


def test_the_broker_behind_sentinels_gets_the_master_name_and_the_sentinel_password(sentinel_env):
    import celeryconfig

    sentinel_env.setenv("REDIS_URL", SENTINELS)
    sentinel_env.setenv("REDIS_SENTINEL_MASTER", "mymaster")
    sentinel_env.setenv("REDIS_SENTINEL_PASSWORD", "sentinel-secret")
    runtime.reset()  # the settings are built once per process: read the environment again
    try:
        config = importlib.reload(celeryconfig)
        assert config.broker_url == SENTINELS
        assert config.broker_transport_options["master_name"] == "mymaster"
        assert config.broker_transport_options["sentinel_kwargs"] == {"password": "sentinel-secret"}
        assert config.broker_transport_options["visibility_timeout"] > 0
    finally:
        sentinel_env.undo()
        runtime.reset()
        importlib.reload(celeryconfig)
    assert "master_name" not in celeryconfig.broker_transport_options
