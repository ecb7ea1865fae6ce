"""The simulator records every split brain (design rule 3) exactly: two instances up on one volume.

Most tests drive the Flask test client with a hand-moved clock, so a stop that is still taking
effect is caught without racing the wall clock.
"""

import pytest

from sim import clock, create_app
from tests.provider.simkit import KEY, big_4090_host


class ClockedSim:
    """The simulator's test client at time scale 1, with a clock that moves only when told."""

    def __init__(self):
        self.app = create_app(time_scale=1.0)
        self.world = self.app.extensions["sim_world"]
        self.t = 1_000_000.0
        self.world.clock.now = lambda: self.t
        self.world.reset()
        self.client = self.app.test_client()
        offers = self.ok("POST", "/api/v0/bundles/", json={"gpu_name": {"eq": "RTX 4090"}, "num_gpus": {"eq": 1},
                                                            "order": [["machine_id", "asc"]]})["offers"]
        offer = next(o for o in offers if o["num_gpus"] / o["gpu_frac"] >= 3)
        self.machine_id, self.offer_id = offer["machine_id"], offer["id"]
        created = self.ok("PUT", "/api/v0/volumes/", json={"id": offer["avail_vol_ask_id"], "size": 10, "name": "v"})
        self.volume_id = int(created["volume_name"][2:])

    def ok(self, method, path, **kwargs):
        r = self.client.open(path, method=method, headers=KEY, **kwargs)
        assert r.status_code == 200, (r.status_code, r.get_data(as_text=True))
        return r.get_json()

    def advance(self, seconds):
        self.t += seconds

    def create(self, target_state="running"):
        link = {"create_new": False, "volume_id": self.volume_id, "mount_path": "/data"}
        return self.ok("PUT", f"/api/v0/asks/{self.offer_id}/",
                       json={"image": "x", "volume_info": link, "target_state": target_state})["new_contract"]

    def set_state(self, inst_id, state):
        self.ok("PUT", f"/api/v0/instances/{inst_id}/", json={"state": state})

    def status(self, inst_id):
        return self.ok("GET", f"/api/v0/instances/{inst_id}/")["instances"]["actual_status"]

    def violations(self):
        return self.ok("GET", "/_sim/ledger")["violations"]


@pytest.fixture
def w():
    return ClockedSim()


def test_starting_the_standby_while_the_primary_runs_is_a_violation(w):
    primary, standby = w.create(), w.create("stopped")
    w.advance(60)
    assert w.violations() == []
    w.set_state(standby, "running")
    assert w.violations() == [{"volume_id": w.volume_id, "instance_ids": [standby, primary],
                               "at": w.t, "cause": "start"}]
    assert w.ok("GET", "/_sim/stats")["violations"] == 1


def test_creating_a_running_instance_on_a_volume_in_use_is_a_violation(w):
    primary = w.create()
    second = w.create()
    (violation,) = w.violations()
    assert violation["instance_ids"] == [second, primary] and violation["cause"] == "create"
    w.create("stopped")  # a stopped instance never runs: no violation
    assert len(w.violations()) == 1


def test_stop_confirmed_then_start_is_clean(w):
    primary, standby = w.create(), w.create("stopped")
    w.advance(60)
    w.set_state(primary, "stopped")
    assert w.status(primary) == "running"  # the stop is still taking effect
    w.advance(clock.STOP_SECONDS)
    assert w.status(primary) == "stopped"
    w.set_state(standby, "running")
    assert w.violations() == []


def test_start_while_the_stop_is_still_taking_effect_is_a_violation(w):
    primary, standby = w.create(), w.create("stopped")
    w.advance(60)
    w.set_state(primary, "stopped")
    w.advance(clock.STOP_SECONDS / 2)
    assert w.ok("GET", f"/api/v0/instances/{primary}/")["instances"]["intended_status"] == "stopped"
    w.set_state(standby, "running")
    assert [v["instance_ids"] for v in w.violations()] == [[standby, primary]]


def test_a_stop_during_loading_takes_effect_after_the_stop_delay_too(w):
    primary, standby = w.create(), w.create("stopped")
    w.advance(clock.CREATED_SECONDS)
    assert w.status(primary) == "loading"
    w.set_state(primary, "stopped")
    w.set_state(standby, "running")
    assert len(w.violations()) == 1
    w.set_state(standby, "stopped")
    w.advance(clock.STOP_SECONDS)
    w.set_state(standby, "running")
    assert len(w.violations()) == 1  # both stops have taken effect


def test_an_offline_instance_stops_at_once(w):
    primary, standby = w.create(), w.create("stopped")
    w.advance(60)
    w.ok("POST", f"/_sim/instances/{primary}/fail")
    w.set_state(primary, "stopped")
    w.set_state(standby, "running")
    assert w.violations() == []


def test_two_instances_meant_to_run_coming_back_with_their_host(w):
    primary, standby = w.create(), w.create("stopped")
    w.advance(60)
    w.ok("POST", f"/_sim/hosts/{w.machine_id}/fail")
    w.set_state(standby, "running")  # the primary's host is down, but it is still meant to run
    w.advance(10)
    w.ok("POST", f"/_sim/hosts/{w.machine_id}/restore")
    violations = w.violations()
    assert [(v["cause"], sorted(v["instance_ids"])) for v in violations] == [
        ("start", sorted([primary, standby])), ("host_restore", sorted([primary, standby]))]
    w.ok("POST", f"/_sim/hosts/{w.machine_id}/restore")  # the host was not down: nothing comes back
    assert len(w.violations()) == 2


def test_instances_without_a_shared_volume_never_violate(sim):
    _, offer_id = big_4090_host(sim)
    a, b = sim.create(offer_id), sim.create(offer_id, target_state="stopped")
    sim.set_state(b, "running")
    assert sim.ledger()["violations"] == [] and sim.stats()["violations"] == 0
    assert {a, b} == {i["id"] for i in sim.ledger()["instances"]}
