"""The warmpool command, run as a user runs it."""

import os
import subprocess
import sys

import pytest

from app.client import UNREACHABLE
from app.processes import free_port
from app.store import keys
from tests.conftest import ROOT


def warmpool(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**os.environ, **env})


def test_create_key_stores_only_its_hash(stack):
    done = warmpool("create-key", "initech")
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip()
    assert len(key) >= 32
    stored = stack.redis.hgetall(keys.API_KEYS)
    assert "initech" in stored.values() and not any(key in k or key in v for k, v in stored.items())
    rv = stack.client.get("/api/v1/warmpool/pools", headers={"Authorization": f"Bearer {key}"})
    assert rv.status_code == 200 and rv.json == {"pools": [], "count": 0, "cost_per_hour": 0.0}


def test_create_key_refuses_a_bad_tenant_name(stack):
    done = warmpool("create-key", "no spaces:or colons")
    assert done.returncode == 2 and "TENANT" in done.stderr


def test_a_revoked_key_gets_401_at_once(stack):
    key = warmpool("create-key", "umbrella").stdout.strip()
    pools = "/api/v1/warmpool/pools"
    assert stack.client.get(pools, headers={"Authorization": f"Bearer {key}"}).status_code == 200
    listed = warmpool("list-keys")
    assert listed.returncode == 0, listed.stderr
    line, = [line for line in listed.stdout.splitlines() if "umbrella" in line]
    assert key not in listed.stdout and "(created)" in line
    key_id = line.split()[0]
    done = warmpool("revoke-key", key_id)
    assert done.returncode == 0 and f"revoked {key_id} (umbrella)" in done.stdout, done.stderr
    rv = stack.client.get(pools, headers={"Authorization": f"Bearer {key}"})
    assert rv.status_code == 401 and rv.json["code"] == 401

    again = warmpool("revoke-key", key_id)
    assert again.returncode == 1 and f"the key {key_id} is already revoked" in again.stderr


@pytest.mark.parametrize("args", [("create-key", "initech"), ("list-keys",), ("revoke-key", "abcdef123456")])
def test_a_key_command_whose_redis_does_not_answer_says_so_in_one_line(args):
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    done = warmpool(*args, REDIS_URL=url)
    assert done.returncode == UNREACHABLE, done.stderr
    assert done.stderr.startswith(f"Error: cannot reach Redis at {url.replace('hunter2', '***')}: ConnectionError")
    assert "Traceback" not in done.stderr and "hunter2" not in done.stderr + done.stdout
