"""The official ``vastai`` CLI (PyPI, 1.9.1) works against the simulator.

Each command runs as a subprocess with ``VAST_URL`` pointing at a simulator on a free port and
an isolated HOME, and the tests assert on its ``--raw`` JSON and on the simulator's ledger.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from sim import start_in_thread
from tests.conftest import wait_until

VASTAI = shutil.which("vastai") or str(Path(sys.executable).with_name("vastai"))


@pytest.fixture(scope="module")
def sim_url():
    server, base_url = start_in_thread(time_scale=0.01, seed=0)
    yield base_url
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def cli_env(sim_url, tmp_path_factory):
    home = tmp_path_factory.mktemp("vastai-home")
    return {
        **os.environ, "VAST_URL": sim_url, "VASTAI_NO_UPDATE_CHECK": "1", "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / "config"), "XDG_CACHE_HOME": str(home / "cache"),
    }


@pytest.fixture
def http(sim_url):
    session = requests.Session()
    session.post(f"{sim_url}/_sim/reset", timeout=10).raise_for_status()
    yield lambda method, path, **kw: session.request(method, sim_url + path, timeout=10, **kw)
    session.close()


@pytest.fixture
def vastai(cli_env, http):
    def run(*args, raw=True):
        cmd = [VASTAI, *args, "--api-key", "cli-key"] + (["--raw"] if raw else [])
        done = subprocess.run(cmd, env=cli_env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr, done.stderr
        return json.loads(done.stdout) if raw and done.stdout.strip() else done
    return run


def ledger(http):
    return http("GET", "/_sim/ledger").json()


def test_search_offers_filtered_and_ordered(vastai):
    offers = vastai("search", "offers", "gpu_name=RTX_4090 num_gpus>=2 reliability>0.9", "-o", "dph+")
    assert len(offers) >= 20
    assert all(o["gpu_name"] == "RTX 4090" and o["num_gpus"] >= 2 and o["reliability"] > 0.9 for o in offers)
    assert all(o["verification"] == "verified" for o in offers)  # the CLI's default verified=true
    prices = [o["dph_total"] for o in offers]
    assert prices == sorted(prices)
    limited = vastai("search", "offers", "num_gpus=1 geolocation in [US,CA]", "-o", "dlperf-", "--limit", "3")
    assert len(limited) == 3 and all(o["geolocation"][-2:] in ("US", "CA") for o in limited)
    assert [o["dlperf"] for o in limited] == sorted((o["dlperf"] for o in limited), reverse=True)
    table = vastai("search", "offers", "gpu_name=RTX_4090", raw=False)
    assert "RTX_4090" in table.stdout and "invalid return Content-Type" not in table.stdout


def test_instance_lifecycle(vastai, http):
    (offer,) = vastai("search", "offers", "gpu_name=RTX_4090 num_gpus=1", "-o", "dph+", "--limit", "1")
    created = vastai("create", "instance", str(offer["id"]), "--image", "pytorch/pytorch", "--disk", "20",
                     "--label", "cli-primary", "--env", "-e FOO=bar -p 8080:8080", "--onstart-cmd", "echo hi",
                     "--create-volume", str(offer["avail_vol_ask_id"]), "--volume-size", "30",
                     "--mount-path", "/data", "--volume-label", "cli_vol")
    assert created["success"] is True
    inst_id = created["new_contract"]
    (row,) = ledger(http)["instances"]
    (volume,) = ledger(http)["volumes"]
    assert row["id"] == inst_id and row["label"] == "cli-primary" and row["machine_id"] == offer["machine_id"]
    assert row["volume_id"] == volume["id"] and volume["name"] == "cli_vol"

    wait_until(lambda: http("GET", f"/api/v0/instances/{inst_id}/", headers={"Authorization": "Bearer cli-key"})
             .json()["instances"]["actual_status"] == "running")
    shown = vastai("show", "instance", str(inst_id))
    assert shown["actual_status"] == "running" and shown["extra_env"] == {"FOO": "bar", "-p 8080:8080": "1"}
    listed = vastai("show", "instances")
    assert [i["id"] for i in listed] == [inst_id] and listed[0]["volume_info"][0]["id"] == volume["id"]

    out = vastai("stop", "instance", str(inst_id), raw=False)
    assert f"stopping instance {inst_id}" in out.stdout
    assert ledger(http)["instances"][0]["intended_status"] == "stopped"
    wait_until(lambda: ledger(http)["instances"][0]["actual_status"] == "stopped")

    out = vastai("start", "instance", str(inst_id), raw=False)
    assert f"starting instance {inst_id}" in out.stdout
    wait_until(lambda: ledger(http)["instances"][0]["actual_status"] == "running")

    vastai("destroy", "instance", str(inst_id), "-y")
    assert ledger(http)["instances"] == []
    assert vastai("show", "instance", str(inst_id)) == {"instances": None}
    stats = http("GET", "/_sim/stats").json()
    assert stats["instance_actions"][str(inst_id)] == {"stop": 1, "start": 1}
    assert stats["created_by_label"] == {"cli-primary": 1}


def test_volumes(vastai, http):
    offers = vastai("search", "volumes", "disk_space>100", "-o", "storage_cost+")
    assert offers and all(o["disk_space"] > 100 for o in offers)
    assert len({o["machine_id"] for o in offers}) == len(offers)
    offer = offers[0]
    created = vastai("create", "volume", str(offer["id"]), "-s", "25", "-n", "cli_data")
    assert created["success"] is True
    vid = int(created["volume_name"].removeprefix("V."))
    (shown,) = vastai("show", "volumes")
    assert shown["id"] == vid and shown["label"] == "cli_data" and shown["machine_id"] == offer["machine_id"]
    assert ledger(http)["volumes"][0]["id"] == vid
    assert vastai("delete", "volume", str(vid)) == {"success": True}
    assert ledger(http)["volumes"] == []
    assert vastai("show", "volumes") == []


def test_copy_and_clone_volumes(vastai, http):
    key = {"Authorization": "Bearer cli-key"}  # the CLI's account: the simulator shows each key its own
    offers = http("POST", "/api/v0/volumes/search/", json={"order": [["machine_id", "asc"]]}, headers=key).json()
    src_offer, dst_offer, replica_offer = (o["id"] for o in offers["offers"][:3])
    src, dst = (int(http("PUT", "/api/v0/volumes/", json={"id": offer, "size": 10},
                         headers=key).json()["volume_name"][2:]) for offer in (src_offer, dst_offer))
    http("POST", f"/_sim/volumes/{src}/write").raise_for_status()
    out = vastai("copy", f"V.{src}:/data", f"V.{dst}:/data", raw=False)
    assert "Remote to Remote copy initiated" in out.stdout
    replica = int(vastai("clone", "volume", str(src), str(replica_offer))["volume_name"][2:])

    def versions():
        return {v["id"]: (v["machine_id"], v["data_version"]) for v in ledger(http)["volumes"]}

    wait_until(lambda: versions()[dst][1] == versions()[replica][1] == 1, message="both copies to complete")
    assert versions()[replica][0] == replica_offer // 100


def test_errors_reach_the_cli_as_vast_messages(vastai):
    done = vastai("create", "instance", "777", "--image", "x", raw=False)
    assert "Failed with error 404" in done.stderr and "no_such_ask" in done.stderr
    done = vastai("delete", "volume", "123", raw=False)
    assert "Failed with error 404: Volume with that ID does not exist." in done.stderr
