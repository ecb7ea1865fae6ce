"""Per-route faults of the simulator: latency, errors, lost and held answers, and ``times``."""

import threading
import time

import requests

from tests.conftest import wait_until
from tests.provider.simkit import KEY, big_4090_host

CREATE = "PUT /api/v0/asks/{id}/"


def test_route_error_hits_only_its_route_and_clears_after_times(sim):
    _, offer_id = big_4090_host(sim)
    active = sim.ok("POST", "/_sim/faults", json={"routes": {"PUT /api/v0/asks/{id}": {"error_rate": 1, "times": 2}}})
    assert active["routes"] == {"PUT /api/v0/asks/{id}": {
        "latency_ms": 0.0, "error_rate": 1.0, "lose_answer": 0.0, "hold_s": 0.0, "times": 2}}
    for _ in range(2):
        r = sim.call("PUT", f"/api/v0/asks/{offer_id}/", json={"image": "x"})
        assert r.status_code == 503 and r.json()["error"] == "service_unavailable"
        sim.ok("GET", "/api/v1/instances/")  # other routes answer
    assert sim.ledger()["instances"] == []  # an injected error applies nothing
    assert sim.ok("GET", "/_sim/faults")["routes"] == {}
    sim.create(offer_id)
    assert len(sim.ledger()["instances"]) == 1
    assert sim.stats()["errors_injected"] == 2


def test_lost_answer_applies_the_call_then_answers_504(sim):
    _, offer_id = big_4090_host(sim)
    sim.ok("POST", "/_sim/faults", json={"routes": {CREATE: {"lose_answer": True, "times": 1}}})
    r = sim.call("PUT", f"/api/v0/asks/{offer_id}/", json={"image": "x", "label": "lost"})
    assert r.status_code == 504 and r.headers["Content-Type"].startswith("text/html")
    (row,) = sim.ledger()["instances"]
    assert row["label"] == "lost"  # the provider carried it out; the client never learned the id
    sim.create(offer_id, label="seen")
    assert sorted(i["label"] for i in sim.ledger()["instances"]) == ["lost", "seen"]
    assert sim.stats()["answers_lost"] == 1


def test_held_answer_is_applied_first_and_blocks_nobody_else(sim):
    machine_id, offer_id = big_4090_host(sim)
    inst_id = sim.create(offer_id)
    sim.ok("POST", "/_sim/faults", json={"routes": {"PUT /api/v0/instances/{id}/": {"hold_s": 2, "times": 1}}})
    answers = []

    def stop():  # its own connection: the test's session keeps serving the checks below
        answers.append(requests.put(f"{sim.base_url}/api/v0/instances/{inst_id}/", json={"state": "stopped"},
                                    headers=KEY, timeout=10))

    stopper = threading.Thread(target=stop)
    stopper.start()
    # while the stop's answer is held, the stop is already visible and other calls are served
    wait_until(lambda: sim.instance(inst_id)["intended_status"] == "stopped", timeout=5, interval=0.01,
               message="the held stop to be applied")
    assert sim.offers({"machine_id": {"eq": machine_id}})
    assert stopper.is_alive() and answers == []
    stopper.join(timeout=10)
    assert answers[0].status_code == 200 and answers[0].json() == {"success": True}
    assert sim.stats()["answers_held"] == 1


def test_route_latency_delays_only_its_route(sim):
    sim.ok("POST", "/_sim/faults", json={"routes": {"GET /api/v0/users/current": {"latency_ms": 200}}})
    started = time.monotonic()
    sim.ok("GET", "/api/v0/users/current")
    assert time.monotonic() - started >= 0.2
    assert sim.ok("GET", "/_sim/faults")["routes"]["GET /api/v0/users/current"]["times"] is None


def test_global_keys_and_routes_together_and_replace_semantics(sim):
    sim.ok("POST", "/_sim/faults", json={"error_rate": 1.0, "routes": {CREATE: {"lose_answer": 1}}})
    active = sim.ok("GET", "/_sim/faults")
    assert active["error_rate"] == 1.0 and CREATE.rstrip("/") in active["routes"]
    assert sim.call("GET", "/api/v0/users/current").status_code == 503
    assert sim.ok("POST", "/_sim/faults", json={}) == {
        "error_rate": 0.0, "rate_limit_rate": 0.0, "latency_ms": 0.0, "routes": {}}
    sim.ok("GET", "/api/v0/users/current")


def test_bad_fault_specs_are_400(sim):
    for body in ({"routes": {"PUT /api/v0/nowhere/": {"error_rate": 1}}},
                 {"routes": {CREATE: {"error_rate": 2}}},
                 {"routes": {CREATE: {"times": 0}}},
                 {"routes": {CREATE: {"times": 1.5}}},
                 {"routes": {CREATE: {"hold_s": -1}}},
                 {"routes": {CREATE: {"lose_answers": True}}},
                 {"routes": {CREATE: "often"}},
                 {"routes": [CREATE]},
                 {"eror_rate": 1}):
        r = sim.call("POST", "/_sim/faults", json=body)
        assert r.status_code == 400 and r.json()["error"] == "invalid_args", body
    assert sim.ok("GET", "/_sim/faults")["routes"] == {}
