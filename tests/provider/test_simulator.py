"""The Vast.ai simulator over real HTTP: inventory, query language, state machine, volumes,
control routes, faults and the error bodies of the real API."""

import json
import time
from types import SimpleNamespace

import pytest

from sim import accounts, clock, create_app
from sim.instances import port_map
from tests.conftest import wait_until
from tests.provider.simkit import KEY, TIME_SCALE, big_4090_host, holds_for, total_gpus

# ---- inventory and determinism ----------------------------------------------------------


def test_same_seed_same_world_other_seed_other_world():
    def world(seed):
        client = create_app(time_scale=TIME_SCALE, seed=seed).test_client()
        offers = client.post("/api/v0/bundles/", json={}, headers=KEY).get_json()["offers"]
        created = client.put(f"/api/v0/asks/{offers[0]['id']}/", json={"image": "x"}, headers=KEY).get_json()
        return [(o["id"], o["gpu_name"], o["dph_total"], o["geolocation"]) for o in offers], created

    assert world(0) == world(0)
    assert world(0)[0] != world(1)[0]


def test_inventory_guarantees(sim):
    offers = sim.offers()
    machines = {o["machine_id"]: o for o in offers}
    assert len(machines) >= 60
    assert {o["gpu_name"] for o in offers} == {"RTX 4090", "RTX 3090", "A100 PCIE", "H100 SXM"}
    assert all(1 <= total_gpus(o) <= 8 for o in offers)
    big_4090s = {o["machine_id"] for o in offers if o["gpu_name"] == "RTX 4090" and total_gpus(o) >= 3}
    assert len(big_4090s) >= 20
    for o in offers:
        assert o["id"] == o["ask_contract_id"] == o["machine_id"] * 100 + o["num_gpus"]
        assert o["num_gpus"] in (1, 2, 4, 8) and o["num_gpus"] <= total_gpus(o)
        assert o["geolocation"].split(", ")[-1].isupper()
        assert o["avail_vol_ask_id"] == o["machine_id"] * 100 + 50
        for key in ("dph_total", "dph_base", "reliability", "reliability2", "verification", "rentable",
                    "cpu_ram", "cpu_cores", "disk_space", "score", "dlperf", "inet_up", "inet_down",
                    "cuda_max_good", "driver_version", "start_date", "end_date", "duration",
                    "avail_vol_size", "avail_vol_dph", "storage_cost", "public_ipaddr", "host_id",
                    "bundle_id", "gpu_ram", "vericode", "hosting_type", "rented"):
            assert key in o


def test_gpu_names_and_current_user(sim):
    names = sim.ok("GET", "/api/v0/gpu_names/unique/", auth=False)["gpu_names"]
    assert "RTX 4090" in names
    assert sim.ok("GET", "/api/v0/users/current")["host_agreement_accepted"] is False


# ---- the query language ------------------------------------------------------------------


def test_query_coerces_string_numbers_and_combines_ops(sim):
    offers = sim.offers({"num_gpus": {"gte": "2", "lt": "8"}, "dph_total": {"lte": "5.0"}})
    assert offers and all(2 <= o["num_gpus"] < 8 and o["dph_total"] <= 5.0 for o in offers)
    assert {o["num_gpus"] for o in offers} == {2, 4}


@pytest.mark.parametrize("op,value,check", [
    ("eq", "4", lambda n: n == 4),
    ("neq", "1", lambda n: n != 1),
    ("gt", "2", lambda n: n > 2),
    ("gte", 2, lambda n: n >= 2),
    ("lt", "2", lambda n: n < 2),
    ("lte", "2.0", lambda n: n <= 2),
    ("in", ["1", "8"], lambda n: n in (1, 8)),
    ("notin", [1, 2], lambda n: n not in (1, 2)),
])
def test_query_each_operator(sim, op, value, check):
    offers = sim.offers({"num_gpus": {op: value}})
    assert offers and all(check(o["num_gpus"]) for o in offers)
    assert len(offers) < len(sim.offers())


def test_query_strings_and_geolocation_country(sim):
    offers = sim.offers({"gpu_name": {"in": ["RTX 4090", "H100 SXM"]}, "geolocation": {"in": ["US", "CA"]}})
    assert offers
    assert all(o["gpu_name"] in ("RTX 4090", "H100 SXM") for o in offers)
    assert all(o["geolocation"].endswith((", US", ", CA")) for o in offers)
    assert not any(o["gpu_name"] == "RTX 3090" for o in sim.offers({"gpu_name": {"notin": ["RTX 3090"]}}))


def test_query_order_and_limit(sim):
    cheap = sim.offers({"order": [["dph_total", "asc"]], "limit": "7"})
    assert len(cheap) == 7
    assert [o["dph_total"] for o in cheap] == sorted(o["dph_total"] for o in cheap)
    assert cheap[0]["dph_total"] == min(o["dph_total"] for o in sim.offers())
    by_gpus = sim.offers({"order": [["num_gpus", "desc"], ["dph_total", "asc"]]})
    keys = [(-o["num_gpus"], o["dph_total"]) for o in by_gpus]
    assert keys == sorted(keys)


def test_query_virtual_fields(sim):
    everything = sim.offers()
    verified = sim.offers({"verified": {"eq": True}})
    assert verified and all(o["verification"] == "verified" for o in verified)
    assert all(o["verification"] != "verified" for o in sim.offers({"verified": {"eq": False}}))
    assert "verified" not in everything[0] and "datacenter" not in everything[0]
    assert len(sim.offers({"external": {"eq": False}, "rentable": {"eq": True}})) == len(everything)
    assert sim.offers({"external": {"eq": True}}) == []
    assert sim.offers({"rented": {"eq": True}}) == []
    datacenter = sim.offers({"datacenter": {"eq": True}})
    assert datacenter and all(o["hosting_type"] == 1 for o in datacenter)
    roomy = sim.offers({"allocated_storage": 1500})
    assert roomy and all(o["disk_space"] >= 1500 for o in roomy) and len(roomy) < len(everything)
    assert len(sim.offers({"duration": {"gte": str(7 * 86400)}})) == len(everything)
    assert sim.offers({"duration": {"gte": 365 * 86400}}) == []
    # unknown fields and the "type" of rental are ignored
    assert len(sim.offers({"no_such_field": {"eq": 3}, "type": "on-demand"})) == len(everything)


def test_query_variants_put_search_asks_and_get_q(sim):
    query = {"gpu_name": {"eq": "RTX 4090"}, "order": [["dph_total", "asc"]], "limit": 5}
    posted = sim.offers(query)
    put = sim.ok("PUT", "/api/v0/search/asks/", json={"select_cols": ["*"], "q": query})["offers"]
    got = sim.ok("GET", "/api/v0/bundles/", params={"q": json.dumps(query)})["offers"]
    ids = [o["id"] for o in posted]
    assert ids == [o["id"] for o in put] == [o["id"] for o in got]


def test_query_bad_values_are_400(sim):
    r = sim.call("POST", "/api/v0/bundles/", json={"num_gpus": {"gte": "lots"}})
    assert r.status_code == 400 and r.json()["error"] == "invalid_args"
    r = sim.call("POST", "/api/v0/bundles/", data="{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json() == {"error": "invalid_request", "msg": "Invalid json body"}


# ---- the instance state machine ----------------------------------------------------------


def test_create_goes_created_loading_running(sim):
    machine_id, offer_id = big_4090_host(sim)
    inst_id = sim.create(offer_id, label="primary", env={"FOO": "bar"}, onstart="echo hi")
    row = sim.instance(inst_id)
    assert row["actual_status"] in ("created", "loading")
    assert row["intended_status"] == "running" and row["cur_state"] == "running"
    assert row["machine_id"] == machine_id and row["label"] == "primary"
    assert row["extra_env"] == [["FOO", "bar"]] and isinstance(row["start_date"], float)
    assert row["ssh_port"] is None and row["ssh_host"].endswith(".vast.ai")
    wait_until(lambda: sim.instance(inst_id)["actual_status"] == "loading", timeout=5, message="loading")
    row = sim.wait_status(inst_id, "running")
    assert row["ssh_port"] and "success" in row["status_msg"]
    assert row["gpu_name"] == "RTX 4090" and row["num_gpus"] == 1 and row["dph_total"] > 0


def volume_on(sim, machine_id: int, size: int, name: str) -> dict:
    """A volume of ``size`` GB on the machine, as the volume list shows it."""
    created = sim.ok("PUT", "/api/v0/volumes/", json={"size": size, "id": machine_id * 100 + 50, "name": name})
    vid = int(created["volume_name"][2:])
    return next(v for v in sim.ok("GET", "/api/v0/volumes")["volumes"] if v["id"] == vid)


def test_rows_carry_their_prices_as_vast_lists_them_and_a_pools_cost_parts_add_up_to_its_total(sim):
    """Vast's prices (docs/simulator.md, Prices): ``dph_base`` the GPUs' $/h, ``storage_cost`` the host's
    $/GB-month, ``dph_total = dph_base + storage_cost x disk_space / 720``; a volume's ``storage_total_cost`` is
    ``storage_cost x size / 720``. The pool's status prices its parts from exactly these."""
    from app.api.schemas import StatusSchema
    from app.pools import new_pool, primary_fields

    machine_a, offer_a = big_4090_host(sim)
    machine_b, _ = big_4090_host(sim, skip={machine_a})
    offer = next(o for o in sim.offers({"machine_id": {"eq": machine_a}}) if o["id"] == offer_a)
    volume, replica = volume_on(sim, machine_a, 100, "data"), volume_on(sim, machine_b, 100, "replica")
    link = {"create_new": False, "volume_id": volume["id"], "mount_path": "/data"}
    primary = sim.wait_status(sim.create(offer_a, disk=50.0, volume_info=link), "running")
    standby = sim.instance(sim.create(offer_a, disk=50.0, volume_info=link, target_state="stopped"))
    per_gb_month = offer["storage_cost"]
    assert 0 < per_gb_month < 1 and offer["dph_base"] > 0  # $/GB-month, not $/h; the GPU's $/h
    for row in (primary, standby):
        assert row["dph_base"] == offer["dph_base"] and row["storage_cost"] == per_gb_month
        assert row["disk_space"] == 50.0
        assert row["dph_total"] == round(row["dph_base"] + per_gb_month * row["disk_space"] / 720, 4)
    for row, size in ((volume, 100), (replica, 100)):
        assert row["disk_space"] == size and 0 < row["storage_cost"] < 1
        assert row["storage_total_cost"] == round(row["storage_cost"] * size / 720, 6)
    assert volume["storage_cost"] == per_gb_month

    # the pool as the service keeps it: its primary's row, and the replica volume's price
    pool = new_pool("acme", 1, state="active", primary_gpu_id=primary["id"], standby_gpu_id=standby["id"],
                    volume_id=volume["id"], replica_volume_id=replica["id"], disk_size=50, volume_size=100,
                    replica_storage_cost=replica["storage_cost"], **primary_fields(primary))
    cost = StatusSchema().dump(pool)["cost_per_hour"]
    assert cost["primary"] == pytest.approx(primary["dph_total"], abs=1e-4)
    assert cost["standby_storage"] == pytest.approx(per_gb_month * 50 / 720, abs=1e-4)
    assert cost["volume"] == pytest.approx(volume["storage_total_cost"], abs=1e-4)
    assert cost["replica"] == pytest.approx(replica["storage_total_cost"], abs=1e-4)
    parts = [cost[part] for part in ("primary", "standby_storage", "volume", "replica")]
    assert cost["complete"] and cost["total"] == round(sum(parts), 4) > 0


def test_each_instance_has_its_own_port_map_of_the_ports_it_asked_for():
    env = {"-p 8080:8080": "1", "-p 9000/udp": "1", "FOO": "bar"}
    first, second = port_map(SimpleNamespace(id=10_000_001, env=env)), port_map(SimpleNamespace(id=10_000_002, env={}))
    assert list(first) == ["22/tcp", "8080/tcp", "9000/udp"] and list(second) == ["22/tcp"]
    host_ports = [entry[0]["HostPort"] for entry in (*first.values(), *second.values())]
    assert len(set(host_ports)) == 4 and all(p.isdigit() and 1024 < int(p) < 65536 for p in host_ports)


def test_create_stopped_holds_no_gpu(sim):
    machine_id, _ = big_4090_host(sim)
    before = {o["num_gpus"] for o in sim.offers({"machine_id": {"eq": machine_id}})}
    standby = sim.create(machine_id * 100 + 2, target_state="stopped")
    row = sim.wait_status(standby, "stopped")
    assert row["intended_status"] == "stopped" and row["cur_state"] == "stopped"
    assert {o["num_gpus"] for o in sim.offers({"machine_id": {"eq": machine_id}})} == before


def test_stop_releases_gpu_and_start_comes_back(sim):
    machine_id, _ = big_4090_host(sim)
    free_before = max(o["num_gpus"] for o in sim.offers({"machine_id": {"eq": machine_id}}))
    inst_id = sim.create(machine_id * 100 + 2)
    sim.wait_status(inst_id, "running")
    assert sim.set_state(inst_id, "stopped") == {"success": True}
    assert sim.instance(inst_id)["cur_state"] == "stopped"  # GPUs released at once
    assert max(o["num_gpus"] for o in sim.offers({"machine_id": {"eq": machine_id}})) == free_before
    row = sim.wait_status(inst_id, "stopped")
    assert row["intended_status"] == "stopped" and row["ssh_port"] is None
    sim.set_state(inst_id, "running")
    assert sim.instance(inst_id)["actual_status"] == "loading"
    sim.wait_status(inst_id, "running")
    assert sim.stats()["instance_actions"][str(inst_id)] == {"stop": 1, "start": 1}


def test_start_blocked_while_host_rented_out_until_restore(sim):
    machine_id, offer_id = big_4090_host(sim)
    primary = sim.create(offer_id, label="primary")
    standby = sim.create(offer_id, label="standby", target_state="stopped")
    sim.wait_status(standby, "stopped")
    sim.ok("POST", f"/_sim/hosts/{machine_id}/rent_out")
    assert sim.offers({"machine_id": {"eq": machine_id}}) == []
    sim.set_state(standby, "running")

    def scheduling():
        row = sim.instance(standby)
        return (row["actual_status"] == "stopped" and row["intended_status"] == "running"
                and "scheduling" in row["status_msg"])

    holds_for(scheduling, 3 * clock.START_SECONDS * TIME_SCALE)
    # the failed primary giving its GPU back does not help: the other renters take it
    sim.set_state(primary, "stopped")
    holds_for(scheduling, 3 * clock.START_SECONDS * TIME_SCALE)
    sim.ok("POST", f"/_sim/hosts/{machine_id}/restore")
    sim.wait_status(standby, "running")


def test_start_waits_for_gpus_held_by_another_instance(sim):
    machine_id, _ = big_4090_host(sim)
    total = max(total_gpus(o) for o in sim.offers({"machine_id": {"eq": machine_id}}))
    standby = sim.create(machine_id * 100 + 1, target_state="stopped")
    hogs = []
    while offers := sim.offers({"machine_id": {"eq": machine_id}, "order": [["num_gpus", "desc"]]}):
        hogs.append(sim.create(offers[0]["id"]))
    assert sum(sim.instance(h)["num_gpus"] for h in hogs) == total
    sim.set_state(standby, "running")
    assert "scheduling" in sim.instance(standby)["status_msg"]
    sim.ok("DELETE", f"/api/v0/instances/{hogs[-1]}/")
    sim.wait_status(standby, "running")


def test_destroy_removes_the_row(sim):
    machine_id, _ = big_4090_host(sim)

    def offer_ids():
        return [o["id"] for o in sim.offers({"machine_id": {"eq": machine_id}})]

    offers_before = offer_ids()
    inst_id = sim.create(machine_id * 100 + 2)
    assert offer_ids() != offers_before
    assert sim.ok("DELETE", f"/api/v0/instances/{inst_id}/", json={}) == {"success": True}
    assert offer_ids() == offers_before  # the GPUs are free again
    assert sim.ok("GET", f"/api/v0/instances/{inst_id}/") == {"instances": None}
    assert sim.ledger()["instances"] == []
    r = sim.call("DELETE", f"/api/v0/instances/{inst_id}/")
    assert r.status_code == 404
    assert r.json() == {"success": False, "error": "no_such_instance", "msg": "Instance not found"}
    r = sim.call("PUT", f"/api/v0/instances/{inst_id}/", json={"state": "running"})
    assert r.status_code == 404


def test_label_and_bulk_state(sim):
    machine_id, offer_id = big_4090_host(sim)
    a, b = sim.create(offer_id), sim.create(offer_id)
    sim.ok("PUT", f"/api/v0/instances/{a}/", json={"label": "renamed"})
    assert sim.instance(a)["label"] == "renamed"
    sim.ok("PUT", "/api/v0/instances/", json={"state": "stopped", "ids": [a, b]})
    assert {sim.instance(i)["intended_status"] for i in (a, b)} == {"stopped"}
    r = sim.call("PUT", "/api/v0/instances/", json={"state": "running", "ids": [a, 1]})
    assert r.status_code == 404 and sim.instance(a)["intended_status"] == "stopped"


# ---- the v1 instance list ----------------------------------------------------------------


def _fill(sim, labels):
    machine_id, offer_id = big_4090_host(sim)
    return [sim.create(offer_id, label=label, target_state="stopped") for label in labels]


def test_v1_list_filters_pages_and_label_counts(sim):
    ids = _fill(sim, ["pool-a"] * 30 + ["pool-b"] * 4 + [None])
    params = {"select_filters": '{"label": {"eq": "pool-a"}}', "limit": 10}
    seen, pages, token = [], 0, None
    while True:
        page = sim.ok("GET", "/api/v1/instances/", params={**params, **({"after_token": token} if token else {})})
        assert page["success"] is True
        assert page["instances_found"] == 30 and page["total_instances"] == 35
        assert page["label_counts"] == {"pool-a": 30, "pool-b": 4, "": 1}
        seen += [row["id"] for row in page["instances"]]
        pages += 1
        token = page["next_token"]
        if token is None:
            break
    assert pages == 3 and seen == ids[:30]
    desc = sim.ok("GET", "/api/v1/instances/", params={
        "select_filters": '{"label": {"in": ["pool-b", null]}}', "order_by": '[{"col": "id", "dir": "desc"}]',
        "select_cols": '["id", "label", "nope"]'})
    assert [r["id"] for r in desc["instances"]] == sorted(ids[30:], reverse=True)
    assert desc["instances"][0] == {"id": ids[-1], "label": None, "nope": None}


def test_v1_list_limits_status_filters_and_errors(sim):
    ids = _fill(sim, ["x"] * 30)
    rows = sim.ok("GET", "/api/v1/instances/", params={"limit": 100})["instances"]
    assert len(rows) == 25
    assert len(sim.ok("GET", "/api/v1/instances/", params={"limit": 0})["instances"]) == 5
    sim.set_state(ids[0], "running")
    running = sim.ok("GET", "/api/v1/instances/", params={
        "select_filters": '{"intended_status": {"eq": "running"}, "machine_id": {"gt": "0"}}'})
    assert [r["id"] for r in running["instances"]] == [ids[0]]
    sim.wait_status(ids[0], "running")
    by_status = sim.ok("GET", "/api/v1/instances/", params={
        "select_filters": '{"actual_status": {"in": ["running", "loading"]}}'})
    assert by_status["instances_found"] == 1 and by_status["total_instances"] == 30
    for bad in ({"select_filters": '{"dph_total": {"lt": 1}}'}, {"select_filters": "{nope"}):
        r = sim.call("GET", "/api/v1/instances/", params=bad)
        assert r.status_code == 400 and r.json()["error"] == "invalid_args"
    r = sim.call("GET", "/api/v1/instances/", params={"after_token": "garbage!"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_token"
    legacy = sim.call("GET", "/api/v0/instances/", params={"owner": "me"})
    assert legacy.status_code == 410 and legacy.json()["error"] == "deprecated_endpoint"
    filters = sim.ok("GET", "/api/v0/instances/filters/")["filters"]
    assert {"actual_status": "running", "verification": "verified", "gpu_name": "RTX 4090"} in filters


# ---- volumes ----------------------------------------------------------------------------


def test_volumes_bind_to_their_machine(sim):
    machine_a, offer_a = big_4090_host(sim)
    machine_b, offer_b = big_4090_host(sim, skip={machine_a})
    vol_offers = sim.ok("POST", "/api/v0/volumes/search/", json={
        "verified": {"eq": True}, "disk_space": {"gte": "1"}, "order": [["score", "desc"]],
        "allocated_storage": 1.0})["offers"]
    assert len({o["machine_id"] for o in vol_offers}) == len(vol_offers)
    vol_offer = next(o for o in vol_offers if o["machine_id"] == machine_a)
    assert vol_offer["id"] == machine_a * 100 + 50 and vol_offer["disk_space"] > 50
    created = sim.ok("PUT", "/api/v0/volumes/", json={"size": 50, "id": vol_offer["id"], "name": "data"})
    assert created["success"] is True and created["volume_name"].startswith("V.")
    vid = int(created["volume_name"][2:])
    volume = sim.ok("GET", "/api/v0/volumes", params={"owner": "me", "type": "all_volume"})["volumes"][0]
    assert volume["id"] == vid and volume["machine_id"] == machine_a and volume["label"] == "data"
    assert volume["disk_space"] == 50 and volume["instances"] == [] and isinstance(volume["start_date"], float)

    link = {"create_new": False, "volume_id": vid, "mount_path": "/data"}
    r = sim.call("PUT", f"/api/v0/asks/{offer_b}/", json={"image": "x", "volume_info": link})
    assert r.status_code == 400 and r.json()["error"] == "invalid_args" and r.json()["success"] is False
    primary = sim.create(offer_a, volume_info=link)
    standby = sim.create(offer_a, volume_info=link, target_state="stopped")
    assert sim.instance(primary)["volume_info"][0]["id"] == vid
    assert sorted(sim.ok("GET", "/api/v0/volumes/")["volumes"][0]["instances"]) == [primary, standby]

    for blocker in (primary, standby):
        r = sim.call("DELETE", "/api/v0/volumes/", params={"id": vid})
        assert r.status_code == 400 and r.json()["error"] == "invalid_args"
        sim.set_state(blocker, "stopped")
        r = sim.call("DELETE", "/api/v0/volumes/", params={"id": vid})
        assert r.status_code == 400  # stopped instances still use it
        sim.ok("DELETE", f"/api/v0/instances/{blocker}/")
    assert sim.ok("DELETE", "/api/v0/volumes/", json={"id": vid}) == {"success": True}
    r = sim.call("DELETE", "/api/v0/volumes/", params={"id": vid})
    assert r.status_code == 404 and r.json()["error"] == "no_such_volume"
    r = sim.call("DELETE", "/api/v0/volumes/", params={"id": "abc"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_args"
    assert sim.ledger()["volumes"] == []


def test_create_new_volume_with_the_instance(sim):
    machine_a, offer_a = big_4090_host(sim)
    machine_b, offer_b = big_4090_host(sim, skip={machine_a})
    info = {"create_new": True, "volume_id": machine_a * 100 + 50, "size": 40, "name": "shared", "mount_path": "/w"}
    r = sim.call("PUT", f"/api/v0/asks/{offer_b}/", json={"image": "x", "volume_info": info})
    assert r.status_code == 400 and r.json()["error"] == "invalid_args"
    assert sim.ledger() == {"instances": [], "volumes": [], "violations": []}
    inst_id = sim.create(offer_a, volume_info=info)
    (volume,) = sim.ledger()["volumes"]
    assert volume["name"] == "shared" and volume["machine_id"] == machine_a and volume["instances"] == [inst_id]
    assert sim.ledger()["instances"][0]["volume_id"] == volume["id"]
    assert sim.stats()["volumes_created_by_name"] == {"shared": 1}


# ---- control routes ----------------------------------------------------------------------


def test_fail_instance_keeps_gpu_until_stopped(sim):
    machine_id, offer_id = big_4090_host(sim)
    free = max(o["num_gpus"] for o in sim.offers({"machine_id": {"eq": machine_id}}))
    inst_id = sim.create(machine_id * 100 + 2)
    sim.ok("POST", f"/_sim/instances/{inst_id}/fail")
    row = sim.instance(inst_id)
    assert row["actual_status"] == "offline" and row["intended_status"] == "running"
    assert sim.ledger()["instances"][0]["actual_status"] == "offline"
    assert max(o["num_gpus"] for o in sim.offers({"machine_id": {"eq": machine_id}})) < free
    sim.set_state(inst_id, "stopped")
    assert sim.instance(inst_id)["intended_status"] == "stopped"
    assert max(o["num_gpus"] for o in sim.offers({"machine_id": {"eq": machine_id}})) == free
    assert sim.call("POST", "/_sim/instances/1/fail").status_code == 404


def test_fail_a_stopped_instance_shows_it_offline_and_stopped_by_intent(sim):
    """A stopped standby whose host drops it, as Vast reports a lost host: offline, the user's target unchanged."""
    _, offer_id = big_4090_host(sim)
    stopped = sim.create(offer_id, target_state="stopped", label="standby")
    sim.wait_status(stopped, "stopped")
    sim.ok("POST", f"/_sim/instances/{stopped}/fail")
    row = sim.instance(stopped)
    assert row["actual_status"] == "offline" and row["intended_status"] == "stopped"
    lost = {"intended_status": {"eq": "stopped"}, "actual_status": {"notin": ["exited", "stopped"]}}
    listed = sim.ok("GET", "/api/v1/instances/", params={"select_filters": json.dumps(lost)})["instances"]
    assert [r["id"] for r in listed] == [stopped]  # the sweep's filter for lost standbys finds it
    sim.ok("DELETE", f"/api/v0/instances/{stopped}/")
    assert sim.ok("GET", f"/api/v0/instances/{stopped}/")["instances"] is None


def test_fail_host_and_restore(sim):
    machine_id, offer_id = big_4090_host(sim)
    a, b = sim.create(offer_id), sim.create(offer_id, target_state="stopped")
    sim.ok("POST", f"/_sim/hosts/{machine_id}/fail")
    assert {sim.instance(i)["actual_status"] for i in (a, b)} == {"offline"}
    assert sim.offers({"machine_id": {"eq": machine_id}}) == []
    assert all(o["machine_id"] != machine_id for o in sim.ok("POST", "/api/v0/volumes/search/", json={})["offers"])
    assert sim.call("PUT", f"/api/v0/asks/{offer_id}/", json={"image": "x"}).status_code == 404
    sim.ok("POST", f"/_sim/hosts/{machine_id}/restore")
    sim.wait_status(a, "running")
    assert sim.offers({"machine_id": {"eq": machine_id}})
    assert sim.call("POST", "/_sim/hosts/1/fail").status_code == 404


def test_ledger_stats_and_reset(sim):
    machine_id, offer_id = big_4090_host(sim)
    a = sim.create(offer_id, label="web")
    sim.create(offer_id, label="web")
    sim.ok("DELETE", f"/api/v0/instances/{a}")
    sim.ok("GET", "/api/v1/instances/")
    ledger = sim.ledger()
    (row,) = ledger["instances"]
    assert {"id", "label", "machine_id", "actual_status", "intended_status", "volume_id"} <= row.keys()
    stats = sim.stats()
    assert stats["requests"]["PUT /api/v0/asks/{id}/"] == 2
    assert stats["requests"]["DELETE /api/v0/instances/{id}/"] == 1
    assert stats["requests"]["GET /api/v1/instances/"] == 1
    assert stats["created_by_label"] == {"web": 2}  # destroyed ones still count
    assert stats["rate_limited"] == 0 and stats["errors_injected"] == 0
    config = sim.ok("GET", "/_sim/config")
    assert config["time_scale"] == TIME_SCALE and config["load_seconds"] == clock.LOAD_SECONDS * TIME_SCALE
    sim.ok("POST", "/_sim/reset")
    assert sim.ledger() == {"instances": [], "volumes": [], "violations": []}
    assert sim.stats()["requests"] == {}


def test_injected_faults_have_no_side_effects(sim):
    _, offer_id = big_4090_host(sim)
    sim.ok("POST", "/_sim/faults", json={"error_rate": 1.0})
    r = sim.call("PUT", f"/api/v0/asks/{offer_id}/", json={"image": "x"})
    assert r.status_code == 503 and r.headers["Content-Type"] == "application/json"
    assert sim.ledger()["instances"] == []
    sim.ok("POST", "/_sim/faults", json={"rate_limit_rate": 1.0})
    r = sim.call("PUT", f"/api/v0/asks/{offer_id}/", json={"image": "x"})
    assert r.status_code == 429 and r.text == "API requests too frequent" and r.headers["Retry-After"] == "1"
    assert sim.ledger()["instances"] == []
    sim.ok("POST", "/_sim/faults", json={"latency_ms": 50})
    started = time.monotonic()
    sim.create(offer_id)
    assert time.monotonic() - started >= 0.05
    sim.ok("POST", "/_sim/faults", json={})
    stats = sim.stats()
    assert stats["errors_injected"] == 1 and stats["rate_limited"] == 1
    assert stats["requests"]["PUT /api/v0/asks/{id}/"] == 3
    assert sim.call("POST", "/_sim/faults", json={"error_rate": "high"}).status_code == 400


def test_partial_fault_rate_is_seeded_and_partial(sim):
    sim.ok("POST", "/_sim/faults", json={"error_rate": 0.5})
    codes = [sim.call("GET", "/api/v0/users/current").status_code for _ in range(40)]
    sim.ok("POST", "/_sim/faults", json={})
    assert set(codes) == {200, 503}


def test_route_rate_limits(sim):
    machine_id, offer_id = big_4090_host(sim)
    inst_id = sim.create(offer_id)
    sim.ok("POST", "/_sim/rate_limits", json={"PUT /api/v0/instances/{id}/": 30})
    sim.set_state(inst_id, "stopped")
    r = sim.call("PUT", f"/api/v0/instances/{inst_id}", json={"state": "running"})
    assert r.status_code == 429 and r.text == "API requests too frequent endpoint threshold=30.0"
    assert sim.instance(inst_id)["intended_status"] == "stopped"
    assert sim.stats()["instance_actions"][str(inst_id)] == {"stop": 1}
    sim.ok("GET", "/api/v1/instances/")  # other routes are not limited
    sim.ok("POST", "/_sim/rate_limits", json={})
    sim.set_state(inst_id, "running")
    assert sim.stats()["rate_limited"] == 1


# ---- bad input, paths, auth, headers -----------------------------------------------------


def test_bad_input_gets_vast_errors(sim):
    r = sim.call("PUT", "/api/v0/asks/777/", json={"image": "x"})
    assert r.status_code == 404
    assert r.json() == {"success": False, "error": "invalid_args", "ask_id": 777,
                        "msg": "error 404/3603: no_such_ask Instance type by id 777 is not available."}
    r = sim.call("PUT", "/api/v0/asks/777/", data="{oops", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json() == {"error": "invalid_request", "msg": "Invalid json body"}
    _, offer_id = big_4090_host(sim)
    for body in ({"image": 5}, {"disk": "big"}, {"target_state": "paused"}, {"env": "A=b"},
                 {"volume_info": {"volume_id": "x", "mount_path": "/d"}}, {"label": "x" * 300}):
        r = sim.call("PUT", f"/api/v0/asks/{offer_id}/", json=body)
        assert r.status_code == 400 and r.json()["error"] == "invalid_args", body
    r = sim.call("PUT", f"/api/v0/asks/{offer_id}/", json=[1, 2])
    assert r.status_code == 400
    assert sim.ledger()["instances"] == []
    inst_id = sim.create(offer_id)
    for body in ({"state": "sleeping"}, {}, {"label": 3}):
        assert sim.call("PUT", f"/api/v0/instances/{inst_id}/", json=body).status_code == 400
    assert sim.call("GET", "/api/v0/instances/abc/").status_code == 400
    assert sim.ok("GET", "/api/v0/instances/424242/") == {"instances": None}
    r = sim.call("PUT", "/api/v0/volumes/", json={"size": 10, "id": 123})
    assert r.status_code == 404 and r.json()["success"] is False
    r = sim.call("GET", "/api/v0/nowhere/")
    assert r.status_code == 404 and r.headers["Content-Type"] == "application/json"
    assert sim.call("PATCH", "/api/v0/bundles/").status_code == 405


def test_paths_with_and_without_trailing_slash(sim):
    for path in ("/api/v0/users/current", "/api/v0/users/current/", "/api/v0/volumes", "/api/v0/volumes/",
                 "/api/v1/instances", "/api/v1/instances/", "/api/v0/gpu_names/unique"):
        assert sim.call("GET", path).status_code == 200, path
    _, offer_id = big_4090_host(sim)
    inst_id = sim.ok("PUT", f"/api/v0/asks/{offer_id}", json={"image": "x"})["new_contract"]
    assert sim.ok("GET", f"/api/v0/instances/{inst_id}")["instances"]["id"] == inst_id
    assert sim.ok("POST", "/api/v0/bundles", json={"limit": 1})["offers"]


def test_auth(sim):
    for path in ("/api/v0/users/current", "/api/v1/instances/"):
        r = sim.call("GET", path, auth=False)
        assert r.status_code == 401
        assert r.json() == {"success": False, "error": "auth_error", "msg": "Invalid user key"}
    assert sim.call("GET", "/api/v0/users/current", auth=False, params={"api_key": "k"}).status_code == 200
    assert sim.call("GET", "/api/v0/users/current", auth=False,
                    headers={"Authorization": "Bearer "}).status_code == 401

    client = create_app(time_scale=TIME_SCALE, api_key="secret").test_client()
    assert client.get("/api/v0/users/current", headers={"Authorization": "Bearer secret"}).status_code == 200
    assert client.get("/api/v0/users/current?api_key=secret").status_code == 200
    assert client.get("/api/v0/users/current", headers={"Authorization": "Bearer other"}).status_code == 401
    assert client.get("/api/v0/gpu_names/unique/").status_code == 200


def test_content_type_is_exactly_application_json(sim):
    for method, path in (("POST", "/api/v0/bundles/"), ("GET", "/api/v1/instances/"),
                         ("GET", "/api/v0/instances/1/"), ("GET", "/api/v0/volumes"), ("GET", "/_sim/ledger")):
        r = sim.call(method, path, json={} if method == "POST" else None)
        assert r.headers["Content-Type"] == "application/json", path


def test_twenty_thousand_instances_stay_fast():
    app = create_app(time_scale=TIME_SCALE)
    world = app.extensions["sim_world"]
    offers = world.offers.search({"num_gpus": {"eq": 1}})
    as_test_key = accounts.current.set(accounts.account_of(KEY["Authorization"].removeprefix("Bearer ")))
    for n in range(20_000):
        world.instances.create(offers[n % len(offers)]["id"],
                              {"image": "x", "label": f"pool-{n % 40}", "target_state": "stopped"})
    accounts.current.reset(as_test_key)
    client = app.test_client()
    slowest = 0.0
    token = None
    for _ in range(3):
        started = time.monotonic()
        page = client.get("/api/v1/instances/", headers=KEY, query_string={
            "select_filters": '{"label": {"in": ["pool-1", "pool-2"]}}',
            "order_by": '[{"col": "label", "dir": "desc"}]', **({"after_token": token} if token else {})}).get_json()
        slowest = max(slowest, time.monotonic() - started)
        token = page["next_token"]
        assert page["instances_found"] == 1000 and page["total_instances"] == 20_000
    started = time.monotonic()
    client.post("/api/v0/bundles/", json={}, headers=KEY)
    client.get(f"/api/v0/instances/{page['instances'][0]['id']}/", headers=KEY)
    client.get("/_sim/ledger")
    slowest = max(slowest, time.monotonic() - started)
    assert slowest < 1.0
