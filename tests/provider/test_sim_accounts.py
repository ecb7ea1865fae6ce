"""The simulator's accounts: each API key sees only what it made, and is rate-limited apart (sim/accounts.py)."""

from sim.accounts import account_of
from tests.provider.simkit import big_4090_host

OTHER = {"Authorization": "Bearer other-key"}


def test_each_key_sees_only_its_own_instances_and_volumes(sim):
    machine_id, offer_id = big_4090_host(sim)
    mine = sim.create(offer_id, label="mine")
    theirs = sim.ok("PUT", f"/api/v0/asks/{offer_id}/", headers=OTHER, json={
        "image": "x", "disk": 10.0, "label": "theirs", "runtype": "ssh"})["new_contract"]
    listed = sim.ok("GET", "/api/v1/instances/")
    assert [row["id"] for row in listed["instances"]] == [mine] and listed["label_counts"] == {"mine": 1}
    other = sim.ok("GET", "/api/v1/instances/", headers=OTHER)
    assert [row["id"] for row in other["instances"]] == [theirs]
    # another account's instance is not found, whatever the call, and nothing happens to it
    assert sim.call("GET", f"/api/v0/instances/{theirs}/").json()["instances"] is None
    for method, path, body in (("PUT", f"/api/v0/instances/{theirs}/", {"state": "stopped"}),
                               ("PUT", "/api/v0/instances/", {"ids": [mine, theirs], "state": "stopped"}),
                               ("DELETE", f"/api/v0/instances/{theirs}/", {})):
        assert sim.call(method, path, json=body).json()["error"] == "no_such_instance"
    assert {r["id"]: r["intended_status"] for r in sim.ledger()["instances"]} == {mine: "running", theirs: "running"}
    volume = sim.ok("POST", "/api/v0/volumes/search/", json={"machine_id": {"eq": machine_id}})["offers"][0]["id"]
    sim.ok("PUT", "/api/v0/volumes/", headers=OTHER, json={"id": volume, "size": 10, "name": "theirs"})
    assert sim.ok("GET", "/api/v0/volumes")["volumes"] == []
    assert [v["label"] for v in sim.ok("GET", "/api/v0/volumes", headers=OTHER)["volumes"]] == ["theirs"]


def test_rate_limits_and_request_counts_are_per_key(sim):
    _, offer_id = big_4090_host(sim)
    sim.create(offer_id)
    sim.ok("POST", "/_sim/rate_limits", json={"GET /api/v1/instances/": 30})
    sim.ok("GET", "/api/v1/instances/")
    assert sim.call("GET", "/api/v1/instances/").status_code == 429
    sim.ok("GET", "/api/v1/instances/", headers=OTHER)  # the other key has its own budget
    by_account = sim.stats()["requests_by_account"]
    assert by_account[account_of("test-key")]["GET /api/v1/instances/"] == 2
    assert by_account[account_of("other-key")] == {"GET /api/v1/instances/": 1}
    assert "test-key" not in str(by_account) and "other-key" not in str(by_account)
