"""The warmpool command, run as a user runs it."""

import subprocess
import sys

from app.store import keys
from tests.conftest import ROOT


def warmpool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


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

