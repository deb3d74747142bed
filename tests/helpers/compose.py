"""The compose files read as Docker Compose reads them, without a container engine: YAML
with its anchors and merge keys, ``${...}`` interpolation against an environment (a
``--env-file``), and a second file merged over the first (``-f a.yml -f b.yml``) for the
parts these files use: ``environment`` by key, ``volumes`` by target, the rest replaced.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from tests.helpers.spec import ROOT

__all__ = [
    "COMPOSE_FILE",
    "DEV_ENV_FILE",
    "ENV_EXAMPLE",
    "TLS_COMPOSE_FILE",
    "Compose",
    "MissingVariable",
    "interpolate",
    "read_env_file",
    "variables",
]

COMPOSE_FILE = ROOT / "docker-compose.yml"
TLS_COMPOSE_FILE = ROOT / "docker-compose.tls.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DEV_ENV_FILE = ROOT / "deploy" / "dev.env"

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}; or $$, an
# escaped $ (so "$${NAME}" is the text "${NAME}", for the container's shell).
_VARIABLE = re.compile(r"\$\$|\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


class MissingVariable(AssertionError):
    """A ``${NAME:?...}`` whose variable is unset or empty: Compose refuses the file."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"required variable {name} is missing a value: {message}")
        self.name = name


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """``value`` as Compose reads it with ``env`` set: defaults in, ``$$`` as ``$``."""
    env = env or {}

    def replace(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        if name is None:
            return "$"
        given = env.get(name)
        if op in {":-", ":?"} and not given:
            given = None
        if given is not None:
            return given
        if op in {":-", "-"}:
            return arg
        if op in {":?", "?"}:
            raise MissingVariable(name, arg)
        return ""

    return _VARIABLE.sub(replace, value)


def variables(path: Path) -> dict[str, str | None]:
    """Every variable ``path`` interpolates, with its operator (``:-``, ``:?``, or None)."""
    found: dict[str, str | None] = {}
    for match in _VARIABLE.finditer(path.read_text()):
        if match["name"] is not None:
            found.setdefault(match["name"], match["op"])
    return found


def read_env_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines of an env file, comments and blank lines skipped."""
    env = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, separator, value = line.partition("=")
            assert separator, f"{path.name}: not NAME=value: {line!r}"
            env[name.strip()] = value
    return env


def _walk(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [_walk(item, env) for item in node]
    if isinstance(node, dict):
        return {key: _walk(value, env) for key, value in node.items()}
    return node


def _target(volume: str) -> str:
    return volume.split(":")[1]


def _merge_service(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if key == "environment":
            merged[key] = {**base.get(key, {}), **value}
        elif key == "volumes":
            targets = {_target(volume) for volume in value}
            kept = [volume for volume in base.get(key, []) if _target(volume) not in targets]
            merged[key] = kept + list(value)
        else:
            merged[key] = value
    return merged


class Compose:
    """``files`` merged in order, as written (``env=None``) or interpolated with ``env``."""

    def __init__(self, *files: Path, env: dict[str, str] | None = None) -> None:
        documents = []
        for path in files:
            document = yaml.safe_load(path.read_text())
            assert isinstance(document, dict), path
            documents.append(document if env is None else _walk(document, env))
        self.document: dict[str, Any] = documents[0]
        services: dict[str, dict[str, Any]] = dict(self.document["services"])
        for document in documents[1:]:
            for name, service in document["services"].items():
                assert name in services, f"an overlay adds no service: {name}"
                services[name] = _merge_service(services[name], service)
        self.services = services

    def environment(self, service: str) -> dict[str, str]:
        environment = self.services[service].get("environment", {})
        if isinstance(environment, list):
            environment = dict(item.split("=", 1) for item in environment)
        return {str(key): str(value) for key, value in environment.items()}

    def depends_on(self, service: str) -> dict[str, dict[str, Any]]:
        depends_on = self.services[service].get("depends_on", {})
        if isinstance(depends_on, list):
            return {name: {"condition": "service_started"} for name in depends_on}
        return {str(name): dict(options) for name, options in depends_on.items()}

    def volumes(self, service: str) -> list[tuple[str, str]]:
        """``(source, target)`` of each short-syntax volume of ``service``."""
        mounts = []
        for volume in self.services[service].get("volumes", []):
            assert isinstance(volume, str), f"{service}: use the short volume syntax"
            source, target, *_ = volume.split(":")
            mounts.append((source, target))
        return mounts

    def bind_mount(self, service: str, target: str) -> Path:
        """The file or folder on this side that ``service`` sees at (or above) ``target``."""
        for source, mounted_at in self.volumes(service):
            if source.startswith(".") and PurePosixPath(target).is_relative_to(mounted_at):
                return ROOT / source / PurePosixPath(target).relative_to(mounted_at)
        raise AssertionError(f"{service} mounts nothing at {target}")
