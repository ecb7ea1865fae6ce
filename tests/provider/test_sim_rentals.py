"""Vast's own rules in the simulator: rentals end at their end_date, volume names are restricted."""

import time

import pytest

from tests.conftest import wait_until
from tests.provider.simkit import big_4090_host


def test_instances_end_when_their_offer_said(sim):
    machine_id, offer_id = big_4090_host(sim)
    (offer,) = sim.offers({"id": {"eq": offer_id}})
    before = time.time()
    inst_id = sim.create(offer_id)
    row = sim.instance(inst_id)
    assert before + offer["duration"] - 60 <= row["end_date"] <= time.time() + offer["duration"]
    assert row["end_date"] == offer["end_date"] == sim.ledger()["instances"][0]["end_date"]
    assert all(o["duration"] > 0 for o in sim.offers({"machine_id": {"eq": machine_id}}))


def test_at_its_end_the_instance_stops_and_cannot_start_again(sim):
    machine_id, offer_id = big_4090_host(sim)
    free = max(o["num_gpus"] for o in sim.offers({"machine_id": {"eq": machine_id}}))
    inst_id = sim.create(machine_id * 100 + 2)
    sim.wait_status(inst_id, "running")
    end = sim.ok("POST", f"/_sim/instances/{inst_id}/end_date", json={"in_seconds": 0.3})["end_date"]
    assert sim.instance(inst_id)["end_date"] == end
    sim.wait_status(inst_id, "stopped")
    row = sim.instance(inst_id)
    assert row["intended_status"] == "stopped" and "ended" in row["status_msg"]
    assert max(o["num_gpus"] for o in sim.offers({"machine_id": {"eq": machine_id}})) == free
    r = sim.call("PUT", f"/api/v0/instances/{inst_id}/", json={"state": "running"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_args" and "rental ended" in r.json()["msg"]
    assert sim.instance(inst_id)["intended_status"] == "stopped"
    sim.set_state(inst_id, "stopped")  # stopping an ended instance is fine
    other = sim.create(offer_id, target_state="stopped")
    r = sim.call("PUT", "/api/v0/instances/", json={"state": "running", "ids": [other, inst_id]})
    assert r.status_code == 400 and sim.instance(other)["intended_status"] == "stopped"


def test_an_end_date_in_the_past_ends_a_stopped_standby_at_once(sim):
    _, offer_id = big_4090_host(sim)
    standby = sim.create(offer_id, target_state="stopped")
    sim.ok("POST", f"/_sim/instances/{standby}/end_date", json={"in_seconds": -5})
    assert sim.call("PUT", f"/api/v0/instances/{standby}/", json={"state": "running"}).status_code == 400
    # a later end date makes it startable again
    sim.ok("POST", f"/_sim/instances/{standby}/end_date", json={"in_seconds": 3600})
    sim.set_state(standby, "running")
    wait_until(lambda: sim.instance(standby)["actual_status"] == "running", timeout=5, interval=0.01)


@pytest.mark.parametrize("body", [{}, {"in_seconds": "soon"}, {"in_seconds": True}])
def test_bad_end_date_requests(sim, body):
    _, offer_id = big_4090_host(sim)
    inst_id = sim.create(offer_id)
    r = sim.call("POST", f"/_sim/instances/{inst_id}/end_date", json=body)
    assert r.status_code == 400 and r.json()["error"] == "invalid_args"
    assert sim.call("POST", "/_sim/instances/1/end_date", json={"in_seconds": 1}).status_code == 404


@pytest.mark.parametrize("name", ["warmpool-acme-1", "", "x" * 65, "dots.no", "space no", 7])
def test_volume_names_follow_vasts_rule(sim, name):
    machine_id, offer_id = big_4090_host(sim)
    r = sim.call("PUT", "/api/v0/volumes/", json={"id": machine_id * 100 + 50, "size": 10, "name": name})
    assert r.status_code == 400 and r.json()["error"] == "invalid_args" and r.json()["success"] is False
    info = {"create_new": True, "volume_id": machine_id * 100 + 50, "size": 10, "name": name, "mount_path": "/d"}
    r = sim.call("PUT", f"/api/v0/asks/{offer_id}/", json={"image": "x", "volume_info": info})
    assert r.status_code == 400 and r.json()["error"] == "invalid_args"
    assert sim.ledger()["volumes"] == [] and sim.ledger()["instances"] == []


def test_good_volume_names(sim):
    machine_id, _ = big_4090_host(sim)
    for name in ("warmpool_acme_1", "A" * 64, None):
        body = {"id": machine_id * 100 + 50, "size": 1, **({"name": name} if name else {})}
        assert sim.ok("PUT", "/api/v0/volumes/", json=body)["success"] is True
    assert [v["name"] for v in sim.ledger()["volumes"]] == ["warmpool_acme_1", "A" * 64, None]
