"""The README's examples run and say what they claim."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.helpers.spec import EXAMPLES, ROOT

README = (ROOT / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


def _dee(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEE_DATABASE_URL": f"sqlite:///{cwd / 'readme.db'}"}
    return subprocess.run(
        [sys.executable, "-m", "dee.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_python_example_runs(tmp_path: Path) -> None:
    (tmp_path / "examples").symlink_to(EXAMPLES)
    (script,) = _blocks("python")
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "welcome 1 True\n"
    assert (tmp_path / ".dee" / "dee.db").exists()


def test_validation_output_is_what_the_readme_shows(tmp_path: Path) -> None:
    (block,) = [b for b in _blocks("text") if "broken-plan.yaml" in b]
    command, *expected = block.splitlines()
    result = _dee(*command.removeprefix("$ dee ").split(), cwd=ROOT)
    assert result.returncode == 1
    assert (result.stdout + result.stderr).splitlines() == expected


def test_quick_start_commands_print_what_the_readme_shows(tmp_path: Path) -> None:
    validate = _dee("plans", "validate", "examples/spec-plan.yaml", cwd=ROOT)
    assert validate.stdout == "examples/spec-plan.yaml: valid (7 steps)\n"
    assert "examples/spec-plan.yaml: valid (7 steps)" in README
    created = _dee("plans", "create", str(EXAMPLES / "spec-plan.yaml"), cwd=tmp_path)
    assert created.stdout == "outbound-intro v1\n"


def test_spec_plan_example_script_runs() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "spec_plan.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "outbound-intro: 7 steps, 0 problems" in result.stdout
    assert "needs: contact.firstName, product" in result.stdout
    assert result.stdout.rstrip().endswith("s5 --> s6")
