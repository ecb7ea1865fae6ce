"""The ``warmpool`` client (issue 12) as an operator runs it: a process against the API under gunicorn,
with the stack's worker doing the work. Exit codes, tables, --json and --wait's progress."""

import json
import os
import pty
import re
import signal
import subprocess
import sys
import threading
import time
from importlib import metadata

import pytest
import yaml

from app.client import BAD_KEY, FAILED, NOT_CONFIRMED, NOT_FOUND, OK, STILL_RUNNING, UNREACHABLE, USAGE
from app.pools import iso_at
from app.processes import free_port, wait_until
from tests.conftest import API_KEYS, ROOT

MACHINE = 321
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def warmpool(web, *args: str, key: str | None = API_KEYS["acme"], url: str | None = None,
             **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "WARMPOOL_URL": url or web.url, **env}
    environment.pop("WARMPOOL_API_KEY", None)
    if key:
        environment["WARMPOOL_API_KEY"] = key
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


class Terminal:
    """``warmpool ARGS`` on a pseudo-terminal, its output read as it comes."""

    def __init__(self, web, *args: str):
        controller, terminal = pty.openpty()
        env = {**os.environ, "WARMPOOL_URL": web.url, "WARMPOOL_API_KEY": API_KEYS["acme"], "TERM": "xterm",
               "COLUMNS": "120"}
        self.process = subprocess.Popen([sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=env,
                                        stdin=terminal, stdout=terminal, stderr=terminal)
        os.close(terminal)
        self.controller, self.output = controller, b""
        self.reader = threading.Thread(target=self._read, args=(controller,), daemon=True)
        self.reader.start()

    def _read(self, controller: int) -> None:
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the terminal closed: the process ended
                break
            if not chunk:
                break
            self.output += chunk
        os.close(controller)

    def type(self, keys: str) -> None:
        os.write(self.controller, keys.encode())

    @property
    def text(self) -> str:
        return ANSI.sub("", self.output.decode(errors="replace"))

    def end(self) -> int:
        code = self.process.wait(timeout=60)
        self.reader.join(timeout=10)
        return code


def test_help_documents_every_exit_code(web):
    for args in (["--help"], ["failover", "--help"], ["pools", "--help"]):
        out = warmpool(web, *args).stdout
        assert "Exit codes:" in out, args
        for code in (OK, FAILED, USAGE, NOT_FOUND, BAD_KEY, UNREACHABLE, STILL_RUNNING, NOT_CONFIRMED):
            assert re.search(rf"^\s+{code}\s+\S", out, re.M), (args, code)
    assert len({OK, FAILED, USAGE, NOT_FOUND, BAD_KEY, UNREACHABLE, STILL_RUNNING, NOT_CONFIRMED}) == 8


@pytest.mark.parametrize("args", [["status", "abc"], ["status", "0"], ["provision", "5"], ["pools", "--bogus"],
                                  ["failover"], ["task"]])
def test_usage_errors_exit_2(web, args):
    assert warmpool(web, *args).returncode == USAGE


def test_errors_say_what_happened(clean_stack, web):
    rv = warmpool(web, "pools", key="wrong-key")
    assert rv.returncode == BAD_KEY and "invalid API key" in rv.stderr and "wrong-key" not in rv.stderr
    assert warmpool(web, "pools", key=None).returncode == BAD_KEY
    rv = warmpool(web, "status", "999999")
    assert rv.returncode == NOT_FOUND and "No warm pool for machine 999999" in rv.stderr
    assert warmpool(web, "task", "f" * 32).returncode == NOT_FOUND
    rv = warmpool(web, "pools", url=f"http://127.0.0.1:{free_port()}")
    assert rv.returncode == UNREACHABLE and "cannot reach warmpool" in rv.stderr
    # a task that never runs (nothing enqueued it): --wait gives up after --timeout
    task_id = clean_stack.store.new_op("acme", 5, "provision")
    rv = warmpool(web, "task", task_id, "--wait", "--timeout", "1")
    assert rv.returncode == STILL_RUNNING and f"warmpool task {task_id} --wait" in rv.stderr


@pytest.mark.timeout(120)
def test_an_operator_session(clean_stack, web, tmp_path):
    hosts = json.loads(warmpool(web, "hosts", "--json").stdout)["hosts"]
    host = next(h for h in hosts if h["can_create_warm_pool"])
    table = warmpool(web, "hosts")
    assert table.returncode == OK and str(host["machine_id"]) in table.stdout and host["gpu_name"] in table.stdout

    # lifecycle hooks: a start script and an environment for every instance, one of its names a secret's
    script = tmp_path / "onstart.sh"
    script.write_text("python /workspace/warm_cache.py\n")
    rv = warmpool(web, "provision", str(MACHINE), "--host", str(host["machine_id"]), "--wait", "--onstart",
                  str(script), "--env", "MODEL=llama", "--env", "HF_TOKEN=hf_s3cret", "--env", "-p 8080:8080=1")
    assert rv.returncode == OK, rv.stderr
    assert "provision 321: " in rv.stderr  # a line a step: stderr is no terminal here
    assert re.search(r"state\s.*SUCCESS", rv.stdout)
    clean_stack.wait_state(MACHINE, "active")

    pools = json.loads(warmpool(web, "pools", "--json").stdout)
    assert [p["machine_id"] for p in pools["pools"]] == [MACHINE] and pools["pools"][0]["state"] == "active"
    shown = pools["pools"][0]
    assert shown["env"] == {"MODEL": "llama", "HF_TOKEN": "***", "-p 8080:8080": "1"}  # the secret is not shown
    assert shown["onstart"] == "python /workspace/warm_cache.py\n" and "hf_s3cret" not in status_json(web)
    created = {row["id"]: row for row in clean_stack.ledger()["instances"]}
    for role in ("primary", "standby"):  # what every instance was created with
        row = created[shown[role + "_gpu_id"]]
        assert row["onstart"] == shown["onstart"] and row["env"]["HF_TOKEN"] == "hf_s3cret"
    # the cost, from the prices Vast lists: the running primary's is its dph_total
    cost = shown["cost_per_hour"]
    assert cost["complete"] and cost["primary"] == created[shown["primary_gpu_id"]]["dph_total"]
    assert 0 < cost["standby_storage"] < cost["primary"] and cost["volume"] > 0 and cost["replica"] == 0
    assert pools["cost_per_hour"] == cost["total"] == round(sum(cost[part] for part in (
        "primary", "standby_storage", "volume", "replica")), 4)
    as_yaml = yaml.safe_load(warmpool(web, "pools", "-o", "yaml").stdout)
    assert as_yaml["count"] == 1 and as_yaml["pools"][0].keys() == pools["pools"][0].keys()
    assert (as_yaml["pools"][0]["machine_id"], as_yaml["pools"][0]["state"]) == (MACHINE, "active")
    header, row = warmpool(web, "pools", "-o", "tsv").stdout.splitlines()
    assert header.split("\t")[:3] == ["machine", "state", "host"] and "$/h" in header.split("\t")
    assert row.split("\t")[:3] == [str(MACHINE), "active", str(pools["pools"][0]["host_machine_id"])]
    status = warmpool(web, "status", str(MACHINE))
    assert status.returncode == OK and re.search(r"state\s.*active", status.stdout)

    before = json.loads(status_json(web))
    rv = warmpool(web, "failover", str(MACHINE), "--wait")
    assert rv.returncode == OK, rv.stderr
    assert "Failover test completed" in rv.stdout and "failover phases" in rv.stdout
    assert "start_standby" in rv.stdout
    pool = clean_stack.wait_state(MACHINE, "active")
    assert str(pool["primary_gpu_id"]) in rv.stdout  # the new primary
    events = warmpool(web, "events", str(MACHINE))
    assert events.returncode == OK and "failover_completed" in events.stdout
    scripted_status_and_events(web, pool)
    # events watched on a terminal: redrawn in place, at least twice after the first frame
    watch = Terminal(web, "events", str(MACHINE), "--watch", "0.2")
    wait_until(lambda: watch.text.count("Ctrl-C to stop") >= 3, timeout=30, message="the events watch to redraw")
    watch.process.send_signal(signal.SIGINT)
    assert watch.end() == OK and "failover_completed" in watch.text and "Traceback" not in watch.text
    redrawn = watch.output.decode(errors="replace")
    assert "\x1b[1A\x1b[2K" in redrawn or "\x1b[2K\x1b[1A" in redrawn
    reach_the_new_primary(web, tmp_path, before)
    switch_over(clean_stack, web)
    # disabled, then enabled keeping its instances: the enable's hooks are the pool's from then on
    rv = warmpool(web, "disable", str(MACHINE), "--wait")
    assert rv.returncode == OK and clean_stack.wait_state(MACHINE, "disabled"), rv.stderr
    rv = warmpool(web, "enable", str(MACHINE), "--env", "MODEL=mistral")
    assert rv.returncode == OK and "enabled" in rv.stdout, rv.stderr
    shown = json.loads(status_json(web))
    assert (shown["state"], shown["env"], shown["onstart"]) == ("active", {"MODEL": "mistral"},
                                                                "python /workspace/warm_cache.py\n")

    # not confirmed, nothing is destroyed: on no terminal, cleanup wants --yes
    rv = warmpool(web, "cleanup", str(MACHINE))
    assert rv.returncode == NOT_CONFIRMED and "--yes" in rv.stderr
    assert clean_stack.pool(MACHINE)["state"] == "active"
    # watched on a terminal, the status is redrawn in place as the cleanup goes on
    watch = Terminal(web, "status", str(MACHINE), "--watch", "0.3")
    wait_until(lambda: re.search(r"state\s.*active", watch.text), timeout=30, message="the watch to show the pool")
    # without --wait: the task id, to follow later
    rv = warmpool(web, "cleanup", str(MACHINE), "--yes")
    assert rv.returncode == OK and "follow it with: warmpool task" in rv.stdout
    task_id = re.search(r"warmpool task ([0-9a-f]{32})", rv.stdout).group(1)
    task = json.loads(warmpool(web, "task", task_id, "--wait", "--json").stdout)
    assert task["state"] == "SUCCESS" and task["operation"] == "cleanup"
    assert warmpool(web, "pools").stdout.count("disabled") == 1
    wait_until(lambda: re.search(r"state\s.*disabled", watch.text), timeout=30, message="the watch to redraw")
    watch.process.send_signal(signal.SIGINT)
    assert watch.end() == OK  # Ctrl-C ends a watch
    redrawn = watch.output.decode(errors="replace")
    assert "\x1b[1A\x1b[2K" in redrawn or "\x1b[2K\x1b[1A" in redrawn  # rich's Live: up a line, erase it
    assert watch.text.count("machine 321") >= 2

    # refused by the service (409): the operation did not happen
    rv = warmpool(web, "failover", str(MACHINE))
    assert rv.returncode == FAILED and "Cannot test failover in state disabled" in rv.stderr


def scripted_status_and_events(web, pool: dict) -> None:
    """``status`` and ``events`` with ``-o yaml`` (the API's body) and ``-o tsv`` (the table, a line a row)."""
    status = yaml.safe_load(warmpool(web, "status", str(MACHINE), "-o", "yaml").stdout)
    assert (status["machine_id"], status["state"], status["primary_gpu_id"]) == (MACHINE, "active",
                                                                              pool["primary_gpu_id"])
    assert status["cost_per_hour"]["total"] > 0 and status["env"]["HF_TOKEN"] == "***"
    header, *rows = warmpool(web, "status", str(MACHINE), "-o", "tsv").stdout.splitlines()
    fields = dict(row.split("\t", 1) for row in rows)
    assert header == "field\tvalue" and fields["state"] == "active"
    assert fields["primary_gpu_id"] == str(pool["primary_gpu_id"]) and fields["cost_per_hour.total"]
    events = yaml.safe_load(warmpool(web, "events", str(MACHINE), "-o", "yaml").stdout)
    assert events["machine_id"] == MACHINE and "failover_completed" in [e["event"] for e in events["events"]]
    header, *rows = warmpool(web, "events", str(MACHINE), "-o", "tsv").stdout.splitlines()
    assert header == "at\tevent\tmessage" and len(rows) >= len(events["events"])  # newer ones may have come
    assert all(len(row.split("\t")) == 3 for row in rows)
    assert "failover_completed" in [row.split("\t")[1] for row in rows]


def status_json(web) -> str:
    return web.api("GET", f"/api/v1/warmpool/status/{MACHINE}").text


def reach_the_new_primary(web, tmp_path, before: dict) -> None:
    """After a failover the primary's port map is new; the failover's event, ``warmpool url`` and ``warmpool ssh``
    (a fake ssh on the PATH that records its arguments) all give the new one."""
    now = json.loads(status_json(web))
    assert now["primary_ports"]["22/tcp"] != before["primary_ports"]["22/tcp"]
    address = now["primary_public_ipaddr"], now["primary_ports"]["22/tcp"][0]["HostPort"]
    completed = next(e for e in web.api("GET", f"/api/v1/warmpool/events/{MACHINE}").json()["events"]
                     if e["event"] == "failover_completed")
    assert (completed["primary_public_ipaddr"], completed["primary_ports"], completed["primary_ssh_port"]) == (
        now["primary_public_ipaddr"], now["primary_ports"], now["primary_ssh_port"])
    rv = warmpool(web, "url", str(MACHINE), "22")
    assert (rv.returncode, rv.stdout.strip()) == (OK, "%s:%s" % address)
    rv = warmpool(web, "url", str(MACHINE), "8080")  # the port the pool's env asked for, on the new primary
    assert (rv.returncode, rv.stdout.strip()) == (OK, "%s:%s" % (now["primary_public_ipaddr"],
                                                                 now["primary_ports"]["8080/tcp"][0]["HostPort"]))
    rv = warmpool(web, "url", str(MACHINE), "9090")
    assert rv.returncode == NOT_FOUND and "9090/tcp" in rv.stderr and "8080/tcp" in rv.stderr
    recorded = tmp_path / "ssh-args"
    fake = tmp_path / "bin" / "ssh"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {recorded}\nexit 7\n')
    fake.chmod(0o755)
    rv = warmpool(web, "ssh", str(MACHINE), "--", "-L", "8080:localhost:8080", "nvidia-smi",
                  PATH=f"{fake.parent}:{os.environ['PATH']}")
    assert rv.returncode == 7, rv.stderr  # ssh's own exit code
    assert recorded.read_text().split("\n")[:-1] == [
        "-p", address[1], f"root@{address[0]}", "-L", "8080:localhost:8080", "nvidia-smi"]


def test_cleanup_on_a_terminal_asks_first(web):
    terminal = Terminal(web, "cleanup", "654")  # the question comes before any call: no pool is needed
    wait_until(lambda: "[y/N]" in terminal.text, timeout=30, message="the question")
    terminal.type("n\n")
    assert terminal.end() == NOT_CONFIRMED
    assert "destroy machine 654's instances and volume?" in terminal.text and "nothing was destroyed" in terminal.text
    ended = Terminal(web, "cleanup", "654")
    wait_until(lambda: "[y/N]" in ended.text, timeout=30, message="the question")
    ended.type("\x04")  # Ctrl-D: end of input is a no, not click's "Aborted!" (exit 1)
    assert ended.end() == NOT_CONFIRMED and "nothing was destroyed" in ended.text


def test_a_watch_stopped_by_sigterm_ends_as_ctrl_c_does(web):
    watch = Terminal(web, "pools", "--watch", "0.3")
    wait_until(lambda: "Ctrl-C to stop" in watch.text, timeout=30, message="the watch to show the pools")
    assert "\x1b[?25l" in watch.output.decode()  # rich's Live hid the cursor
    watch.process.send_signal(signal.SIGTERM)  # as `timeout` stops it
    assert watch.end() == OK
    assert watch.output.decode().rstrip().endswith("\x1b[?25h") and "Traceback" not in watch.text  # shown again


def test_version_and_a_profile(web, tmp_path):
    # the URL, the key and the output from the profile; the environment gives neither URL nor key
    config = tmp_path / "warmpool" / "config.toml"
    config.parent.mkdir()
    config.write_text(f'default = "local"\n[profiles.local]\nurl = "{web.url}"\nkey = "{API_KEYS["acme"]}"\n'
                      f'output = "json"\n[profiles.elsewhere]\nurl = "http://127.0.0.1:{free_port()}"\n')
    config.chmod(0o600)
    environment = {name: value for name, value in os.environ.items()
                   if name not in ("WARMPOOL_URL", "WARMPOOL_API_KEY", "WARMPOOL_PROFILE")}
    rv = subprocess.run([sys.executable, "-m", "app.cli", "version"], cwd=ROOT, capture_output=True, text=True,
                        timeout=60, env={**environment, "XDG_CONFIG_HOME": str(tmp_path)})
    assert rv.returncode == OK, rv.stderr
    mine = metadata.version("warmpool")
    answer = json.loads(rv.stdout)
    assert answer["client"]["version"] == answer["server"]["version"] == mine and answer["server"]["python_version"]
    # WARMPOOL_PROFILE picks another (a URL where nothing listens); --profile beats it, and must exist
    elsewhere = {**environment, "XDG_CONFIG_HOME": str(tmp_path), "WARMPOOL_PROFILE": "elsewhere"}
    rv = subprocess.run([sys.executable, "-m", "app.cli", "pools"], cwd=ROOT, capture_output=True, text=True,
                        timeout=60, env=elsewhere)
    assert rv.returncode == UNREACHABLE and "cannot reach warmpool at http://127.0.0.1:" in rv.stderr
    rv = subprocess.run([sys.executable, "-m", "app.cli", "pools", "--profile", "nowhere"], cwd=ROOT,
                        capture_output=True, text=True, timeout=60, env=elsewhere)
    assert rv.returncode == USAGE and "no profile 'nowhere'" in rv.stderr and "local, elsewhere" in rv.stderr


def switch_over(stack, web) -> None:
    """A switchover planned for later shows in the status and can be cancelled; one planned for now runs as a
    failover with trigger ``switchover``."""
    rv = warmpool(web, "switchover", str(MACHINE), "--at", "2099-01-01T00:00:00Z")
    assert rv.returncode == USAGE and "days ahead" in rv.stderr  # the service's 422, named
    rv = warmpool(web, "switchover", str(MACHINE), "--at", iso_at(time.time() + 3600), "-o", "json")
    assert rv.returncode == OK and json.loads(rv.stdout)["status"]["scheduled_switchover"]["at"]
    rv = warmpool(web, "switchover", str(MACHINE), "--cancel")
    assert rv.returncode == OK and "cancelled" in rv.stdout
    assert json.loads(status_json(web))["scheduled_switchover"] is None
    primary = stack.pool(MACHINE)["primary_gpu_id"]
    assert warmpool(web, "switchover", str(MACHINE)).returncode == OK  # at once: within a health-check interval

    def switched():
        return next((e for e in stack.store.events(f"acme:{MACHINE}")
                     if e["event"] == "failover_completed" and e["trigger"] == "switchover"), None)

    completed = wait_until(switched, timeout=60, message="the switchover")
    assert completed["old_primary_gpu_id"] == primary and {"fence_old_primary", "start_standby"} <= set(
        completed["phases"])
    assert stack.wait_state(MACHINE, "active")["primary_gpu_id"] == completed["new_primary_gpu_id"]


@pytest.mark.timeout(120)
def test_a_failed_operation_exits_1(clean_stack, web):
    rv = warmpool(web, "provision", "77", "--host", "1", "--wait")  # no such host in the simulator
    assert rv.returncode == FAILED, (rv.stdout, rv.stderr)
    assert re.search(r"state\s.*FAILURE", rv.stdout)


@pytest.mark.timeout(120)
def test_wait_on_a_terminal_shows_the_step_and_the_time(clean_stack, web):
    hosts = json.loads(warmpool(web, "hosts", "--json").stdout)["hosts"]
    host = next(h for h in hosts if h["can_create_warm_pool"])
    terminal = Terminal(web, "provision", str(MACHINE), "--host", str(host["machine_id"]), "--wait")
    assert terminal.end() == OK
    text = terminal.text
    assert re.search(r"provision 321: \w+ \((PENDING|STARTED)\)\s+0:00:\d\d", text), text
    assert "SUCCESS" in text
