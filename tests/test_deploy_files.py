"""docker-compose.yml, its TLS variant and the files they mount say what the deployment needs.

No container engine runs here, so the files are read, not started (tests/helpers/compose.py
reads them as Compose does): the services start in a valid order, DEE's database is
migrated once by a job the worker and the API wait for, the settings that decide where mail
goes and where links point are required, Temporal's client settings reach DEE's processes,
the setup job creates every search attribute DEE uses, and versions are pinned. The image
and its lock: tests/test_deploy_image.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from graphlib import TopologicalSorter
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest
import yaml

from dee.cli.main import dee as dee_cli
from dee.runs.model import SEARCH_ATTRIBUTES
from dee.settings import Settings
from tests.helpers.compose import (
    COMPOSE_FILE,
    DEV_ENV_FILE,
    ENV_EXAMPLE,
    TLS_COMPOSE_FILE,
    Compose,
    MissingVariable,
    interpolate,
    read_env_file,
    variables,
)
from tests.helpers.spec import ROOT

#: The file as written, and as `docker compose --env-file deploy/dev.env` reads it.
RAW = Compose(COMPOSE_FILE)
SERVICES = RAW.services
DEV_ENV = read_env_file(DEV_ENV_FILE)
DEV = Compose(COMPOSE_FILE, env=DEV_ENV)

#: DEE's services, all running the one image.
DEE_SERVICES = ("dee-migrate", "dee-worker", "dee-api")

#: What a stack may not start without: mail to real contacts and links in it.
REQUIRED = {
    "dee-worker": {"DEE_SECRET_KEY", "DEE_PUBLIC_URL", "DEE_SMTP_URL", "DEE_FROM_ADDRESS"},
    "dee-api": {"DEE_SECRET_KEY", "DEE_PUBLIC_URL"},
}

#: The client settings temporalio.envconfig reads.
TEMPORAL_CLIENT = (
    "TEMPORAL_ADDRESS",
    "TEMPORAL_NAMESPACE",
    "TEMPORAL_API_KEY",
    "TEMPORAL_TLS",
    "TEMPORAL_TLS_CLIENT_CERT_PATH",
    "TEMPORAL_TLS_CLIENT_KEY_PATH",
    "TEMPORAL_TLS_SERVER_CA_CERT_PATH",
    "TEMPORAL_TLS_SERVER_NAME",
    "TEMPORAL_TLS_DISABLE_HOST_VERIFICATION",
)


def _env(service: str, name: str) -> str:
    return DEV.environment(service)[name]


def test_the_services_are_there() -> None:
    assert set(SERVICES) == {
        "postgresql",
        "temporal-schema",
        "temporal",
        "temporal-setup",
        "temporal-ui",
        *DEE_SERVICES,
    }


def test_every_dependency_exists_and_the_start_order_has_no_cycle() -> None:
    for name in SERVICES:
        for target, options in RAW.depends_on(name).items():
            assert target in SERVICES, f"{name} depends on unknown service {target!r}"
            assert options.get("condition") in {
                "service_started",
                "service_healthy",
                "service_completed_successfully",
            }, (name, target)
    order = TopologicalSorter({name: set(RAW.depends_on(name)) for name in SERVICES})
    assert list(order.static_order())


def test_services_waited_for_as_healthy_have_a_healthcheck() -> None:
    for name in SERVICES:
        for target, options in RAW.depends_on(name).items():
            if options["condition"] == "service_healthy":
                assert "test" in SERVICES[target].get("healthcheck", {}), (name, target)


def test_one_shot_jobs_restart_only_on_failure_a_bounded_number_of_times() -> None:
    waited_for = {
        target
        for name in SERVICES
        for target, options in RAW.depends_on(name).items()
        if options["condition"] == "service_completed_successfully"
    }
    assert waited_for == {"temporal-schema", "temporal-setup", "dee-migrate"}
    for job in waited_for:
        # As Temporal's own files have them (on-failure:6 and :5): a job that keeps failing
        # stops, and what waits for it does not start.
        assert re.fullmatch(r"on-failure:\d+", SERVICES[job]["restart"]), job
    for name in set(SERVICES) - waited_for:
        assert SERVICES[name]["restart"] == "unless-stopped", name


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
        # ... DEE's schema is migrated by one job ...
        ("dee-migrate", {"postgresql": "service_healthy"}),
        # ... and the worker and the API start on a migrated database and a ready namespace.
        *(
            (
                service,
                {
                    "dee-migrate": "service_completed_successfully",
                    "temporal-setup": "service_completed_successfully",
                },
            )
            for service in ("dee-worker", "dee-api")
        ),
    ],
)
def test_start_order(service: str, waits_for: dict[str, str]) -> None:
    conditions = {
        target: options["condition"] for target, options in RAW.depends_on(service).items()
    }
    assert conditions.items() >= waits_for.items()


@pytest.mark.parametrize("service", ["postgresql", "temporal", "dee-api"])
def test_healthchecks(service: str) -> None:
    healthcheck = SERVICES[service]["healthcheck"]
    assert healthcheck["test"][0] in {"CMD", "CMD-SHELL"}
    assert {"interval", "timeout", "retries"} <= set(healthcheck)


def test_postgresql_is_ready_only_once_initialised() -> None:
    # The entrypoint's temporary server (init scripts) listens on the Unix socket only.
    (command,) = SERVICES["postgresql"]["healthcheck"]["test"][1:]
    assert command.startswith("pg_isready -h 127.0.0.1")


def test_only_the_migration_job_migrates() -> None:
    assert SERVICES["dee-migrate"]["command"] == ["db", "upgrade"]
    assert "upgrade" in dee_cli.commands["db"].commands  # type: ignore[attr-defined]
    for service in ("dee-worker", "dee-api"):
        # They check the schema revision and stop with "run `dee db upgrade`" instead.
        assert _env(service, "DEE_MIGRATE_ON_START") == "false"
    assert _env("dee-migrate", "DEE_DATABASE_URL") == _env("dee-worker", "DEE_DATABASE_URL")


def test_dee_services_run_one_image_built_once() -> None:
    built = [name for name, service in SERVICES.items() if "build" in service]
    assert built == ["dee-migrate"]
    images = {DEV.services[name]["image"] for name in DEE_SERVICES}
    assert images == {"dee:local"}
    for name in DEE_SERVICES:
        assert SERVICES[name]["command"][0] in dee_cli.commands, name


@pytest.mark.parametrize("service", sorted(REQUIRED))
def test_where_mail_goes_and_links_point_must_be_given(service: str) -> None:
    environment = RAW.environment(service)
    for name in REQUIRED[service]:
        assert environment[name].startswith(f"${{{name}:?"), name
        with pytest.raises(MissingVariable, match=name):
            interpolate(environment[name])
    # The rest have defaults, or mean "off" when empty.
    for name, value in environment.items():
        if name not in REQUIRED[service]:
            interpolate(value, {key: "x" for key in variables(COMPOSE_FILE) if key != name})


def test_the_file_does_not_load_without_the_required_settings() -> None:
    # Compose interpolates the whole file: nothing starts, not even postgresql alone.
    required = {name for name, op in variables(COMPOSE_FILE).items() if op == ":?"}
    assert required == {
        "DEE_SECRET_KEY",
        "DEE_PUBLIC_URL",
        "DEE_SMTP_URL",
        "DEE_FROM_ADDRESS",
        "DEE_DB_PASSWORD",
        "TEMPORAL_DB_PASSWORD",
    }
    for name in required:
        with pytest.raises(MissingVariable, match=name):
            Compose(COMPOSE_FILE, env={**DEV_ENV, name: ""})


def test_the_development_values_are_development_values() -> None:
    # deploy/dev.env fills in what is required, and no more.
    assert set(DEV_ENV) == {name for name, op in variables(COMPOSE_FILE).items() if op == ":?"} | {
        "DEE_API_KEYS"
    }
    assert urlsplit(_env("dee-worker", "DEE_PUBLIC_URL")).hostname == "127.0.0.1"
    assert _env("dee-worker", "DEE_SMTP_URL") == "smtp://host.docker.internal:1025"
    assert _env("dee-worker", "DEE_FROM_ADDRESS").endswith("@localhost")


def _env_example_sections() -> dict[str, dict[str, str]]:
    sections: dict[str, dict[str, str]] = {}
    current = ""
    for line in ENV_EXAMPLE.read_text().splitlines():
        heading = re.fullmatch(r"# --- (.+?) -+", line)
        if heading:
            current = heading[1]
        elif line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            sections.setdefault(current, {})[name] = value
    return sections


def test_env_example_lists_every_variable_and_marks_the_required_ones() -> None:
    sections = _env_example_sections()
    listed = {name: value for section in sections.values() for name, value in section.items()}
    used = variables(COMPOSE_FILE) | variables(TLS_COMPOSE_FILE)
    assert set(listed) == set(used)
    required = {name for name, op in used.items() if op == ":?"}
    assert sections["Required"] == dict.fromkeys(required, "")
    # Copied as it is, it does not start: every required value must be filled in.
    with pytest.raises(MissingVariable):
        Compose(COMPOSE_FILE, env=listed)
    # Its other values are the compose file's own defaults.
    for name, value in listed.items():
        default = re.search(rf"\$\{{{name}:-([^}}]*)\}}", COMPOSE_FILE.read_text())
        if default:
            assert value == default[1], name


def test_dee_processes_take_temporals_client_settings() -> None:
    for service in ("dee-worker", "dee-api"):
        environment = RAW.environment(service)
        for name in TEMPORAL_CLIENT:
            # Passed through from .env or the shell; empty ones count as unset
            # (dee.runs.temporal.temporal_environment).
            assert environment[name].startswith(f"${{{name}:-"), (service, name)
    assert _env("dee-worker", "TEMPORAL_ADDRESS") == "temporal:7233"
    assert "127.0.0.1:7233:7233" in SERVICES["temporal"]["ports"]
    assert _env("temporal-setup", "TEMPORAL_ADDRESS") == "temporal:7233"
    assert _env("dee-worker", "TEMPORAL_NAMESPACE") == _env("temporal-setup", "TEMPORAL_NAMESPACE")


def test_the_dee_database_is_the_one_the_init_script_creates() -> None:
    url = urlsplit(_env("dee-worker", "DEE_DATABASE_URL"))
    assert url.scheme == "postgresql"
    assert (url.hostname, url.port, url.path) == ("postgresql", 5432, "/dee")
    # The role and database the init script creates, with the password it is given.
    script = DEV.bind_mount("postgresql", "/docker-entrypoint-initdb.d/init-dee.sh").read_text()
    assert f"CREATE ROLE {url.username} LOGIN PASSWORD :'dee_password'" in script
    assert f"CREATE DATABASE dee OWNER {url.username};" in script
    assert 'dee_password="${DEE_DB_PASSWORD' in script
    assert _env("postgresql", "DEE_DB_PASSWORD") == url.password


def test_the_api_shares_the_workers_settings() -> None:
    worker, api = RAW.environment("dee-worker"), RAW.environment("dee-api")
    shared = ("DEE_DATABASE_URL", "DEE_SECRET_KEY", "DEE_PUBLIC_URL", "DEE_PAYLOAD_KEYS")
    for name in (*shared, *TEMPORAL_CLIENT, "DEE_TASK_QUEUE", "DEE_MIGRATE_ON_START"):
        assert api[name] == worker[name], name
    assert SERVICES["dee-api"]["command"] == ["serve", "--host", "0.0.0.0", "--port", "8000"]


def test_the_api_scales_without_a_host_port_conflict() -> None:
    (port,) = DEV.services["dee-api"]["ports"]
    host_ip, host_ports, container_port = port.split(":")
    first, _, last = host_ports.partition("-")
    # A range: each of up to ten replicas binds one of its ports, the first one 8000.
    assert (host_ip, container_port, first) == ("127.0.0.1", "8000", "8000")
    assert int(last) - int(first) + 1 == 10
    assert "container_name" not in SERVICES["dee-api"]


def test_the_web_ui_is_read_only_unless_said_otherwise() -> None:
    assert _env("temporal-ui", "TEMPORAL_DISABLE_WRITE_ACTIONS") == "true"
    assert _env("temporal-ui", "TEMPORAL_AUTH_ENABLED") == "false"
    assert _env("temporal-ui", "TEMPORAL_AUTH_TYPE") == "oidc"
    for name in ("PROVIDER_URL", "CLIENT_ID", "CLIENT_SECRET", "CALLBACK_URL"):
        assert RAW.environment("temporal-ui")[f"TEMPORAL_AUTH_{name}"] == (
            f"${{TEMPORAL_UI_AUTH_{name}:-}}"
        )


def test_the_web_ui_may_decode_through_the_api_with_its_sign_in() -> None:
    # Off by default, as encryption is: a UI calling a codec that is not there shows errors.
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
    script = DEV.bind_mount("temporal-setup", setup["entrypoint"][-1]).read_text()
    assert "temporal operator search-attribute create" in script
    assert "temporal operator namespace create" in script


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def test_one_temporal_version_for_the_server_and_its_schema_tool() -> None:
    images = {}
    for name, service in SERVICES.items():
        if name in DEE_SERVICES:
            continue
        pattern = r"(?P<repo>[\w./-]+):\$\{(?P<var>\w+):-(?P<default>[^}]+)\}"
        match = re.fullmatch(pattern, service["image"])
        assert match, f"{name}: pin {service['image']!r} as repo:${{VERSION:-x.y.z}}"
        assert match["default"] != "latest", name
        images[name] = (match["repo"], match["var"], match["default"])
    temporal = {name: image for name, image in images.items() if image[0] != "postgres"}
    assert {repo for repo, _, _ in temporal.values()} == {
        "temporalio/server",
        "temporalio/admin-tools",
        "temporalio/ui",
    }
    # The server and both admin-tools jobs: one variable, so one cannot be bumped alone.
    pins = {repo: (var, default) for repo, var, default in temporal.values()}
    server_side = {
        (var, default) for repo, var, default in temporal.values() if repo != "temporalio/ui"
    }
    assert server_side == {("TEMPORAL_VERSION", "1.32.0")}
    assert pins["temporalio/ui"] == ("TEMPORAL_UI_VERSION", "2.54.1")
    # Not behind the releases with the security fixes (server 1.30.1, UI 2.34.0 were).
    assert _version(pins["temporalio/server"][1]) > (1, 30, 1)
    assert _version(pins["temporalio/ui"][1]) > (2, 34, 0)
    assert "TEMPORAL_ADMINTOOLS_VERSION" not in variables(COMPOSE_FILE)


def test_temporal_and_its_schema_job_use_the_same_database() -> None:
    for name in ("DB", "DB_PORT", "POSTGRES_SEEDS", "POSTGRES_USER", "POSTGRES_PWD"):
        assert _env("temporal", name) == _env("temporal-schema", name), name
    assert _env("temporal", "DB") == "postgres12"
    assert _env("temporal", "POSTGRES_SEEDS") == "postgresql"
    assert _env("temporal", "POSTGRES_USER") == _env("postgresql", "POSTGRES_USER")
    assert _env("temporal", "POSTGRES_PWD") == _env("postgresql", "POSTGRES_PASSWORD")


def test_postgresql_allows_more_connections_than_its_default() -> None:
    command = DEV.services["postgresql"]["command"]
    assert command[:2] == ["postgres", "-c"]
    assert command[2] == "max_connections=200"


def test_temporal_reads_the_dynamic_config_that_is_mounted() -> None:
    # Relative paths are from the server image's working directory.
    path = PurePosixPath("/etc/temporal") / _env("temporal", "DYNAMIC_CONFIG_FILE_PATH")
    config = yaml.safe_load(DEV.bind_mount("temporal", str(path)).read_text())
    assert config["limit.maxIDLength"] == [{"value": 255, "constraints": {}}]


def test_data_lives_in_named_volumes_where_the_image_keeps_it() -> None:
    declared = set(RAW.document["volumes"])
    for name in SERVICES:
        for source, _ in RAW.volumes(name):
            assert source.startswith(".") or source in declared, (name, source)
    version = re.search(r":-(\d+)", SERVICES["postgresql"]["image"])
    assert version
    # postgres images 18+ moved PGDATA under /var/lib/postgresql/<major>/docker.
    data_dir = "/var/lib/postgresql/data" if int(version[1]) < 18 else "/var/lib/postgresql"
    assert ("postgresql-data", data_dir) in RAW.volumes("postgresql")


def test_bind_mounted_files_exist() -> None:
    for name in SERVICES:
        for source, _ in DEV.volumes(name):
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


def test_the_worker_is_killed_only_after_its_sends_had_time_to_finish() -> None:
    # DEE_SHUTDOWN_TIMEOUT (the SDK's graceful_shutdown_timeout) must end, with a few
    # seconds to spare for the worker's own exit, before compose's SIGKILL.
    grace = SERVICES["dee-worker"]["stop_grace_period"]
    parts = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", grace)
    assert parts and any(parts.groups()), grace
    grace_seconds = int(parts[1] or 0) * 60 + int(parts[2] or 0)
    settings = Settings.from_env(DEV.environment("dee-worker"))
    assert settings.shutdown_timeout + 5 <= grace_seconds


def test_the_worker_starts_with_the_development_values() -> None:
    # `dee worker` refuses a loopback DEE_PUBLIC_URL with a mail server elsewhere; the
    # development values (links to 127.0.0.1, mail to a catcher on the Docker host) must
    # not be that.
    environment = DEV.environment("dee-worker")
    assert Settings.from_env(environment).public_url_problem() is None
    # Positive control: the same values with a provider's server are refused.
    provider = {**environment, "DEE_SMTP_URL": "smtps://user:pw@smtp.example.com:465"}
    assert Settings.from_env(provider).public_url_problem() is not None
