"""docker-compose.yml, the Dockerfile and the files they mount say what the deployment needs.

No container engine runs here, so the files are read, not started: the services start in a
valid order, the worker reaches Temporal and DEE's PostgreSQL database, the setup job creates
every search attribute DEE uses, versions are pinned, and the image runs ``dee`` as a
non-root user.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from graphlib import TopologicalSorter
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from dee.cli.main import dee as dee_cli
from dee.runs.model import SEARCH_ATTRIBUTES
from dee.settings import Settings
from tests.helpers.spec import ROOT

COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}
_VARIABLE = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def _compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict)
    return document


COMPOSE = _compose()
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]


def _interpolate(value: str) -> str:
    """``value`` as Compose reads it with no variables set: defaults in, ``$$`` as ``$``."""

    def replace(match: re.Match[str]) -> str:
        op, arg = match["op"], match["arg"]
        if op in {":-", "-"}:
            return arg
        if op in {":?", "?"}:
            raise AssertionError(f"{match[0]} needs {match['name']} to be set")
        return ""

    return _VARIABLE.sub(replace, value).replace("$$", "$")


def _environment(service: str) -> dict[str, str]:
    environment = SERVICES[service].get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {str(key): str(value) for key, value in environment.items()}


def _env(service: str, name: str) -> str:
    return _interpolate(_environment(service)[name])


def _depends_on(service: str) -> dict[str, dict[str, Any]]:
    depends_on = SERVICES[service].get("depends_on", {})
    if isinstance(depends_on, list):
        return {name: {"condition": "service_started"} for name in depends_on}
    return {str(name): dict(options) for name, options in depends_on.items()}


def _volumes(service: str) -> list[tuple[str, str]]:
    """``(source, target)`` of each short-syntax volume of ``service``."""
    mounts = []
    for volume in SERVICES[service].get("volumes", []):
        assert isinstance(volume, str), f"{service}: use the short volume syntax"
        source, target, *_ = volume.split(":")
        mounts.append((source, target))
    return mounts


def _bind_mount(service: str, target: str) -> Path:
    """The file or folder on this side that ``service`` sees at (or above) ``target``."""
    for source, mounted_at in _volumes(service):
        if source.startswith(".") and PurePosixPath(target).is_relative_to(mounted_at):
            return ROOT / source / PurePosixPath(target).relative_to(mounted_at)
    raise AssertionError(f"{service} mounts nothing at {target}")


def _built_here() -> list[str]:
    return [name for name, service in SERVICES.items() if "build" in service]


def test_the_services_are_there() -> None:
    assert set(SERVICES) >= {
        "postgresql",
        "temporal-schema",
        "temporal",
        "temporal-setup",
        "temporal-ui",
        "dee-worker",
    }


def test_every_dependency_exists_and_the_start_order_has_no_cycle() -> None:
    for name in SERVICES:
        for target, options in _depends_on(name).items():
            assert target in SERVICES, f"{name} depends on unknown service {target!r}"
            assert options.get("condition") in {
                "service_started",
                "service_healthy",
                "service_completed_successfully",
            }, (name, target)
    order = TopologicalSorter({name: set(_depends_on(name)) for name in SERVICES})
    assert list(order.static_order())


def test_services_waited_for_as_healthy_have_a_healthcheck() -> None:
    for name in SERVICES:
        for target, options in _depends_on(name).items():
            if options["condition"] == "service_healthy":
                assert "test" in SERVICES[target].get("healthcheck", {}), (name, target)


def test_jobs_waited_for_to_complete_are_one_shot() -> None:
    for name in SERVICES:
        for target, options in _depends_on(name).items():
            if options["condition"] == "service_completed_successfully":
                assert SERVICES[target].get("restart", "no") in {"no", "on-failure"}, target


@pytest.mark.parametrize(
    ("service", "waits_for"),
    [
        # Temporal's schema is set up once PostgreSQL accepts connections ...
        ("temporal-schema", {"postgresql": "service_healthy"}),
        # ... the server starts on a finished schema ...
        ("temporal", {"temporal-schema": "service_completed_successfully"}),
        # ... the namespace and search attributes need a running server ...
        ("temporal-setup", {"temporal": "service_healthy"}),
        ("temporal-ui", {"temporal": "service_healthy"}),
        # ... and the worker starts when both its namespace and its database are ready.
        (
            "dee-worker",
            {
                "temporal-setup": "service_completed_successfully",
                "postgresql": "service_healthy",
            },
        ),
    ],
)
def test_start_order(service: str, waits_for: dict[str, str]) -> None:
    conditions = {target: options["condition"] for target, options in _depends_on(service).items()}
    assert conditions.items() >= waits_for.items()


@pytest.mark.parametrize("service", ["postgresql", "temporal"])
def test_healthchecks(service: str) -> None:
    healthcheck = SERVICES[service]["healthcheck"]
    assert healthcheck["test"][0] in {"CMD", "CMD-SHELL"}
    assert {"interval", "timeout", "retries"} <= set(healthcheck)


def test_postgresql_is_ready_only_once_initialised() -> None:
    # The entrypoint's temporary server (init scripts) listens on the Unix socket only.
    (command,) = SERVICES["postgresql"]["healthcheck"]["test"][1:]
    assert command.startswith("pg_isready -h 127.0.0.1")


def test_the_worker_reaches_temporal_in_the_namespace_the_setup_job_prepares() -> None:
    host, _, port = _env("dee-worker", "TEMPORAL_ADDRESS").partition(":")
    assert (host, port) == ("temporal", "7233")
    assert "127.0.0.1:7233:7233" in SERVICES["temporal"]["ports"]
    assert _env("temporal-setup", "TEMPORAL_ADDRESS") == "temporal:7233"
    assert _env("dee-worker", "TEMPORAL_NAMESPACE") == _env("temporal-setup", "TEMPORAL_NAMESPACE")


def test_the_worker_uses_the_dee_database_on_the_postgresql_service() -> None:
    url = urlsplit(_env("dee-worker", "DEE_DATABASE_URL"))
    assert url.scheme == "postgresql"
    assert (url.hostname, url.port, url.path) == ("postgresql", 5432, "/dee")
    # The role and database the init script creates, with the password it is given.
    script = _bind_mount("postgresql", "/docker-entrypoint-initdb.d/init-dee.sh").read_text()
    assert f"CREATE ROLE {url.username} LOGIN PASSWORD :'dee_password'" in script
    assert f"CREATE DATABASE dee OWNER {url.username};" in script
    assert 'dee_password="${DEE_DB_PASSWORD' in script
    assert _env("postgresql", "DEE_DB_PASSWORD") == url.password


def test_the_worker_needs_a_secret_key_and_has_defaults_for_the_rest() -> None:
    environment = _environment("dee-worker")
    assert environment["DEE_SECRET_KEY"].startswith("${DEE_SECRET_KEY:?")
    with pytest.raises(AssertionError, match="needs DEE_SECRET_KEY"):
        _interpolate(environment["DEE_SECRET_KEY"])
    for name in (
        "DEE_SMTP_URL",
        "DEE_FROM_ADDRESS",
        "DEE_PUBLIC_URL",
        "DEE_TASK_QUEUE",
        "DEE_TWILIO_API_URL",
        "TWILIO_ACCOUNT_SID",
        "TWILIO_AUTH_TOKEN",
    ):
        assert environment[name].startswith(f"${{{name}:-"), name


def test_services_built_here_run_a_dee_command_that_exists() -> None:
    assert _built_here() == ["dee-worker", "dee-api"]
    for name in _built_here():
        command = SERVICES[name]["command"]
        assert command[0] in dee_cli.commands, (name, command)


def test_the_api_shares_the_workers_database_key_and_public_url() -> None:
    worker = SERVICES["dee-worker"]["environment"]
    api = SERVICES["dee-api"]["environment"]
    for name in (
        "DEE_DATABASE_URL",
        "DEE_SECRET_KEY",
        "DEE_PUBLIC_URL",
        "TEMPORAL_ADDRESS",
        "DEE_PAYLOAD_KEYS",
    ):
        assert api[name] == worker[name], name
    assert SERVICES["dee-api"]["command"] == ["serve", "--host", "0.0.0.0", "--port", "8000"]


def test_the_web_ui_may_decode_through_the_api_with_its_sign_in() -> None:
    # Off by default, as encryption is: a UI calling a codec that is not there shows errors.
    assert _environment("temporal-ui")["TEMPORAL_CODEC_ENDPOINT"].startswith(
        "${TEMPORAL_UI_CODEC_ENDPOINT:-"
    )
    assert _env("temporal-ui", "TEMPORAL_CODEC_ENDPOINT") == ""
    # The browser sends the cookie of /codec/login only with credentials included...
    assert _env("temporal-ui", "TEMPORAL_CODEC_INCLUDE_CREDENTIALS") == "true"
    # ...and the API answers CORS for the origin the UI is published on.
    ui_port = SERVICES["temporal-ui"]["ports"][0].split(":")[1]
    assert _env("dee-api", "DEE_CODEC_ORIGINS") == f"http://localhost:{ui_port}"
    assert _env("dee-api", "DEE_CODEC_ORIGINS") == _env("temporal-ui", "TEMPORAL_CORS_ORIGINS")


def test_published_ports_are_bound_to_localhost() -> None:
    published = [
        (name, port) for name, service in SERVICES.items() for port in service.get("ports", [])
    ]
    assert published
    for name, port in published:
        assert isinstance(port, str) and port.startswith("127.0.0.1:"), (name, port)


def test_the_setup_job_creates_every_search_attribute_dee_uses() -> None:
    wanted = {
        f"{key.name}={key.indexed_value_type.name.title().replace('_', '')}"
        for key in SEARCH_ATTRIBUTES
    }
    setup = SERVICES["temporal-setup"]
    assert set(setup["command"]) == wanted
    assert len(setup["command"]) == len(wanted)
    script = _bind_mount("temporal-setup", setup["entrypoint"][-1]).read_text()
    assert "temporal operator search-attribute create" in script
    assert "temporal operator namespace create" in script


def test_image_versions_are_variables_with_defaults() -> None:
    defaults = {}
    for name, service in SERVICES.items():
        if "build" in service:
            continue
        image = service["image"]
        match = re.fullmatch(r"(?P<repo>[\w./-]+):\$\{(?P<var>\w+):-(?P<default>[^}]+)\}", image)
        assert match, f"{name}: pin {image!r} as repo:${{VERSION:-x.y.z}}"
        assert match["default"] != "latest", name
        defaults[match["repo"]] = match["default"]
    # The schema tool that prepares the databases is the server's own release.
    assert defaults["temporalio/server"] == defaults["temporalio/admin-tools"]
    assert "temporalio/auto-setup" not in defaults


def test_temporal_and_its_schema_job_use_the_same_database() -> None:
    for name in ("DB", "DB_PORT", "POSTGRES_SEEDS", "POSTGRES_USER", "POSTGRES_PWD"):
        assert _env("temporal", name) == _env("temporal-schema", name), name
    assert _env("temporal", "DB") == "postgres12"
    assert _env("temporal", "POSTGRES_SEEDS") == "postgresql"
    assert _env("temporal", "POSTGRES_USER") == _env("postgresql", "POSTGRES_USER")
    assert _env("temporal", "POSTGRES_PWD") == _env("postgresql", "POSTGRES_PASSWORD")


def test_temporal_reads_the_dynamic_config_that_is_mounted() -> None:
    # Relative paths are from the server image's working directory.
    path = PurePosixPath("/etc/temporal") / _env("temporal", "DYNAMIC_CONFIG_FILE_PATH")
    config = yaml.safe_load(_bind_mount("temporal", str(path)).read_text())
    assert config["limit.maxIDLength"] == [{"value": 255, "constraints": {}}]


def test_data_lives_in_named_volumes_where_the_image_keeps_it() -> None:
    declared = set(COMPOSE["volumes"])
    for name in SERVICES:
        for source, _ in _volumes(name):
            assert source.startswith(".") or source in declared, (name, source)
    version = re.search(r":-(\d+)", SERVICES["postgresql"]["image"])
    assert version
    # postgres images 18+ moved PGDATA under /var/lib/postgresql/<major>/docker.
    data_dir = "/var/lib/postgresql/data" if int(version[1]) < 18 else "/var/lib/postgresql"
    assert ("postgresql-data", data_dir) in _volumes("postgresql")


def test_bind_mounted_files_exist() -> None:
    for name in SERVICES:
        for source, _ in _volumes(name):
            if source.startswith("."):
                assert (ROOT / source).exists(), (name, source)


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
@pytest.mark.parametrize(
    "script",
    sorted((ROOT / "deploy").rglob("*.sh")),
    ids=lambda path: str(path.relative_to(ROOT)),
)
def test_shell_scripts_parse(script: Path) -> None:
    result = subprocess.run(
        ["sh", "-n", str(script)], capture_output=True, text=True, timeout=10, check=False
    )
    assert result.returncode == 0, result.stderr


def _dockerfile() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, continuation lines joined, comments dropped."""
    lines = [
        line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")
    ]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    instructions = []
    for line in text.splitlines():
        if line.strip():
            instruction, _, arguments = line.strip().partition(" ")
            instructions.append((instruction.upper(), " ".join(arguments.split())))
    return instructions


def _final_stage() -> list[tuple[str, str]]:
    instructions = _dockerfile()
    start = max(i for i, (instruction, _) in enumerate(instructions) if instruction == "FROM")
    return instructions[start:]


def test_the_image_is_python_3_11_slim() -> None:
    assert _final_stage()[0] == ("FROM", "python:3.11-slim")


def test_the_image_runs_dee_as_a_non_root_user() -> None:
    users = [arguments for instruction, arguments in _final_stage() if instruction == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    final = dict(_final_stage())
    assert final["ENTRYPOINT"] == '["dee"]'
    assert final["CMD"] == '["worker"]'


def test_the_image_installs_the_project_without_dev_extras() -> None:
    runs = [arguments for instruction, arguments in _dockerfile() if instruction == "RUN"]
    assert "pip install --no-cache-dir ." in runs
    assert not any("[dev]" in command for command in runs)


def test_the_image_copies_everything_the_project_packages() -> None:
    sources = set()
    for instruction, arguments in _dockerfile():
        if instruction == "COPY" and not arguments.startswith("--from"):
            sources.update(arguments.split()[:-1])
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setuptools = project["tool"]["setuptools"]
    packages = {pattern.rstrip("*") for pattern in setuptools["packages"]["find"]["include"]}
    modules = {f"{module}.py" for module in setuptools["py-modules"]}
    assert sources >= packages | modules | {"pyproject.toml", project["project"]["readme"]}
    ignored = _dockerignore()
    for source in sources:
        assert (ROOT / source).exists(), source
        assert source not in ignored, f"{source} is copied but .dockerignore leaves it out"


def _dockerignore() -> set[str]:
    return {
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }


def test_the_build_context_leaves_out_local_state_and_tests() -> None:
    assert _dockerignore() >= {".git", ".venv", ".dee", ".env", "tests", "**/__pycache__"}


def test_the_worker_is_killed_only_after_its_sends_had_time_to_finish() -> None:
    # DEE_SHUTDOWN_TIMEOUT (the SDK's graceful_shutdown_timeout) must end, with a few
    # seconds to spare for the worker's own exit, before compose's SIGKILL.
    grace = SERVICES["dee-worker"]["stop_grace_period"]
    parts = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", grace)
    assert parts and any(parts.groups()), grace
    grace_seconds = int(parts[1] or 0) * 60 + int(parts[2] or 0)
    given = _environment("dee-worker").get("DEE_SHUTDOWN_TIMEOUT")
    settings = Settings.from_env({"DEE_SHUTDOWN_TIMEOUT": _interpolate(given) if given else ""})
    assert settings.shutdown_timeout + 5 <= grace_seconds


def test_the_worker_starts_with_the_compose_defaults() -> None:
    # `dee worker` refuses a loopback DEE_PUBLIC_URL with a mail server elsewhere; the
    # defaults (links to 127.0.0.1, mail to a catcher on the Docker host) must not be that.
    environment = {
        name: _interpolate(value)
        for name, value in _environment("dee-worker").items()
        if name != "DEE_SECRET_KEY"
    }
    assert Settings.from_env(environment).public_url_problem() is None
    # Positive control: the same defaults with a provider's server are refused.
    provider = {**environment, "DEE_SMTP_URL": "smtps://user:pw@smtp.example.com:465"}
    assert Settings.from_env(provider).public_url_problem() is not None
