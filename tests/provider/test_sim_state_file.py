"""``warmpool sim --state-file``: the simulated world survives a restart, as Vast's would."""

import json
import signal
import subprocess
import sys

import pytest

from app.processes import free_port, listening, wait_until
from sim import create_app
from sim.accounts import account_of
from sim.persistence import snapshot
from tests.conftest import ROOT
from tests.provider.simkit import KEY, TIME_SCALE, Sim, big_4090_host


class SimProcess:
    """``warmpool sim`` as a process of its own, on one port and one state file."""

    def __init__(self, state_file, log):
        self.port, self.state_file, self.log, self.process = free_port(), state_file, log, None

    def start(self):
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "sim", "--port", str(self.port), "--time-scale", str(TIME_SCALE),
                 "--state-file", str(self.state_file)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        wait_until(lambda: listening(self.port) or self.process.poll() is not None, message="the simulator")
        return Sim(f"http://127.0.0.1:{self.port}")

    def stop(self, signum=signal.SIGTERM):
        self.process.send_signal(signum)
        return self.process.wait(timeout=10)


@pytest.fixture
def sim_process(tmp_path):
    proc = SimProcess(tmp_path / "sim-world.json", tmp_path / "sim.log")
    yield proc
    if proc.process and proc.process.poll() is None:
        proc.stop(signal.SIGKILL)


def test_a_restart_keeps_instances_volumes_ids_and_end_dates(sim_process):
    sim = sim_process.start()
    machine_id, offer_id = big_4090_host(sim)
    info = {"create_new": True, "volume_id": machine_id * 100 + 50, "size": 10, "name": "data", "mount_path": "/d"}
    primary = sim.create(offer_id, label="primary", volume_info=info)
    (volume,) = sim.ledger()["volumes"]
    link = {"create_new": False, "volume_id": volume["id"], "mount_path": "/d"}
    standby = sim.create(offer_id, label="standby", volume_info=link, target_state="stopped")
    end = sim.ok("POST", f"/_sim/instances/{standby}/end_date", json={"in_seconds": 7200})["end_date"]
    sim.ok("POST", f"/_sim/volumes/{volume['id']}/write")
    free_offers = [o["id"] for o in sim.offers({"machine_id": {"eq": machine_id}})]
    before = sim.ledger()
    assert sim_process.stop(signal.SIGKILL) == -signal.SIGKILL  # no chance to save at exit

    sim = sim_process.start()
    after = sim.ledger()
    assert after["volumes"] == before["volumes"] and after["volumes"][0]["data_version"] == 1
    rows = {i["id"]: i for i in after["instances"]}
    assert rows.keys() == {primary, standby} and rows[standby]["end_date"] == end
    assert rows[primary]["actual_status"] == "running" and rows[standby]["actual_status"] == "stopped"
    assert [o["id"] for o in sim.offers({"machine_id": {"eq": machine_id}})] == free_offers  # GPUs still held
    assert sim.create(offer_id) == max(primary, standby) + 1  # ids go on, never reused
    sim.set_state(primary, "stopped")
    assert sim_process.stop() == 0

    sim = sim_process.start()
    assert sim.instance(primary)["intended_status"] == "stopped"
    assert sim.stats()["instance_actions"][str(primary)] == {"stop": 1}


def test_time_goes_on_across_the_restart(sim_process):
    sim = sim_process.start()
    _, offer_id = big_4090_host(sim)
    inst_id = sim.create(offer_id)
    assert sim.instance(inst_id)["actual_status"] in ("created", "loading")
    sim_process.stop()
    sim = sim_process.start()
    sim.wait_status(inst_id, "running")


def test_an_idle_simulator_still_ends_rentals_and_saves_them(sim_process):
    sim = sim_process.start()
    _, offer_id = big_4090_host(sim)
    inst_id = sim.create(offer_id)
    sim.ok("POST", f"/_sim/instances/{inst_id}/end_date", json={"in_seconds": 1.0})

    def saved_intent():  # read from the file alone: no request reaches the simulator meanwhile
        return json.loads(sim_process.state_file.read_text())["instances"][0]["intended"]

    assert saved_intent() == "running"
    wait_until(lambda: saved_intent() == "stopped", timeout=5, message="the housekeeper to end the rental")


def test_an_unreadable_state_file_stops_the_simulator_with_a_clear_message(sim_process):
    sim_process.state_file.write_text('{"format": 99}')
    sim_process.start()
    assert sim_process.process.wait(timeout=10) == 1
    assert "cannot restore the simulator" in sim_process.log.read_text()


def test_everything_that_makes_the_world_round_trips(tmp_path):
    path = tmp_path / "world.json"
    app = create_app(time_scale=TIME_SCALE, state_file=path)
    client = app.test_client()

    def ok(method, url, **kwargs):
        r = client.open(url, method=method, headers=KEY, **kwargs)
        assert r.status_code == 200, r.get_data(as_text=True)
        return r.get_json()

    offers = ok("POST", "/api/v0/bundles/", json={"gpu_name": {"eq": "RTX 4090"},
                                                  "order": [["machine_id", "asc"]]})["offers"]
    machine_id = offers[0]["machine_id"]
    other = next(o["machine_id"] for o in offers if o["machine_id"] != machine_id)
    vols = [int(ok("PUT", "/api/v0/volumes/", json={"id": m * 100 + 50, "size": 5, "name": n})["volume_name"][2:])
            for m, n in ((machine_id, "a"), (other, "b"))]
    ok("POST", f"/_sim/volumes/{vols[0]}/write")
    ok("PUT", "/api/v0/commands/copy_direct/", json={"src_id": f"V.{vols[0]}", "dst_id": f"V.{vols[1]}"})
    link = {"create_new": False, "volume_id": vols[0], "mount_path": "/d"}
    first = ok("PUT", f"/api/v0/asks/{machine_id * 100 + 1}/", json={"image": "x", "volume_info": link})
    ok("PUT", f"/api/v0/asks/{machine_id * 100 + 1}/", json={"image": "x", "volume_info": link})  # a violation
    ok("POST", f"/_sim/hosts/{other}/rent_out")
    ok("POST", "/_sim/webhooks", json={"url": "http://127.0.0.1:9/hook", "secret": "s"})
    ok("POST", "/_sim/webhooks", json={"url": "http://127.0.0.1:9/other", "secret": "t", "api_key": "other-key"})
    ok("DELETE", f"/api/v0/instances/{first['new_contract']}/")
    saved = json.loads(path.read_text())
    assert not list(tmp_path.glob(".world.json.*"))  # no temporary file left behind

    restored = create_app(time_scale=TIME_SCALE, state_file=path).extensions["sim_world"]
    assert snapshot(restored) == saved == snapshot(app.extensions["sim_world"])
    assert restored.hosts[other].rented_out and restored.ledger()["violations"]
    assert restored.webhooks.view()["receivers"] == [{"url": "http://127.0.0.1:9/hook"},
                                                     {"url": "http://127.0.0.1:9/other", "account": account_of("other-key")}]

    def copy_landed():
        restored.tick()  # no server, so no housekeeper: apply what is due by hand
        return restored.ledger()["volumes"][1]["data_version"] == 1

    wait_until(copy_landed, timeout=5, message="the copy under way at the save to land after the restore")
