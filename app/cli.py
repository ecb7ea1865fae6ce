"""The ``warmpool`` command: the whole stack on one machine, the simulator alone, API keys."""

import contextlib
import secrets
from collections.abc import Iterator
from pathlib import Path

import click

from app import client, devstack

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


@contextlib.contextmanager
def service_store() -> Iterator:
    """The service's store for the key commands, which read Redis directly: a Redis that does not answer is
    one line and the client's "unreachable" exit code, naming the REDIS_URL it tried, never a traceback."""
    import redis

    from app import runtime

    try:
        yield runtime.store()
    except redis.RedisError as exc:
        raise client.Failure(f"cannot reach Redis at {devstack.shown(runtime.settings().redis_url)}: "
                             f"{type(exc).__name__}; set REDIS_URL to the service's (warmpool dev's banner "
                             "exports it)", client.UNREACHABLE) from None


@main.command("create-key")
@click.argument("tenant")
def create_key(tenant):
    """Create an API key for TENANT; only its hash is stored (in Redis at REDIS_URL)."""
    import re

    if not re.match(TENANT, tenant):
        raise click.BadParameter("letters, digits, '_' and '.', at most 64", param_hint="TENANT")
    key = secrets.token_urlsafe(32)
    with service_store() as store:
        store.add_api_key(tenant, key)
    click.echo(key)


@main.command("list-keys")
def list_keys():
    """The API keys that work, by id and tenant (the keys themselves are never stored)."""
    from app import runtime

    with service_store() as store:
        keys = store.api_keys(runtime.settings().api_keys)
    if not keys:
        click.echo(f"no keys in the Redis at {devstack.shown(runtime.settings().redis_url)}", err=True)
    for key in keys:
        click.echo(f"{key['id']}  {key['tenant']}  ({key['source']})")


@main.command("revoke-key")
@click.argument("key_id")
def revoke_key(key_id):
    """Revoke the key with KEY_ID (as list-keys shows it, or the key itself): it gets 401 from its next request.
    A key from WARMPOOL_API_KEYS is revoked too; take it out of the setting at the next deploy."""
    from app import runtime

    with service_store() as store:
        revoked = store.revoke_api_key(key_id, runtime.settings().api_keys)
    if revoked is None:  # the id is not echoed: a pasted key would be shown again
        raise click.ClickException("no single key has that id (or is that key): see warmpool list-keys")
    if revoked.get("already_revoked"):
        raise click.ClickException(f"the key {revoked['id']} is already revoked")
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
    devstack.run(devstack.Options(port=port, sim_port=sim_port, flower_port=flower_port, time_scale=time_scale,
                                  data_dir=data_dir, log_level=log_level))


if __name__ == "__main__":
    main()
