"""Fixtures for the simulator's tests: one simulator over real HTTP per module, reset for each test."""

import pytest

from sim import start_in_thread
from tests.provider.simkit import TIME_SCALE, Sim


@pytest.fixture(scope="module")
def server():
    srv, base_url = start_in_thread(time_scale=TIME_SCALE, seed=0)
    yield base_url
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def sim(server):
    client = Sim(server)
    client.ok("POST", "/_sim/reset")
    yield client
    client.session.close()
