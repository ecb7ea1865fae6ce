"""The receivers the docs tell an operator to run (README's receiver.py, docs/operator-tools.md's repoint.py),
run as written, fed by the real sender (``tasks.webhooks.deliver``): what they print and write is what the docs
say, and a delivery signed with another secret changes nothing."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from app.processes import free_port, listening, wait_until
from app.store.webhooks import DELIVERED, FAILED
from tasks.webhooks import deliver
from tests.conftest import ROOT

FAILOVER = {"trigger": "notification", "recovery_time_seconds": 10.3, "new_primary_gpu_id": 10000005, "old_primary_gpu_id": 10000004, "primary_public_ipaddr": "205.230.51.246",
            "primary_ssh_host": "ssh7.vast.ai", "primary_ssh_port": 10005,
            "primary_ports": {"8080/tcp": [{"HostIp": "0.0.0.0", "HostPort": "52321"}]}}


def python_block(doc: str, first_line: str) -> str:
    """The ```python block of ``doc`` whose first line starts with ``first_line``."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / doc).read_text(), re.DOTALL)
    [block] = [b for b in blocks if b.startswith(first_line)]
    return block


class Example:
    """A doc's receiver, written to ``tmp_path`` with its port (and any other ``changes``) swapped, running."""

    def __init__(self, tmp_path: Path, source: str, secret: str, **changes: str):
        self.port = free_port()
        for old, new in {"9000": str(self.port), **changes}.items():
            assert old in source, old
            source = source.replace(old, new)
        script = tmp_path / "example.py"
        script.write_text(source)
        self.process = subprocess.Popen([sys.executable, str(script), secret], cwd=tmp_path, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        wait_until(lambda: listening(self.port), timeout=20, message="the example receiver")

    def output(self) -> str:
        self.process.terminate()
        return self.process.communicate(timeout=10)[0]


@pytest.fixture
def sender(env):
    env.configure(webhook_allow_private=True, webhook_retry_schedule=(0,), webhook_timeout=5)
    return env


def receiving(env, tmp_path: Path, doc: str, first_line: str, **changes: str) -> tuple[Example, dict]:
    """A doc's receiver, running with the secret of a webhook of tenant acme that points at it."""
    hook = env.store.add_webhook("acme", "http://127.0.0.1:1/", None)  # made first, for its secret
    receiver = Example(tmp_path, python_block(doc, first_line), hook["secret"], **changes)
    env.store.update_webhook("acme", hook["id"], lambda h: {**h, "url": f"http://127.0.0.1:{receiver.port}/"})
    return receiver, hook


def failover_delivery(env, hook: dict) -> str:
    env.store.event("acme:123", "failover_completed", "standby 10000005 promoted in 10.3 s", **FAILOVER)
    return next(d["id"] for d in env.store.deliveries(hook["id"]) if d["type"] == "failover.completed")


def test_the_readmes_receiver_prints_a_good_delivery_and_refuses_a_forged_one(sender, tmp_path):
    receiver, hook = receiving(sender, tmp_path, "README.md", "# receiver.py")
    assert deliver(failover_delivery(sender, hook), 1) == DELIVERED
    sender.store.update_webhook("acme", hook["id"], lambda h: {**h, "secret": "whsec_" + "A" * 32})  # not its
    sender.store.event("acme:123", "healed", "the host has a free GPU again")
    forged = next(d["id"] for d in sender.store.deliveries(hook["id"]) if d["type"] == "pool.healed")
    assert deliver(forged, 1) == FAILED  # verify raised: no answer
    assert receiver.output().splitlines() == ["receiver: failover.completed 123 standby 10000005 promoted in 10.3 s"]


def test_the_repoint_receiver_repoints_once_per_failover(sender, tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n10.0.0.9 primary-123\n")
    receiver, hook = receiving(sender, tmp_path, "docs/operator-tools.md", "# repoint.py",
                               **{'pathlib.Path("/etc/hosts")': f'pathlib.Path("{hosts}")', '"0.0.0.0"': '"127.0.0.1"'})
    delivery = failover_delivery(sender, hook)
    assert deliver(delivery, 1) == DELIVERED
    sender.store.resend_delivery("acme", delivery, 100)  # the same webhook-id again: applied once
    assert deliver(delivery, 2) == DELIVERED
    assert hosts.read_text() == "127.0.0.1 localhost\n205.230.51.246 primary-123\n"
    assert (tmp_path / "upstream-123").read_text() == "205.230.51.246:52321\n"
    assert receiver.output().count("repointed primary-123 to 205.230.51.246") == 1


@pytest.mark.parametrize("shell, says", [("bash", "_warmpool_completion()"), ("zsh", "#compdef warmpool"),
                                         ("fish", "complete --no-files --command warmpool")])
def test_the_documented_completion_scripts_come_out_and_complete_the_output_choices(shell, says):
    documented = (ROOT / "docs/operator-tools.md").read_text()
    assert f"_WARMPOOL_COMPLETE={shell}_source warmpool" in documented
    warmpool = str(Path(sys.executable).parent / "warmpool")  # the entry point make setup installs
    script = subprocess.run([warmpool], env={"_WARMPOOL_COMPLETE": f"{shell}_source", "PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True, timeout=60)
    assert script.returncode == 0 and says in script.stdout, script.stderr
    if shell == "bash":
        choices = subprocess.run([warmpool], capture_output=True, text=True, timeout=60, env={
            "_WARMPOOL_COMPLETE": "bash_complete", "COMP_WORDS": "warmpool pools -o ", "COMP_CWORD": "3"})
        assert choices.stdout.split() == ["plain,table", "plain,json", "plain,yaml", "plain,tsv"]
