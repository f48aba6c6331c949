"""Static checks of docker-compose.yml, Dockerfile and .dockerignore (no Docker engine needed).

The compose file is read as Compose reads it (YAML merge keys, ``${VAR:-default}``
interpolation, ``$$`` escapes) and compared with the code it deploys: the ``Settings``
fields, and the worker command lines of ``taskfleet.workers.profiles``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from taskfleet.config.observability import ObservabilitySettings
from taskfleet.config.sandbox import ENV_PREFIX as SANDBOX_ENV_PREFIX
from taskfleet.config.sandbox import SandboxSettings
from taskfleet.config.settings import ENV_PREFIX, Settings
from taskfleet.fleet.plan import FLOWER_SHIM
from taskfleet.sandbox import worker_profile
from taskfleet.workers.profiles import APP_PATH, WorkerProfile, cpu_profile, io_profile

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
WORKER_SECCOMP = ROOT / "docker" / "seccomp-cpu-worker.json"
#: The CPU worker's capabilities: the uid maps of a run (SETUID, SETGID), the sweep (KILL).
SANDBOX_CAPS = {"SETUID", "SETGID", "KILL"}

INFRA_SERVICES = {"redis", "postgres", "rabbitmq"}
APP_SERVICES = {"cpu-worker", "io-worker", "beat", "flower", "metrics"}
HEALTHCHECKED = {"redis", "postgres", "rabbitmq", "cpu-worker", "io-worker"}
WORKERS = {"cpu-worker": cpu_profile, "io-worker": io_profile}

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?message}, ${VAR?message}; innermost first
# (a default may hold another reference: ${URL:-redis://default:${PASSWORD}@redis}).
_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^{}]*))?\}")
_SECRET_KEY = re.compile(r"PASS|SECRET|TOKEN|AUTH|_KEY$", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"://[^:/@\s]+:(?P<password>[^@\s]*)@")
_SECRET_FLAG = re.compile(r"--(?:basic-auth|password)=(?P<value>\S+)")
#: A secret value may only be a reference, with at most an empty default.
_SECRET_REF = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?:(?::?\?[^}]*)|:?-)?\}")
REQUIRED_PLACEHOLDER = "placeholder"
#: Host variables holding secrets, and the container variables they are passed in.
SECRET_VARIABLES = {
    "POSTGRES_PASSWORD",
    "REDIS_PASSWORD",
    "RABBITMQ_PASSWORD",
    "TASKFLEET_FLOWER_BASIC_AUTH",
    "REDISCLI_AUTH",
    "FLOWER_BASIC_AUTH",
    "RABBITMQ_DEFAULT_PASS",
}


def substitute(value: str, resolve: Any) -> str:
    """``value`` with every Compose reference replaced by ``resolve(match)``, nested ones too."""
    while True:
        replaced = _VAR.sub(resolve, value)
        if replaced == value:
            return value
        value = replaced


def interpolate(value: str) -> str:
    """Resolve Compose interpolation as with an empty host environment.

    ``${VAR:-default}`` becomes its default, a required or bare ``${VAR}`` becomes
    ``placeholder``, and ``$$`` becomes a literal ``$`` (left for the container's shell).
    """
    escaped = value.replace("$$", "\0")

    def resolve(match: re.Match[str]) -> str:
        if match["op"] in (":-", "-"):
            return match["arg"]
        return REQUIRED_PLACEHOLDER

    return substitute(escaped, resolve).replace("\0", "$")


def as_argv(command: str | list[str]) -> list[str]:
    """A service's command as Compose runs it (a string is split like a shell would)."""
    argv = shlex.split(command) if isinstance(command, str) else [str(arg) for arg in command]
    return [interpolate(arg) for arg in argv]


def env_of(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment, in either the mapping or the list form."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(key): str(value) for key, value in env.items()}


def strings(node: Any) -> Iterator[str]:
    """Every string value in a parsed YAML document."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)


def worker_options(argv: list[str]) -> dict[str, str]:
    """``{option: value}`` of a ``celery -A app worker -X value ...`` command line."""
    assert argv[:4] == ["celery", "-A", APP_PATH, "worker"], argv
    rest = argv[4:]
    assert len(rest) % 2 == 0, rest
    assert all(arg.startswith("-") for arg in rest[::2]), rest
    return dict(zip(rest[::2], rest[1::2], strict=True))


def profile_options(profile: WorkerProfile, *, with_concurrency: bool) -> dict[str, str]:
    """The options ``profile`` starts a worker with (``-c`` only when asked for)."""
    options = worker_options(profile.argv())
    if not with_concurrency:
        # The CPU pool's size defaults to the host's CPU count, both in Settings and in
        # Celery, so a container that leaves ``-c`` out gets the same pool.
        options.pop("-c")
    return options


def dockerfile_instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, comments dropped and continuations joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    instructions = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, args = stripped.partition(" ")
            instructions.append((keyword.upper(), args.strip()))
    return instructions


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict)
    return document


def _duplicate_keys(node: yaml.Node, path: str = "") -> Iterator[str]:
    """Keys given twice in one mapping: YAML keeps the last, so the first is silently lost."""
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            name = str(key.value)
            if name in seen and name != "<<":
                yield f"{path}/{name}"
            seen.add(name)
            yield from _duplicate_keys(value, f"{path}/{name}")
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield from _duplicate_keys(item, f"{path}[{index}]")


def test_no_key_is_given_twice() -> None:
    assert list(_duplicate_keys(yaml.compose(COMPOSE_FILE.read_text()))) == []


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def shared_env(compose: dict[str, Any]) -> dict[str, str]:
    return env_of(compose["x-taskfleet"])


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ``TASKFLEET_*`` variable of the machine running the tests leaks into Settings."""
    for name in [name for name in os.environ if name.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)


@pytest.fixture
def settings(clean_env: None) -> Settings:
    """Default settings with dummy URLs, so that nothing is started."""
    return Settings(
        broker_url="redis://h:6379/0",
        database_url="postgresql://u@h/db",
        embedded=False,
        _env_file=None,  # type: ignore[call-arg]
    )


def test_every_service_exists(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) >= INFRA_SERVICES | APP_SERVICES
    assert services["redis"]["image"] == "redis:7-alpine"
    assert services["postgres"]["image"] == "postgres:16-alpine"
    assert services["rabbitmq"]["image"] == "rabbitmq:3-management-alpine"


def test_rabbitmq_is_opt_in_and_the_rest_is_not(services: dict[str, dict[str, Any]]) -> None:
    assert services["rabbitmq"]["profiles"] == ["rabbitmq"]
    for name in services.keys() - {"rabbitmq"}:
        assert not services[name].get("profiles"), name


def test_postgres_database_and_password_from_the_environment(
    services: dict[str, dict[str, Any]],
) -> None:
    env = env_of(services["postgres"])
    assert env["POSTGRES_DB"] == "taskfleet"
    assert "POSTGRES_HOST_AUTH_METHOD" in env or _SECRET_REF.fullmatch(env["POSTGRES_PASSWORD"])
    assert env.get("POSTGRES_HOST_AUTH_METHOD") != "trust"


def test_every_taskfleet_variable_is_a_settings_field(compose: dict[str, Any]) -> None:
    fields = [*Settings.model_fields, *ObservabilitySettings.model_fields]
    known = {f"{ENV_PREFIX}{name.upper()}" for name in fields} | {
        f"{SANDBOX_ENV_PREFIX}{name.upper()}" for name in SandboxSettings.model_fields
    }
    used = {
        key
        for service in [compose["x-taskfleet"], *compose["services"].values()]
        for key in env_of(service)
        if key.startswith(ENV_PREFIX)
    }
    assert used, "the shared environment sets no TASKFLEET_* variable"
    assert used <= known, f"not Settings fields: {sorted(used - known)}"


@pytest.mark.usefixtures("clean_env")
def test_shared_environment_builds_valid_external_settings(shared_env: dict[str, str]) -> None:
    for required in ("BROKER_URL", "REDIS_URL", "DATABASE_URL", "EMBEDDED"):
        assert f"{ENV_PREFIX}{required}" in shared_env, required
    values = {
        key.removeprefix(ENV_PREFIX).lower(): interpolate(value)
        for key, value in shared_env.items()
    }
    settings = Settings(**values, _env_file=None)  # type: ignore[arg-type]
    assert settings.embedded is False
    assert settings.broker_is_redis
    # Redis needs its password: the default URLs carry it (user "default", Redis's own).
    redis_url = f"redis://default:{REQUIRED_PLACEHOLDER}@redis:6379/0"
    assert (settings.broker_url, settings.redis_url) == (redis_url, redis_url)
    # Flower's credentials are Flower's alone: no worker or beat gets them.
    assert f"{ENV_PREFIX}FLOWER_BASIC_AUTH" not in shared_env
    assert "FLOWER_BASIC_AUTH" not in shared_env


def test_app_services_share_the_image_and_environment(
    compose: dict[str, Any], services: dict[str, dict[str, Any]], shared_env: dict[str, str]
) -> None:
    built = {name for name, service in services.items() if "build" in service}
    assert built == APP_SERVICES
    shared = compose["x-taskfleet"]
    for name in sorted(built):
        service = services[name]
        assert service["build"] == shared["build"], name
        assert service["build"]["context"] == "."
        assert service["build"].get("dockerfile", "Dockerfile") == DOCKERFILE.name
        assert env_of(service).items() >= shared_env.items(), name
        depends_on = service["depends_on"]
        assert isinstance(depends_on, dict), name
        for dependency in ("redis", "postgres"):
            assert depends_on[dependency]["condition"] == "service_healthy", (name, dependency)


def test_dependencies_wait_for_health(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for dependency, spec in (service.get("depends_on") or {}).items():
            assert spec["condition"] == "service_healthy", (name, dependency)
            assert "healthcheck" in services[dependency], dependency
            if "profiles" in services[dependency]:
                # Otherwise the default stack refuses to start without that profile.
                assert spec.get("required") is False, (name, dependency)


@pytest.mark.parametrize("name", sorted(WORKERS))
def test_worker_command_matches_its_profile(
    name: str, services: dict[str, dict[str, Any]], settings: Settings
) -> None:
    # The image pins the prefork pool for its CPU worker (no supervisor in a container).
    env = services[name].get("environment", {})
    pool = env.get("TASKFLEET_CPU_POOL", settings.cpu_pool)
    profile = WORKERS[name](settings.model_copy(update={"cpu_pool": pool}))
    options = worker_options(as_argv(services[name]["command"]))
    expected = profile_options(profile, with_concurrency="-c" in options)
    assert options == expected
    assert options["-P"] == profile.pool
    assert options["-Q"].split(",") == list(profile.queues)


def test_io_worker_pins_the_settings_concurrency(
    services: dict[str, dict[str, Any]], settings: Settings
) -> None:
    # Celery's own default (the CPU count) is far below a gevent pool's.
    options = worker_options(as_argv(services["io-worker"]["command"]))
    assert options["-c"] == str(io_profile(settings).concurrency)


def test_beat_and_flower_commands(services: dict[str, dict[str, Any]]) -> None:
    beat = as_argv(services["beat"]["command"])
    assert beat[:4] == ["celery", "-A", APP_PATH, "beat"]
    assert beat[beat.index("-s") + 1].startswith("/tmp/")

    flower = as_argv(services["flower"]["command"])
    # Flower itself (through the Broker page shim), no shell: its credentials come from its
    # environment, not its argv.
    shim = ["python", "-m", FLOWER_SHIM]
    assert flower[:7] == [*shim, "-A", APP_PATH, "flower", "--address=0.0.0.0"], flower
    assert "--port=5555" in flower
    assert not [arg for arg in flower if "$" in arg or "auth" in arg.lower()], flower
    assert "127.0.0.1:5555:5555" in services["flower"]["ports"]


@pytest.mark.parametrize("name", sorted(HEALTHCHECKED))
def test_healthchecks(name: str, services: dict[str, dict[str, Any]]) -> None:
    check = services[name].get("healthcheck")
    assert check, name
    assert not check.get("disable"), name
    test = check["test"]
    assert isinstance(test, list), test
    assert test[0] in ("CMD", "CMD-SHELL"), test
    command = " ".join(test[1:])
    expected = {
        "redis": "redis-cli ping",
        "postgres": "pg_isready",
        "rabbitmq": "rabbitmq-diagnostics -q ping",
    }
    if name in expected:
        assert expected[name] in command
        return
    # A worker pings its own node: the -n name with %h as the container's hostname.
    assert test[0] == "CMD-SHELL"
    node = worker_options(as_argv(services[name]["command"]))["-n"]
    destination = node.replace("%h", "$HOSTNAME")
    argv = shlex.split(interpolate(command))
    assert argv == ["taskfleet", "health", "--worker", destination, "||", "exit", "1"], argv


def test_no_literal_secrets(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    for name, service in [("x-taskfleet", compose["x-taskfleet"]), *services.items()]:
        for key, value in env_of(service).items():
            if _SECRET_KEY.search(key):
                assert _SECRET_REF.fullmatch(value), f"{name}: {key} is not a ${{...}} reference"
    for value in strings(compose):
        for match in _URL_PASSWORD.finditer(value):
            assert _SECRET_REF.fullmatch(match["password"]), f"password in URL {value!r}"
        for match in _SECRET_FLAG.finditer(value):
            assert _SECRET_REF.fullmatch(match["value"].strip("\"'").replace("$$", "$")), value


def test_every_dollar_is_escaped_or_an_interpolation(compose: dict[str, Any]) -> None:
    # A bare $NAME would be filled in by Compose from the host, not by the container.
    for value in strings(compose):
        assert "$" not in substitute(value.replace("$$", ""), lambda _: ""), value


def test_ports_are_published_on_localhost_only(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for port in service.get("ports", []):
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", (name, port)
            else:
                assert str(port).startswith("127.0.0.1:"), (name, port)


def test_dockerfile(settings: Settings) -> None:
    instructions = dockerfile_instructions()
    keywords = [keyword for keyword, _ in instructions]
    assert instructions[0] == ("FROM", "python:3.11-slim")

    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users, "the image runs as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert keywords.index("USER") > max(
        index for index, (keyword, _) in enumerate(instructions) if keyword == "RUN"
    ), "USER must come after the last RUN (installation as root, running as the user)"

    runs = " ".join(args for keyword, args in instructions if keyword == "RUN")
    assert re.search(r"pip install (?:[^&;]* )?\.(?:\s|$)", runs), runs
    assert not re.search(r"\.\[[^\]]*\]", runs), "no extras (test, bench) in the image"
    copied = " ".join(args for keyword, args in instructions if keyword == "COPY")
    for needed in ("pyproject.toml", "README.md", "taskfleet", "uv.lock", "requirements-uv.txt"):
        assert needed in copied, needed
    # The image installs what the lock pins, hashes checked, not what the resolver finds today.
    assert re.search(r"uv export --locked\b", runs), runs
    assert runs.count("--require-hashes") == 2, runs

    env = " ".join(args for keyword, args in instructions if keyword == "ENV")
    assert re.search(r"\bPYTHONUNBUFFERED=1\b", env)

    cmd = json.loads(next(args for keyword, args in reversed(instructions) if keyword == "CMD"))
    options = worker_options(cmd)
    # The image's healthcheck pings the worker its default command starts.
    [check] = [args for keyword, args in instructions if keyword == "HEALTHCHECK"]
    node = options["-n"].replace("%h", "$HOSTNAME")
    assert check.split(" CMD ", 1)[1] == f'taskfleet health --worker "{node}" || exit 1', check
    assert re.search(r"\bTASKFLEET_CPU_POOL=prefork\b", env), env
    prefork = settings.model_copy(update={"cpu_pool": "prefork"})
    assert options == profile_options(cpu_profile(prefork), with_concurrency="-c" in options)


def test_dockerignore() -> None:
    patterns = {
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", ".taskfleet", ".git", "tests", ".env"} <= patterns
    assert {".pytest_cache", ".mypy_cache", ".ruff_cache"} <= patterns
    assert patterns & {"__pycache__", "**/__pycache__"}
    for needed in (
        "pyproject.toml",
        "README.md",
        "taskfleet",
        "uv.lock",
        "requirements-uv.txt",
        "*.md",
        "*.toml",
        "*.lock",
        "*.txt",
    ):
        assert needed not in patterns, f"{needed} is needed to build the image"


def _commands(service: dict[str, Any]) -> list[str]:
    """Every command line a service runs: its command, entrypoint and healthcheck."""
    found = []
    for key in ("command", "entrypoint"):
        if key in service:
            value = service[key]
            found.extend([value] if isinstance(value, str) else [str(v) for v in value])
    check = (service.get("healthcheck") or {}).get("test") or []
    found.extend([check] if isinstance(check, str) else [str(v) for v in check])
    return found


def test_redis_requires_a_password_from_the_environment(
    services: dict[str, dict[str, Any]],
) -> None:
    redis = services["redis"]
    assert env_of(redis)["REDISCLI_AUTH"] == "${REDIS_PASSWORD:?set REDIS_PASSWORD}"
    argv = as_argv(redis["command"])
    assert argv[:2] == ["sh", "-c"], argv
    exec_line, *heredoc = argv[2].splitlines()
    # redis-server reads its config on stdin ("-"): the password is in no argv.
    assert shlex.split(exec_line) == [
        "exec",
        "docker-entrypoint.sh",
        "redis-server",
        "-",
        "--appendonly",
        "yes",
        "<<EOF",
    ]
    assert heredoc == ["requirepass ${REDISCLI_AUTH}", "EOF"]


def test_every_redis_url_carries_the_password(compose: dict[str, Any]) -> None:
    for name, service in [("x-taskfleet", compose["x-taskfleet"]), *compose["services"].items()]:
        for key, value in env_of(service).items():
            url = interpolate(value)
            if url.startswith(("redis://", "rediss://")):
                assert f":{REQUIRED_PLACEHOLDER}@" in url, (name, key, value)
                assert "${REDIS_PASSWORD}@" in value, (name, key, value)


def test_flowers_credentials_are_in_its_environment_only(
    services: dict[str, dict[str, Any]],
) -> None:
    env = env_of(services["flower"])
    assert env["FLOWER_BASIC_AUTH"] == "${TASKFLEET_FLOWER_BASIC_AUTH:?set user:password}"
    for name, service in services.items():
        if name != "flower":
            assert not {"FLOWER_BASIC_AUTH", f"{ENV_PREFIX}FLOWER_BASIC_AUTH"} & set(
                env_of(service)
            ), name


@pytest.mark.parametrize("name", ["x-taskfleet", "redis", "postgres", "rabbitmq", *APP_SERVICES])
def test_no_secret_is_put_on_a_command_line(name: str, compose: dict[str, Any]) -> None:
    """Compose fills ``${VAR}`` into a command before it runs: a secret there is in ``ps``.

    A secret reaches a container as an environment variable; the container's shell may only
    hand it on without an argv (a here-document, the ``test`` builtin).
    """
    service = compose.get(name) or compose["services"][name]
    for line in _commands(service):
        for match in _VAR.finditer(line.replace("$$", "\0")):
            assert match["name"] not in SECRET_VARIABLES, (name, line)
        for secret in SECRET_VARIABLES:
            for use in re.finditer(rf"\$\$\{{{secret}\}}", line):
                before = line[: use.start()].splitlines()[-1] if line[: use.start()] else ""
                shell_only = before.strip() in ("requirepass", "") or "test -n" in before
                assert shell_only, (name, line)


def test_the_cpu_worker_runs_sandboxes_with_least_privilege(
    services: dict[str, dict[str, Any]],
) -> None:
    # Namespace mode in the image (README "Sandbox"): root in the container for the uid maps,
    # with three capabilities, a seccomp profile of its own, never privileged.
    worker = services["cpu-worker"]
    assert not worker.get("privileged")
    assert str(worker["user"]) == "0:0"
    assert worker["cap_drop"] == ["ALL"]
    assert set(worker["cap_add"]) == SANDBOX_CAPS
    options = worker["security_opt"]
    assert "no-new-privileges:true" in options
    assert f"seccomp=./{WORKER_SECCOMP.relative_to(ROOT)}" in options
    assert "seccomp=unconfined" not in options
    assert "systempaths=unconfined" not in options  # /proc stays masked: runs get none
    assert env_of(worker)["TASKFLEET_SANDBOX_MOUNT_PROC"] == "false"
    assert (
        SandboxSettings(mount_proc=env_of(worker)["TASKFLEET_SANDBOX_MOUNT_PROC"]).mount_proc
        is False
    )  # type: ignore[arg-type]
    assert not str(worker.get("working_dir", "/tmp")).startswith("/home/"), "root without DAC caps"


def test_no_other_service_gets_privileges(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        assert not service.get("privileged"), name
        if name != "cpu-worker":
            assert not service.get("cap_add"), name
            assert "user" not in service, name  # the image's uid 10001
            for option in service.get("security_opt", []):
                assert "unconfined" not in option, (name, option)


def test_the_worker_seccomp_profile_is_current_and_strict() -> None:
    assert WORKER_SECCOMP.read_text() == worker_profile.render(), (
        "regenerate: python -m taskfleet.sandbox.worker_profile > docker/seccomp-cpu-worker.json"
    )
    profile = json.loads(WORKER_SECCOMP.read_text())
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    assert {arch["architecture"] for arch in profile["archMap"]} == {
        "SCMP_ARCH_X86_64",
        "SCMP_ARCH_AARCH64",
    }
    assert all(arch["subArchitectures"] == [] for arch in profile["archMap"])  # no i386, x32
    unconditional = {
        name
        for rule in profile["syscalls"]
        if rule["action"] == "SCMP_ACT_ALLOW" and not rule.get("args")
        for name in rule["names"]
    }
    assert set(worker_profile.WORKER_SETUP) <= unconditional
    for refused in ("ptrace", "io_uring_setup", "bpf", "keyctl", "add_key", "setns", "kexec_load",
                    "init_module", "userfaultfd", "perf_event_open", "process_vm_readv", "clone3"):  # fmt: skip
        assert refused not in unconditional, refused
    clone = next(rule for rule in profile["syscalls"] if rule["names"] == ["clone"])
    assert clone["args"][0]["op"] == "SCMP_CMP_MASKED_EQ"
