"""Volume contents as a version, and Vast's volume copies (copy_direct and clone) in the simulator."""

import pytest

from sim import copies
from tests.conftest import wait_until
from tests.provider.simkit import TIME_SCALE, big_4090_host, holds_for

SIZE = 10
COPY_SECONDS = (copies.COPY_BASE_SECONDS + copies.COPY_SECONDS_PER_GB * SIZE) * TIME_SCALE


def volume_on(sim, machine_id, name):
    created = sim.ok("PUT", "/api/v0/volumes/", json={"id": machine_id * 100 + 50, "size": SIZE, "name": name})
    return int(created["volume_name"][2:])


def two_hosts(sim):
    machine_a, _ = big_4090_host(sim)
    machine_b, _ = big_4090_host(sim, skip={machine_a})
    return machine_a, machine_b


def ledger_volume(sim, vid):
    return next(v for v in sim.ledger()["volumes"] if v["id"] == vid)


def vast_volume(sim, vid):
    return next(v for v in sim.ok("GET", "/api/v0/volumes")["volumes"] if v["id"] == vid)


def copy(sim, src, dst):
    return sim.call("PUT", "/api/v0/commands/copy_direct/", json={
        "client_id": "me", "src_id": f"V.{src}", "dst_id": f"V.{dst}", "src_path": "/data", "dst_path": "/data"})


def test_writes_bump_the_data_version(sim):
    machine_a, _ = two_hosts(sim)
    vid = volume_on(sim, machine_a, "a")
    assert ledger_volume(sim, vid)["data_version"] == 0 and ledger_volume(sim, vid)["copy"] is None
    assert sim.ok("POST", f"/_sim/volumes/{vid}/write") == {"success": True, "data_version": 1}
    assert sim.ok("POST", f"/_sim/volumes/{vid}/write")["data_version"] == 2
    assert ledger_volume(sim, vid)["data_version"] == 2
    assert sim.call("POST", "/_sim/volumes/1/write").status_code == 404
    sim.ok("POST", f"/_sim/hosts/{machine_a}/fail")
    r = sim.call("POST", f"/_sim/volumes/{vid}/write")
    assert r.status_code == 409 and r.json()["error"] == "machine_offline"


def test_copy_carries_the_version_of_its_start_after_a_delay(sim):
    machine_a, machine_b = two_hosts(sim)
    src, dst = volume_on(sim, machine_a, "src"), volume_on(sim, machine_b, "dst")
    sim.ok("POST", f"/_sim/volumes/{src}/write")
    assert copy(sim, src, dst).json()["success"] is True
    sim.ok("POST", f"/_sim/volumes/{src}/write")  # after the copy began: not carried
    assert vast_volume(sim, dst)["status"] == "copying"
    assert ledger_volume(sim, dst)["copy"]["state"] == "copying" and ledger_volume(sim, dst)["data_version"] == 0
    wait_until(lambda: ledger_volume(sim, dst)["data_version"] == 1, timeout=5, interval=0.01,
               message="the copy to complete")
    done = ledger_volume(sim, dst)["copy"]
    assert done["state"] == "done" and done["src_id"] == src and done["data_version"] == 1
    assert done["done_at"] - done["started_at"] == pytest.approx(COPY_SECONDS)
    assert vast_volume(sim, dst)["status"] == "online" and ledger_volume(sim, src)["data_version"] == 2


def test_copy_needs_both_machines_online(sim):
    machine_a, machine_b = two_hosts(sim)
    src, dst = volume_on(sim, machine_a, "src"), volume_on(sim, machine_b, "dst")
    sim.ok("POST", f"/_sim/hosts/{machine_a}/fail")
    r = copy(sim, src, dst)
    assert r.status_code == 200 and r.json()["success"] is False and r.json()["error"] == "machine_offline"
    assert ledger_volume(sim, dst)["copy"] is None


def test_a_copy_whose_source_fails_never_completes(sim):
    machine_a, machine_b = two_hosts(sim)
    src, dst = volume_on(sim, machine_a, "src"), volume_on(sim, machine_b, "dst")
    sim.ok("POST", f"/_sim/volumes/{src}/write")
    assert copy(sim, src, dst).json()["success"] is True
    sim.ok("POST", f"/_sim/hosts/{machine_a}/fail")
    sim.ok("POST", f"/_sim/hosts/{machine_a}/restore")
    holds_for(lambda: ledger_volume(sim, dst)["data_version"] == 0, 3 * COPY_SECONDS)
    assert ledger_volume(sim, dst)["copy"]["state"] == "lost"
    assert vast_volume(sim, dst)["status"] == "copying"  # Vast never says it failed
    assert sim.ok("DELETE", "/api/v0/commands/copy_direct/", json={"client_id": "me", "dst_id": f"V.{dst}"}) == {
        "success": True}
    assert vast_volume(sim, dst)["status"] == "online" and ledger_volume(sim, dst)["copy"]["state"] == "cancelled"
    r = sim.ok("DELETE", "/api/v0/commands/copy_direct/", json={"client_id": "me", "dst_id": f"V.{dst}"})
    assert r["success"] is False


def test_a_copy_whose_source_is_deleted_never_completes(sim):
    machine_a, machine_b = two_hosts(sim)
    src, dst = volume_on(sim, machine_a, "src"), volume_on(sim, machine_b, "dst")
    sim.ok("POST", f"/_sim/volumes/{src}/write")
    copy(sim, src, dst)
    sim.ok("DELETE", "/api/v0/volumes/", params={"id": src})
    wait_until(lambda: ledger_volume(sim, dst)["copy"]["state"] == "lost", timeout=5, interval=0.01)
    assert ledger_volume(sim, dst)["data_version"] == 0


def test_clone_makes_a_replica_on_another_machine(sim):
    machine_a, machine_b = two_hosts(sim)
    src = volume_on(sim, machine_a, "src")
    for _ in range(3):
        sim.ok("POST", f"/_sim/volumes/{src}/write")
    created = sim.ok("POST", "/api/v0/volumes/copy/", json={"src_id": src, "dst_id": machine_b * 100 + 50,
                                                            "size": SIZE + 5})
    replica = int(created["volume_name"][2:])
    row = vast_volume(sim, replica)
    assert row["machine_id"] == machine_b and row["disk_space"] == SIZE + 5 and row["status"] == "copying"
    wait_until(lambda: ledger_volume(sim, replica)["data_version"] == 3, timeout=5, interval=0.01,
               message="the clone to complete")
    assert vast_volume(sim, replica)["status"] == "online"


def test_bad_copies_are_refused(sim):
    machine_a, machine_b = two_hosts(sim)
    src, dst = volume_on(sim, machine_a, "src"), volume_on(sim, machine_b, "dst")
    for body in ({"src_id": src, "dst_id": f"V.{dst}"}, {"src_id": f"C.{src}", "dst_id": f"V.{dst}"},
                 {"src_id": f"V.{src}", "dst_id": f"V.{src}"}, {"src_id": f"V.{src}", "dst_id": "local"},
                 {"src_id": f"V.{src}", "dst_id": f"V.{dst}", "dst_path": 3}):
        r = sim.call("PUT", "/api/v0/commands/copy_direct/", json=body)
        assert r.status_code == 400 and r.json()["error"] == "invalid_args", body
    assert copy(sim, src, 1).status_code == 404
    offer_b = machine_b * 100 + 50
    for body, status in (({"src_id": src, "dst_id": offer_b, "size": SIZE - 1}, 400),
                         ({"src_id": src, "dst_id": offer_b, "size": 10 ** 6}, 400),
                         ({"src_id": "V.1", "dst_id": offer_b}, 400), ({"src_id": src, "dst_id": 777}, 404),
                         ({"src_id": 1, "dst_id": offer_b}, 404), ({"src_id": src}, 400)):
        assert sim.call("POST", "/api/v0/volumes/copy/", json=body).status_code == status, body
    assert sim.call("PUT", "/api/v0/commands/copy_direct/", data="[", headers={
        "Content-Type": "application/json"}).status_code == 400
    assert [v["copy"] for v in sim.ledger()["volumes"]] == [None, None]
