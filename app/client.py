"""The operator client: ``warmpool pools``, ``warmpool failover 123 --wait`` and the rest, against a running API.

Each command is one API call (two with ``--wait``: the operation, then its task
until it ends). Tables go to stdout; progress and errors go to stderr, so
``-o json|yaml|tsv`` output can be piped as it is. Exit codes say what happened (EXIT_CODES).
The URL, key and output may come from a profile of ``~/.config/warmpool/config.toml``
(``--profile``, ``WARMPOOL_PROFILE``), like kubeconfig's contexts.
"""

import functools
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from importlib import metadata
from pathlib import Path

import click
import requests
import yaml
from rich.console import Console, Group
from rich.live import Live
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

OK, FAILED, USAGE, NOT_FOUND, BAD_KEY, UNREACHABLE, STILL_RUNNING, NOT_CONFIRMED = 0, 1, 2, 3, 4, 5, 6, 7
EXIT_CODES = f"""\b
Exit codes:
  {OK}  success
  {FAILED}  the operation failed, or the service refused it (409)
  {USAGE}  usage error (a bad option or argument; the service's 422)
  {NOT_FOUND}  not found (no such pool, task or route)
  {BAD_KEY}  bad or missing API key (401)
  {UNREACHABLE}  service unreachable or unavailable (no answer, 5xx)
  {STILL_RUNNING}  --wait gave up after --timeout; the operation goes on
  {NOT_CONFIRMED}  a destructive command was not confirmed (stdin is no terminal: pass --yes)
"""
ENDED = ("SUCCESS", "FAILURE")
POLL_SECONDS = 0.5
DEFAULT_URL = "http://127.0.0.1:8000"
FORMATS = ("table", "json", "yaml", "tsv")
PROFILE_FIELDS = {"url", "key", "output"}
WATCH_SECONDS = 2.0
PHASES = ("detect", "lock", "fence_old_primary", "start_standby", "promote", "replace_standby")  # in time order


class Failure(click.ClickException):
    """An error that ends the command with its own exit code."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click declares a class's; an instance's is read first


class Api:
    """The warmpool API at ``url``, called with ``key``."""

    def __init__(self, url: str, key: str | None):
        self.url = url.rstrip("/")
        self.session = requests.Session()
        if key:
            self.session.headers["Authorization"] = f"Bearer {key}"

    def call(self, method: str, path: str, under: str = "/api/v1", **kwargs) -> dict:
        try:
            response = self.session.request(method, f"{self.url}{under}{path}", timeout=(5, 150), **kwargs)
        except requests.RequestException as exc:
            raise Failure(f"cannot reach warmpool at {self.url}: {type(exc).__name__}", UNREACHABLE) from None
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.ok:
            return body
        message = body.get("message") or f"HTTP {response.status_code}"
        if body.get("errors"):
            message += ": " + json.dumps(body["errors"])
        code = {401: BAD_KEY, 403: BAD_KEY, 404: NOT_FOUND, 409: FAILED, 422: USAGE}.get(response.status_code)
        raise Failure(message, code or (UNREACHABLE if response.status_code >= 500 else FAILED))


class Output:
    """Where results go, on stdout: tables (``table``, or ``tsv`` for scripts), or the API's body as it came
    (``json``, ``yaml``)."""

    def __init__(self, output: str = "table"):
        self.output = output
        self.as_json = output in ("json", "yaml")  # the API's body rather than tables (the name of --json's days)
        # a pipe has no width: give tables room rather than wrap every cell at 80 columns
        self.console = Console(width=shutil.get_terminal_size((160, 24)).columns, highlight=False)
        self.progress_console = Console(stderr=True, highlight=False)
        self.frame: list | None = None  # while a watch redraws in place: what this round shows

    def json(self, body: dict) -> None:
        """The API's body, as JSON or YAML."""
        click.echo(json.dumps(body, indent=2) if self.output == "json" else
                   yaml.safe_dump(body, sort_keys=False, allow_unicode=True).rstrip("\n"))

    def show(self, renderable) -> None:
        if self.frame is None:
            self.console.print(renderable)
        else:
            self.frame.append(renderable)

    def table(self, columns: list[str], rows: list[list], title: str | None = None) -> None:
        if self.output == "tsv":  # a header line, then a line a row; no title, no "—"
            for cells in [columns, *rows]:
                click.echo("\t".join("" if c is None else " ".join(str(c).split()) for c in cells))
            return
        table = Table(title=title, title_justify="left", header_style="bold")
        for index, column in enumerate(columns):
            cells = [row[index] for row in rows if row[index] is not None]
            numeric = cells and all(isinstance(cell, (int, float)) for cell in cells)
            table.add_column(column, justify="right" if numeric else "left")
        for row in rows:
            table.add_row(*("—" if cell is None else str(cell) for cell in row))
        self.show(table)

    def fields(self, record: dict, title: str | None = None) -> None:
        """One record, a field a line."""
        self.table(["field", "value"], [[name, value] for name, value in record.items()
                                        if not isinstance(value, (dict, list))], title)

    def phases(self, phases: dict, title: str) -> None:
        """A failover's phases in the order they happen."""
        names = sorted(phases, key=lambda name: PHASES.index(name) if name in PHASES else len(PHASES))
        self.table(["phase", "seconds"], [[name, phases[name]] for name in names], title)

    def line(self, text: str) -> None:
        self.console.print(text, markup=False)


def config_path() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "warmpool" / "config.toml"


def load_profile(name: str | None) -> dict:
    """The profile ``name`` of config.toml (``[profiles.<name>]``: url, key, output), else the one its top-level
    ``default`` names, else none ({}). A profile asked for by name must exist."""
    path = config_path()
    try:
        config = tomllib.loads(path.read_text())
    except FileNotFoundError:
        if name:
            raise click.UsageError(f"no profile {name!r}: {path} does not exist") from None
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise click.UsageError(f"{path}: {exc}") from None
    name = name or config.get("default")
    if name is None:
        return {}
    profiles = config.get("profiles")
    if not isinstance(profiles, dict):
        profiles = {}
    profile = profiles.get(name)
    if not isinstance(profile, dict):
        raise click.UsageError(f"no profile {name!r} in {path} (profiles: {', '.join(profiles) or 'none'})")
    if unknown := set(profile) - PROFILE_FIELDS:
        raise click.UsageError(f"profile {name!r} in {path}: unknown field(s) {', '.join(sorted(unknown))}; "
                               f"a profile has {', '.join(sorted(PROFILE_FIELDS))}")
    if profile.get("output", "table") not in FORMATS:
        raise click.UsageError(f"profile {name!r} in {path}: output must be one of {', '.join(FORMATS)}")
    if "key" in profile and path.stat().st_mode & 0o077:
        click.echo(f"warning: {path} holds an API key and others may read it: chmod 600 it", err=True)
    return profile


def client_command(name: str | None = None, waits: bool = False):
    """A client command: --url, --key, --profile, -o/--output and --json (and, for operations, --wait and
    --timeout). An option or its env variable beats the profile, which beats the default."""

    def decorate(function):
        @functools.wraps(function)
        def command(url, key, profile, output, as_json, **kwargs):
            chosen = load_profile(profile)
            output = "json" if as_json else output or chosen.get("output") or "table"
            return function(Api(url or chosen.get("url") or DEFAULT_URL, key or chosen.get("key")), Output(output),
                            **kwargs)

        options = [
            click.option("--url", envvar="WARMPOOL_URL",
                         help=f"the warmpool service (env WARMPOOL_URL; default {DEFAULT_URL})"),
            click.option("--key", envvar="WARMPOOL_API_KEY", help="the API key (env WARMPOOL_API_KEY)"),
            click.option("--profile", envvar="WARMPOOL_PROFILE",
                         help="a profile of ~/.config/warmpool/config.toml (env WARMPOOL_PROFILE)"),
            click.option("-o", "--output", type=click.Choice(FORMATS),
                         help="table (default), or json, yaml (the API's body) or tsv (the table, for scripts)"),
            click.option("--json", "as_json", is_flag=True, help="short for -o json"),
        ]
        if waits:
            options += [
                click.option("--wait", is_flag=True, help="follow the operation's task until it ends"),
                click.option("--timeout", type=click.FloatRange(min=1), default=600, show_default=True,
                             help="with --wait: seconds to follow it before giving up (exit 6)"),
            ]
        for option in reversed(options):
            command = option(command)
        return click.command(name, epilog=EXIT_CODES)(command)

    return decorate


MACHINE_ID = click.IntRange(1, 2**53 - 1)


def watchable(function):
    """-w/--watch [SECONDS]: show the command's answer again every SECONDS until Ctrl-C."""

    @functools.wraps(function)
    def command(api, out, watch, **kwargs):
        if watch is None:
            return function(api, out, **kwargs)
        # SIGTERM (`timeout`, a service manager) ends it as Ctrl-C does: rich's Live shows the cursor again
        previous = signal.signal(signal.SIGTERM, interrupt)
        try:
            redraw(lambda: function(api, out, **kwargs), out, watch)
        except KeyboardInterrupt:
            pass  # Ctrl-C ends a watch; what it showed last stays on the screen
        finally:
            signal.signal(signal.SIGTERM, previous)

    return click.option("-w", "--watch", type=click.FloatRange(min=0.2), is_flag=False, flag_value=WATCH_SECONDS,
                        default=None, metavar="[SECONDS]",
                        help=f"show it again every SECONDS (default {WATCH_SECONDS:g}) until Ctrl-C; a table on a "
                             "terminal is redrawn in place")(command)


def interrupt(*_) -> None:
    raise KeyboardInterrupt


def redraw(show, out: Output, seconds: float) -> None:
    """A table on a terminal is redrawn in place (rich's Live); anything else is printed again each round, so a
    pipe gets one snapshot after another."""
    if out.output != "table" or not out.console.is_terminal:
        while True:
            show()
            time.sleep(seconds)
    # "visible": a status taller than the terminal scrolls rather than lose its last lines
    with Live(console=out.console, auto_refresh=False, vertical_overflow="visible") as screen:
        while True:
            out.frame = [Text(f"every {seconds:g} s · {time.strftime('%H:%M:%S')} · Ctrl-C to stop", style="dim")]
            try:
                show()
                screen.update(Group(*out.frame), refresh=True)
            finally:
                out.frame = None
            time.sleep(seconds)


def follow(api: Api, out: Output, task_id: str, timeout: float) -> dict:
    """Poll the task until it ends: a live step and elapsed time on a terminal, a line a step otherwise."""
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    console = out.progress_console
    last_step = None
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                  transient=True, disable=not console.is_terminal) as progress:
        bar = progress.add_task("queued", total=None)
        while True:
            task = api.call("GET", f"/tasks/{task_id}")
            description = f"{task['operation']} {task['machine_id']}: {task['step']} ({task['state']})"
            progress.update(bar, description=description)
            if not console.is_terminal and task["step"] != last_step:
                click.echo(f"{time.monotonic() - started:6.1f}s  {description}", err=True)
            last_step = task["step"]
            if task["state"] in ENDED:
                return task
            if time.monotonic() > deadline:
                raise Failure(f"task {task_id} still {task['state']} at step {task['step']} after {timeout:.0f} s; "
                              f"follow it with: warmpool task {task_id} --wait", STILL_RUNNING)
            time.sleep(POLL_SECONDS)


def report_task(out: Output, task: dict) -> None:
    """Print an operation's task and exit 1 if it failed."""
    result = task.get("result") or {}
    failed = task["state"] == "FAILURE" or result.get("success") is False
    if out.as_json:
        out.json(task)
    else:
        shown = {"task_id": task["task_id"], "operation": task["operation"], "machine_id": task["machine_id"],
                 "state": task["state"], "step": task["step"], "message": result.get("message"),
                 "error": task.get("error"), "recovery_time_seconds": result.get("recovery_time_seconds"),
                 "new_primary_gpu_id": result.get("new_primary_gpu_id"),
                 "created_at": task.get("created_at"), "updated_at": task.get("updated_at")}
        out.fields({name: value for name, value in shown.items() if value is not None})
        if result.get("phases"):
            out.phases(result["phases"], "failover phases")
    if failed:
        raise SystemExit(FAILED)


def operation(api: Api, out: Output, body: dict, wait: bool, timeout: float) -> None:
    """An operation's answer; with --wait, its task followed to the end."""
    task_id = body.get("task_id")
    if wait and task_id:
        report_task(out, follow(api, out, task_id, timeout))
        return
    if out.as_json:
        out.json(body)
    else:
        out.line(body.get("message", ""))
        if task_id:
            out.line(f"task {task_id}; follow it with: warmpool task {task_id} --wait")
    if body.get("success") is False:
        raise SystemExit(FAILED)


@client_command()
@click.option("--gpu-name", help="e.g. RTX_4090")
@click.option("--min-gpus", type=click.IntRange(1, 64), default=2, show_default=True)
@click.option("--max-price", type=click.FloatRange(0, 1000), help="$/h per GPU")
@click.option("--unverified", is_flag=True, help="include hosts Vast.ai has not verified")
def hosts(api, out, gpu_name, min_gpus, max_price, unverified):
    """Multi-GPU hosts that can hold a warm pool."""
    params = {"gpu_name": gpu_name, "min_gpus": min_gpus, "max_price": max_price,
              "verified": "false" if unverified else None}
    body = api.call("GET", "/warmpool/hosts", params={k: v for k, v in params.items() if v is not None})
    if out.as_json:
        return out.json(body)
    out.table(["host", "GPU", "GPUs", "free", "$/h", "reliability", "verified", "where", "warm pool"],
              [[h["machine_id"], h["gpu_name"], h["total_gpus"], h["available_gpus"], f"{h['avg_price_per_hour']:.3f}",
                f"{h['reliability']:.3f}", "yes" if h["verified"] else "no", h.get("geolocation"),
                "yes" if h["can_create_warm_pool"] else "no"] for h in body["hosts"]],
              title=f"{body['count']} hosts")


def _standby(pool: dict) -> str | None:
    return None if pool["standby_gpu_id"] is None else f"{pool['standby_gpu_id']} ({pool['standby_state']})"


def _last_failover(pool: dict) -> str | None:
    last = pool.get("last_failover")
    return last and f"{last['at']} {last['recovery_time_seconds']:.1f} s ({last['trigger']})"


@client_command()
@watchable
def pools(api, out):
    """This tenant's warm pools."""
    body = api.call("GET", "/warmpool/pools")
    if out.as_json:
        return out.json(body)
    out.table(["machine", "state", "host", "primary", "standby", "failovers", "last failover", "$/h", "note"],
              [[p["machine_id"], p["state"], p["host_machine_id"], p["primary_gpu_id"], _standby(p),
                p["failover_count"], _last_failover(p), _dollars(p.get("cost_per_hour")),
                p.get("error_message") or p.get("fallback")]
               for p in body["pools"]], title=f"{body['count']} pools, ${body.get('cost_per_hour') or 0:.3f}/h in all")


def _dollars(cost: dict | None) -> str | None:
    """A pool's $/h; "+" when a part's price was not seen yet."""
    return f"{cost['total']:.3f}" + ("" if cost["complete"] else "+") if cost else None


@client_command()
@click.argument("machine_id", type=MACHINE_ID)
@watchable
def status(api, out, machine_id):
    """A machine's warm pool."""
    body = api.call("GET", f"/warmpool/status/{machine_id}")
    if out.as_json:
        return out.json(body)
    ports = body.get("primary_ports") or {}
    cost = body.get("cost_per_hour") or {}
    planned = body.get("scheduled_switchover") or {}
    shown_ports = ", ".join(f"{port}→{mapped[0]['HostPort']}" for port, mapped in ports.items() if mapped)
    out.fields({**body, **{f"cost_per_hour.{part}": value for part, value in cost.items()},
                "scheduled_switchover": planned.get("at"), "primary_ports": shown_ports or None,
                "env": ", ".join(f"{name}={value}" for name, value in (body.get("env") or {}).items()) or None},
               title=f"machine {machine_id}")
    if (body.get("last_failover") or {}).get("phases"):
        out.phases(body["last_failover"]["phases"], "last failover's phases")


def pool_spec(function):
    """--image, --disk-size, --volume-size, --replica, --onstart and --env: what a new pool is made of (the
    service's defaults otherwise)."""
    function = click.option("--env", multiple=True, metavar="NAME=VALUE",
                            help="environment of every instance (repeat it; '-p 8080:8080=1' asks for a port)")(function)
    function = click.option("--onstart", type=click.File("r"),
                            help="a file with the script every instance runs at start ('-': stdin)")(function)
    function = click.option("--replica/--no-replica", default=None,
                            help="keep a copy of the volume on another host, to survive a dead host")(function)
    function = click.option("--volume-size", type=click.IntRange(1, 65536), help="GB")(function)
    function = click.option("--disk-size", type=click.IntRange(8, 4096), help="GB")(function)
    return click.option("--image", help="Docker image")(function)


def spec_body(spec: dict) -> dict:
    """The pool spec options as the API's body: the script's text, NAME=VALUE pairs as a map, unset ones left out."""
    spec = dict(spec)
    if spec["onstart"] is not None:
        spec["onstart"] = spec["onstart"].read()
    pairs = [item.partition("=") for item in spec.pop("env")]
    if any(not sep for _, sep, _ in pairs):
        raise click.BadParameter("NAME=VALUE", param_hint="--env")
    body = {k: v for k, v in spec.items() if v is not None}
    return {**body, "env": {name: value for name, _, value in pairs}} if pairs else body


@client_command(waits=True)
@click.argument("machine_id", type=MACHINE_ID)
@click.option("--host", "host_machine_id", type=MACHINE_ID, required=True, help="the Vast.ai host (warmpool hosts)")
@click.option("--gpu-name")
@pool_spec
def provision(api, out, machine_id, host_machine_id, wait, timeout, **spec):
    """Provision a warm pool for a machine on a host."""
    body = {"machine_id": machine_id, "host_machine_id": host_machine_id, **spec_body(spec)}
    operation(api, out, api.call("POST", "/warmpool/provision", json=body), wait, timeout)


@client_command(waits=True)
@click.argument("machine_id", type=MACHINE_ID)
@click.option("--gpu-name", help="used when a host must be searched")
@click.option("--max-price", type=click.FloatRange(0, 1000), help="$/h per GPU")
@pool_spec
def enable(api, out, machine_id, wait, timeout, **spec):
    """Enable a warm pool; a machine without one gets a host searched and provisioned."""
    operation(api, out, api.call("POST", f"/warmpool/enable/{machine_id}", json=spec_body(spec)), wait, timeout)


@client_command(waits=True)
@click.argument("machine_id", type=MACHINE_ID)
def disable(api, out, machine_id, wait, timeout):
    """Disable a warm pool (resources kept; CPU standby is the fallback)."""
    operation(api, out, api.call("POST", f"/warmpool/disable/{machine_id}"), wait, timeout)


@client_command(waits=True)
@click.argument("machine_id", type=MACHINE_ID)
def failover(api, out, machine_id, wait, timeout):
    """Test a failover: the standby becomes the primary."""
    operation(api, out, api.call("POST", f"/warmpool/failover/test/{machine_id}"), wait, timeout)


@client_command()
@click.argument("machine_id", type=MACHINE_ID)
@click.option("--at", help="when, ISO 8601 (e.g. 2026-12-24T03:00:00Z; UTC without an offset); default: at once")
@click.option("--cancel", is_flag=True, help="cancel the planned switchover")
def switchover(api, out, machine_id, at, cancel):
    """Plan a switchover to the standby (a failover with nothing failed), at --at or at once; or --cancel it."""
    if cancel and at:
        raise click.UsageError("--at and --cancel go alone")
    path = f"/warmpool/switchover/{machine_id}"
    body = api.call("DELETE", path) if cancel else api.call("POST", path, json={"at": at} if at else {})
    if out.as_json:
        return out.json(body)
    out.line(body["message"])


YES = click.option("--yes", "-y", is_flag=True, help="do not ask; needed when stdin is not a terminal")


def confirmed(question: str, undone: str, yes: bool) -> None:
    """A destructive command's question, [y/N] on a terminal unless --yes; without a terminal it refuses
    (exit 7). ``undone`` says what a no leaves undone. Ctrl-D or Ctrl-C at the question is a no too."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise Failure(f"{question} Not confirmed: stdin is not a terminal, so pass --yes", NOT_CONFIRMED)
    try:
        answer = click.confirm(question, default=False, err=True)
    except click.Abort:  # click's answer to end of input or an interrupt at its prompt
        answer = False
    if not answer:
        raise Failure(f"not confirmed: {undone}", NOT_CONFIRMED)


@client_command(waits=True)
@click.argument("machine_id", type=MACHINE_ID)
@YES
def cleanup(api, out, machine_id, wait, timeout, yes):
    """Destroy a warm pool's instances and volume (the record stays, disabled). Asks first on a terminal."""
    confirmed(f"destroy machine {machine_id}'s instances and volume?", "nothing was destroyed", yes)
    operation(api, out, api.call("DELETE", f"/warmpool/cleanup/{machine_id}"), wait, timeout)


@client_command()
@click.argument("machine_id", type=MACHINE_ID)
@watchable
def events(api, out, machine_id):
    """What happened to a machine's warm pool, newest first."""
    body = api.call("GET", f"/warmpool/events/{machine_id}")
    if out.as_json:
        return out.json(body)
    out.table(["at", "event", "message"], [[e["at"], e["event"], e["message"]] for e in body["events"]],
              title=f"machine {machine_id}")


@client_command(waits=True)
@click.argument("task_id")
def task(api, out, task_id, wait, timeout):
    """An operation's task: state, step, result (exit 1 if it failed)."""
    report_task(out, follow(api, out, task_id, timeout) if wait else api.call("GET", f"/tasks/{task_id}"))


def primary_of(api: Api, machine_id: int) -> dict:
    """The machine's pool, which must have a primary to reach."""
    pool = api.call("GET", f"/warmpool/status/{machine_id}")
    if not (pool.get("primary_public_ipaddr") or pool.get("primary_ssh_host")):
        raise Failure(f"machine {machine_id}'s warm pool has no running primary to reach (state {pool['state']})",
                      FAILED)
    return pool


def host_port(pool: dict, container_port: str) -> tuple[str, int] | None:
    """Where a container port (``8080`` or ``8080/udp``) of the primary is reached from outside, by its port map."""
    port = container_port if "/" in container_port else f"{container_port}/tcp"
    mapped = (pool.get("primary_ports") or {}).get(port)
    if not mapped or not pool.get("primary_public_ipaddr"):
        return None
    return pool["primary_public_ipaddr"], int(mapped[0]["HostPort"])


def ssh_target(pool: dict) -> tuple[str, int]:
    """As ``vastai ssh-url`` chooses: the public address and 22/tcp's external port when mapped, else the proxy."""
    return host_port(pool, "22") or (pool["primary_ssh_host"], pool["primary_ssh_port"])


@client_command("ssh")
@click.argument("machine_id", type=MACHINE_ID)
@click.argument("ssh_args", nargs=-1, type=click.UNPROCESSED)
@click.option("--user", default="root", show_default=True)
def ssh(api, out, machine_id, ssh_args, user):
    """SSH to the machine's current primary; what follows -- goes to ssh (exit: ssh's)."""
    host, port = ssh_target(primary_of(api, machine_id))
    try:
        raise SystemExit(subprocess.call(["ssh", "-p", str(port), f"{user}@{host}", *ssh_args]))
    except FileNotFoundError:
        raise Failure("ssh is not installed (not on the PATH)", FAILED) from None


@client_command("url")
@click.argument("machine_id", type=MACHINE_ID)
@click.argument("container_port")
def url(api, out, machine_id, container_port):
    """The public address (host:port) of one of the primary's container ports, e.g. 8080 or 8080/udp."""
    pool = primary_of(api, machine_id)
    found = host_port(pool, container_port)
    if found is None:
        port = container_port if "/" in container_port else f"{container_port}/tcp"
        raise Failure(f"container port {port} of machine {machine_id}'s primary is not mapped (mapped: "
                      f"{', '.join(pool.get('primary_ports') or {}) or 'none'}); ask for it with a '-p' env key",
                      NOT_FOUND)
    if out.as_json:
        return out.json({"machine_id": machine_id, "container_port": container_port, "host": found[0],
                         "port": found[1]})
    out.line(f"{found[0]}:{found[1]}")


@client_command()
def version(api, out):
    """The client's version, and the server's build (GET /version)."""
    mine = {"version": metadata.version("warmpool"), "python_version": sys.version.split()[0]}
    if not out.as_json:
        out.line(f"client: warmpool {mine['version']} (Python {mine['python_version']})")
    server = api.call("GET", "/version", under="")
    if out.as_json:
        return out.json({"client": mine, "server": server})
    out.line(f"server: warmpool {server['version']} (Python {server['python_version']}) at {api.url}")


COMMANDS = (hosts, pools, status, provision, enable, disable, failover, switchover, events, cleanup, task, ssh, url,
            version)


def register(group: click.Group) -> None:
    """Add the client commands to the ``warmpool`` group, and its help the exit codes."""
    for command in COMMANDS:
        group.add_command(command)
    group.epilog = EXIT_CODES
    group.add_command(importlib.import_module("app.client_webhooks").webhooks)  # imports this module
