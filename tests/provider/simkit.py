"""Helpers for the simulator's tests: a thin HTTP client bound to one simulator, and inventory picks."""

import time

import requests

from tests.conftest import wait_until

TIME_SCALE = 0.01
KEY = {"Authorization": "Bearer test-key"}


class Sim:
    """A thin HTTP helper bound to one simulator."""

    def __init__(self, base_url):
        self.base_url = base_url
        self.session = requests.Session()

    def call(self, method, path, auth=True, **kwargs):
        headers = dict(KEY) if auth else {}
        headers.update(kwargs.pop("headers", {}))
        return self.session.request(method, self.base_url + path, headers=headers, timeout=10, **kwargs)

    def ok(self, method, path, **kwargs):
        r = self.call(method, path, **kwargs)
        assert r.status_code == 200, (r.status_code, r.text)
        return r.json()

    def offers(self, query=None):
        return self.ok("POST", "/api/v0/bundles/", json=query or {})["offers"]

    def instance(self, inst_id):
        return self.ok("GET", f"/api/v0/instances/{inst_id}/")["instances"]

    def create(self, offer_id, **body):
        body = {"image": "pytorch/pytorch", "disk": 20.0, "label": "t", "runtype": "ssh", **body}
        return self.ok("PUT", f"/api/v0/asks/{offer_id}/", json=body)["new_contract"]

    def set_state(self, inst_id, state_name):
        return self.ok("PUT", f"/api/v0/instances/{inst_id}/", json={"state": state_name})

    def ledger(self):
        return self.ok("GET", "/_sim/ledger")

    def stats(self):
        return self.ok("GET", "/_sim/stats")

    def wait_status(self, inst_id, status, timeout=5.0):
        return wait_until(lambda: (row := self.instance(inst_id))["actual_status"] == status and row,
                          timeout=timeout, interval=0.01, message=f"instance {inst_id} to become {status}")


def holds_for(predicate, seconds):
    """Assert ``predicate`` stays truthy for ``seconds`` (used to show something does NOT happen)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert predicate()
        time.sleep(0.01)


def total_gpus(offer):
    return round(offer["num_gpus"] / offer["gpu_frac"])


def big_4090_host(sim, skip=()):
    """A verified RTX 4090 machine with 3+ GPUs, all free: (machine_id, 1-GPU offer id)."""
    for offer in sim.offers({"gpu_name": {"eq": "RTX 4090"}, "num_gpus": {"eq": 1}, "order": [["machine_id", "asc"]]}):
        if total_gpus(offer) >= 3 and offer["machine_id"] not in skip:
            return offer["machine_id"], offer["id"]
    raise AssertionError("no RTX 4090 host with 3+ GPUs")
