"""The operator client: ``warmpool pools``, ``warmpool failover 123 --wait`` and the rest, against a running API.

Each command is one API call (two with ``--wait``: the operation, then its task
until it ends). Tables go to stdout; progress and errors go to stderr, so
``--json`` output can be piped as it is. Exit codes say what happened (EXIT_CODES).
"""

import functools
import json
import shutil
import subprocess
import time

import click
import requests
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

OK, FAILED, USAGE, NOT_FOUND, BAD_KEY, UNREACHABLE, STILL_RUNNING = 0, 1, 2, 3, 4, 5, 6
EXIT_CODES = f"""\b
Exit codes:
  {OK}  success
  {FAILED}  the operation failed, or the service refused it (409)
  {USAGE}  usage error (a bad option or argument; the service's 422)
  {NOT_FOUND}  not found (no such pool, task or route)
  {BAD_KEY}  bad or missing API key (401)
  {UNREACHABLE}  service unreachable or unavailable (no answer, 5xx)
  {STILL_RUNNING}  --wait gave up after --timeout; the operation goes on
"""
ENDED = ("SUCCESS", "FAILURE")
POLL_SECONDS = 0.5
PHASES = ("detect", "lock", "fence_old_primary", "start_standby", "promote", "replace_standby")  # in time order


class Failure(click.ClickException):
    """An error that ends the command with its own exit code."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class Api:
    """The warmpool API at ``url``, called with ``key``."""

    def __init__(self, url: str, key: str | None):
        self.url = url.rstrip("/")
        self.session = requests.Session()
        if key:
            self.session.headers["Authorization"] = f"Bearer {key}"

    def call(self, method: str, path: str, **kwargs) -> dict:
        try:
            response = self.session.request(method, f"{self.url}/api/v1{path}", timeout=(5, 150), **kwargs)
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
    """Where results go: the API's JSON (``--json``) or tables, on stdout."""

    def __init__(self, as_json: bool):
        self.as_json = as_json
        # a pipe has no width: give tables room rather than wrap every cell at 80 columns
        self.console = Console(width=shutil.get_terminal_size((160, 24)).columns, highlight=False)
        self.progress_console = Console(stderr=True, highlight=False)

    def json(self, body: dict) -> None:
        click.echo(json.dumps(body, indent=2))

    def table(self, columns: list[str], rows: list[list], title: str | None = None) -> None:
        table = Table(title=title, title_justify="left", header_style="bold")
        for index, column in enumerate(columns):
            cells = [row[index] for row in rows if row[index] is not None]
            numeric = cells and all(isinstance(cell, (int, float)) for cell in cells)
            table.add_column(column, justify="right" if numeric else "left")
        for row in rows:
            table.add_row(*("—" if cell is None else str(cell) for cell in row))
        self.console.print(table)

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


def client_command(name: str | None = None, waits: bool = False):
    """A client command: --url, --key and --json (and, for operations, --wait and --timeout)."""

    def decorate(function):
        @functools.wraps(function)
        def command(url, key, as_json, **kwargs):
            return function(Api(url, key), Output(as_json), **kwargs)

        options = [
            click.option("--url", envvar="WARMPOOL_URL", default="http://127.0.0.1:8000", show_default=True,
                         help="the warmpool service (env WARMPOOL_URL)"),
            click.option("--key", envvar="WARMPOOL_API_KEY", help="the API key (env WARMPOOL_API_KEY)"),
            click.option("--json", "as_json", is_flag=True, help="print the API's JSON, for scripts"),
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
def pools(api, out):
    """This tenant's warm pools."""
    body = api.call("GET", "/warmpool/pools")
    if out.as_json:
        return out.json(body)
    out.table(["machine", "state", "host", "primary", "standby", "failovers", "last failover", "note"],
              [[p["machine_id"], p["state"], p["host_machine_id"], p["primary_gpu_id"], _standby(p),
                p["failover_count"], _last_failover(p), p.get("error_message") or p.get("fallback")]
               for p in body["pools"]], title=f"{body['count']} pools")


@client_command()
@click.argument("machine_id", type=MACHINE_ID)
def status(api, out, machine_id):
    """A machine's warm pool."""
    body = api.call("GET", f"/warmpool/status/{machine_id}")
    if out.as_json:
        return out.json(body)
    out.fields(body, title=f"machine {machine_id}")
    if (body.get("last_failover") or {}).get("phases"):
        out.phases(body["last_failover"]["phases"], "last failover's phases")


def pool_spec(function):
    """--image, --disk-size, --volume-size and --replica: what a new pool is made of (the service's defaults
    otherwise)."""
    function = click.option("--replica/--no-replica", default=None,
                            help="keep a copy of the volume on another host, to survive a dead host")(function)
    function = click.option("--volume-size", type=click.IntRange(1, 65536), help="GB")(function)
    function = click.option("--disk-size", type=click.IntRange(8, 4096), help="GB")(function)
    return click.option("--image", help="Docker image")(function)


@client_command(waits=True)
@click.argument("machine_id", type=MACHINE_ID)
@click.option("--host", "host_machine_id", type=MACHINE_ID, required=True, help="the Vast.ai host (warmpool hosts)")
@click.option("--gpu-name")
@pool_spec
def provision(api, out, machine_id, host_machine_id, wait, timeout, **spec):
    """Provision a warm pool for a machine on a host."""
    body = {"machine_id": machine_id, "host_machine_id": host_machine_id,
            **{k: v for k, v in spec.items() if v is not None}}
    operation(api, out, api.call("POST", "/warmpool/provision", json=body), wait, timeout)


@client_command(waits=True)
@click.argument("machine_id", type=MACHINE_ID)
@click.option("--gpu-name", help="used when a host must be searched")
@click.option("--max-price", type=click.FloatRange(0, 1000), help="$/h per GPU")
@pool_spec
def enable(api, out, machine_id, wait, timeout, **spec):
    """Enable a warm pool; a machine without one gets a host searched and provisioned."""
    body = {k: v for k, v in spec.items() if v is not None}
    operation(api, out, api.call("POST", f"/warmpool/enable/{machine_id}", json=body), wait, timeout)


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


@client_command(waits=True)
@click.argument("machine_id", type=MACHINE_ID)
def cleanup(api, out, machine_id, wait, timeout):
    """Destroy a warm pool's instances and volume (the record stays, disabled)."""
    operation(api, out, api.call("DELETE", f"/warmpool/cleanup/{machine_id}"), wait, timeout)


@client_command()
@click.argument("machine_id", type=MACHINE_ID)
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


COMMANDS = (hosts, pools, status, provision, enable, disable, failover, events, cleanup, task, ssh, url)


def register(group: click.Group) -> None:
    """Add the client commands to the ``warmpool`` group, and its help the exit codes."""
    for command in COMMANDS:
        group.add_command(command)
    group.epilog = EXIT_CODES
