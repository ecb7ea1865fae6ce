"""More than one Vast account (rule 17): a tenant's provider calls go with its account's key, on its account's rate
budget, and the sweep asks each account apart. The provider is the simulator over real HTTP (each key an account
there), the clients are the service's own (app.runtime), the store is the fakes'."""

import json
import os

import pytest
import requests

from app import operations, runtime
from app.pools import label
from app.settings import DEFAULT_ACCOUNT, Settings, account_name
from app.store import keys
from tasks import sweep
from tasks.base import Operation, fenced
from tests.provider.conftest import server  # noqa: F401 - the simulator over real HTTP, one per module
from tests.unit.fakes import REAL_VAST

GLOBEX_KEY = "globex-vast-key"
GLOBEX = account_name(GLOBEX_KEY)
ACME = account_name("vast-key")  # the default account's key (tests/unit/fakes.unit_settings)


@pytest.fixture
def vast_url(server):
    return server


@pytest.fixture
def accounts(env, vast_url, monkeypatch):
    """acme on the default account, globex on its own; the sweep calls the provider with the service's clients."""
    requests.post(f"{vast_url}/_sim/reset", timeout=5).raise_for_status()
    env.configure(vast_api_url=vast_url, vast_accounts={"globex": GLOBEX_KEY}, failover_threshold=1,
                  vast_rate_limits={"manage_instance": 0.05, "list_instances": 0.01})
    runtime.account_client.cache_clear()
    monkeypatch.setattr(runtime, "vast", REAL_VAST)
    yield env
    runtime.account_client.cache_clear()


def pool_on_provider(env, tenant: str, machine_id: int, offers: list[dict], **fields) -> dict:
    """A pool whose primary and standby the tenant's own client made (``fields``: the record's others)."""
    client = REAL_VAST(tenant)
    made = {role: client.create_instance(offers[machine_id]["id"], image="x", disk=10, label=label(tenant, machine_id, role),
                                         target_state=state)
            for role, state in (("primary", "running"), ("standby", "stopped"))}
    return env.add_pool(machine_id, tenant, primary_gpu_id=made["primary"], standby_gpu_id=made["standby"], **fields)


def requests_by_account(vast_url) -> dict:
    return requests.get(f"{vast_url}/_sim/stats", timeout=5).json()["requests_by_account"]


def test_each_tenant_lives_on_its_account_and_a_correlated_failure_spends_only_its_budget(accounts, vast_url):
    env = accounts
    assert env.settings.accounts() == [DEFAULT_ACCOUNT, GLOBEX] and env.settings.account_of("acme") == DEFAULT_ACCOUNT
    offers = REAL_VAST("acme").search_offers({"num_gpus": {"eq": 1}, "rentable": {"eq": True}})
    acme = pool_on_provider(env, "acme", 1, offers)
    globex = [pool_on_provider(env, "globex", n, offers) for n in (2, 3, 4)]
    # each account sees only its own: acme's list, and a direct look at another account's instance
    assert {row["id"] for row in REAL_VAST("acme").list_instances().instances} == {
        acme["primary_gpu_id"], acme["standby_gpu_id"]}
    assert len(REAL_VAST("globex").list_instances().instances) == 6
    assert REAL_VAST("acme").show_instance(globex[0]["primary_gpu_id"]) is None
    # every globex primary fails at once: the sweep asks each account apart and triggers globex's pools only
    for pool in globex:
        requests.post(f"{vast_url}/_sim/instances/{pool['primary_gpu_id']}/fail", timeout=5).raise_for_status()
    before = requests_by_account(vast_url)
    assert sweep.sweep() == "3 failed of 4"
    assert sorted(t["pid"] for t in env.of("trigger")) == ["globex:2", "globex:3", "globex:4"]
    after = requests_by_account(vast_url)
    asked = {who: after[who].get("GET /api/v1/instances/", 0) - before[who].get("GET /api/v1/instances/", 0)
             for who in (ACME, GLOBEX)}
    assert asked[ACME] >= 1 and asked[GLOBEX] >= 1  # each account listed on its own key
    # the failovers' stops go with globex's key, on globex's budget: acme's budget and account see none of them
    for pool in globex:
        REAL_VAST("globex").stop_instance(pool["primary_gpu_id"])
    assert env.r.exists(keys.rate("manage_instance", GLOBEX)) and not env.r.exists(keys.rate("manage_instance"))
    final = requests_by_account(vast_url)
    assert final[GLOBEX]["PUT /api/v0/instances/{id}/"] == 3
    assert "PUT /api/v0/instances/{id}/" not in final[ACME]


def test_a_pool_step_calls_with_its_tenants_key(accounts):
    """The account a step works on is its tenant's (tasks/base.fenced), so ``vast()`` inside a step is that
    tenant's client, the one the step reaches as ``op.vast``; outside, the default account's."""
    env = accounts
    pool = env.add_pool(5, "globex")
    op = Operation(*operations.begin(f"globex:{pool['machine_id']}", "failover", env.store.acquire("globex:5", 10)))
    with fenced(op):
        assert runtime.account.get() == GLOBEX
        assert REAL_VAST() is runtime.account_client(GLOBEX) is op.vast
    assert REAL_VAST() is runtime.account_client(DEFAULT_ACCOUNT)
    assert op.vast is runtime.account_client(GLOBEX)
    assert repr(REAL_VAST("globex")) == f"VastClient(base_url={env.settings.vast_api_url!r}, api_key=<hidden>)"
    assert GLOBEX_KEY not in repr(env.settings)


def accounts_file(tmp_path, content: str, mode: int) -> str:
    path = tmp_path / "vast-accounts.json"
    path.write_text(content)
    path.chmod(mode)
    return str(path)


def test_vast_accounts_is_read_from_a_file_only_the_service_can_read(tmp_path, monkeypatch):
    monkeypatch.setenv("VAST_API_KEY", "the-default-key")
    monkeypatch.setenv("VAST_ACCOUNTS", accounts_file(tmp_path, json.dumps({"globex": GLOBEX_KEY}), 0o600))
    cfg = Settings.from_env()
    assert cfg.account_of("globex") == GLOBEX and cfg.account_of("acme") == DEFAULT_ACCOUNT
    assert cfg.account_key(GLOBEX) == GLOBEX_KEY and GLOBEX_KEY not in repr(cfg)
    for content, mode, said in ((json.dumps({"globex": GLOBEX_KEY}), 0o640, "chmod 600"),
                                (json.dumps({"globex": GLOBEX_KEY}), 0o604, "chmod 600"),
                                (json.dumps([GLOBEX_KEY]), 0o600, "JSON object of tenant to Vast API key"),
                                (json.dumps({"globex": ""}), 0o600, "tenant globex's key must be a non-empty string"),
                                (json.dumps({"globex": "change-me"}), 0o600, "placeholder")):
        monkeypatch.setenv("VAST_ACCOUNTS", accounts_file(tmp_path, content, mode))
        with pytest.raises(ValueError, match="VAST_ACCOUNTS") as error:
            Settings.from_env()
        assert said in str(error.value) and GLOBEX_KEY not in str(error.value)
    monkeypatch.setenv("VAST_ACCOUNTS", os.fspath(tmp_path / "nowhere.json"))
    with pytest.raises(ValueError, match="VAST_ACCOUNTS: cannot read"):
        Settings.from_env()


GLOBEX_SECRET = "globex-notification-secret"


def test_each_accounts_notification_secret_is_read_from_its_entry_and_a_bad_entry_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("VAST_API_KEY", "the-default-key")
    monkeypatch.setenv("VAST_WEBHOOK_SECRET", "the-default-secret")
    entries = {"globex": {"key": GLOBEX_KEY, "webhook_secret": GLOBEX_SECRET}, "initech": GLOBEX_KEY, "hooli": "hooli-key"}
    monkeypatch.setenv("VAST_ACCOUNTS", accounts_file(tmp_path, json.dumps(entries), 0o600))
    cfg = Settings.from_env()
    assert cfg.account_of("initech") == cfg.account_of("globex") == GLOBEX  # one account, one secret
    assert cfg.webhook_secret(GLOBEX) == GLOBEX_SECRET and cfg.webhook_secret(DEFAULT_ACCOUNT) == "the-default-secret"
    assert cfg.webhook_secret(account_name("hooli-key")) == "" and cfg.webhook_secret("0123456789ab") == ""
    assert GLOBEX_SECRET not in repr(cfg) and GLOBEX_KEY not in repr(cfg)
    for bad, said in (
            ({"globex": {"key": GLOBEX_KEY, "secret": GLOBEX_SECRET}}, "tenant globex's entry must be"),
            ({"globex": {"webhook_secret": GLOBEX_SECRET}}, "tenant globex's key must be a non-empty string"),
            ({"globex": {"key": GLOBEX_KEY, "webhook_secret": 7}}, "tenant globex's webhook_secret must be a string"),
            ({"globex": {"key": GLOBEX_KEY, "webhook_secret": "change-me"}}, "tenant globex's webhook_secret is a placeholder"),
            ({"globex": {"key": GLOBEX_KEY, "webhook_secret": GLOBEX_SECRET},
              "initech": {"key": GLOBEX_KEY, "webhook_secret": "initech-secret"}}, "tenants globex and initech share"),
            ({"acme": {"key": "the-default-key", "webhook_secret": GLOBEX_SECRET}}, "tenant acme is on VAST_API_KEY's"),
            ({"globex": {"key": GLOBEX_KEY, "webhook_secret": "the-default-secret"}}, "tenant globex's webhook_secret is "
                                                                                     "another Vast account's"),
            ({"globex": {"key": GLOBEX_KEY, "webhook_secret": GLOBEX_SECRET},
              "hooli": {"key": "hooli-key", "webhook_secret": GLOBEX_SECRET}}, "tenant hooli's webhook_secret is another")):
        monkeypatch.setenv("VAST_ACCOUNTS", accounts_file(tmp_path, json.dumps(bad), 0o600))
        with pytest.raises(ValueError, match="VAST_ACCOUNTS") as error:
            Settings.from_env()
        assert said in str(error.value)
        assert not {GLOBEX_KEY, GLOBEX_SECRET, "initech-secret", "the-default-secret"} & set(str(error.value).split())


def test_the_capacity_check_searches_each_accounts_hosts_on_its_own_budget(accounts, vast_url):
    """The standbys' hosts are searched once per account, with that account's key and on its search budget (rule
    17): a tenant on its own account never spends the default account's."""
    env = accounts
    env.configure(vast_api_url=vast_url, vast_accounts={"globex": GLOBEX_KEY}, vast_rate_limits={"search_offers": 0.01})
    runtime.account_client.cache_clear()
    offers = REAL_VAST("acme").search_offers({"num_gpus": {"eq": 1}, "rentable": {"eq": True}})
    for n, tenant in ((1, "acme"), (2, "globex"), (3, "globex")):
        pool_on_provider(env, tenant, n, offers, host_machine_id=offers[n]["machine_id"])
    env.r.delete(keys.rate("search_offers"), keys.rate("search_offers", GLOBEX))
    before = requests_by_account(vast_url)
    assert sweep.check_capacity() == 0  # every host has a free GPU
    after = requests_by_account(vast_url)
    searched = {who: after[who].get("POST /api/v0/bundles/", 0) - before[who].get("POST /api/v0/bundles/", 0)
                for who in (ACME, GLOBEX)}
    assert searched == {ACME: 1, GLOBEX: 1}  # one search each, with the account's own key
    assert env.r.exists(keys.rate("search_offers")) and env.r.exists(keys.rate("search_offers", GLOBEX))
