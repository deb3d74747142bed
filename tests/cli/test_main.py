"""The ``dee`` command, run in-process with click's runner, and once as a real process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from dee.cli.main import dee
from dee.plans.graph import to_mermaid
from dee.plans.loader import load_plan

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SPEC_PLAN = EXAMPLES / "spec-plan.yaml"

# A plan with three problems: the branch has no default, "orphan" cannot be reached and
# the template is not in the (empty) content folder.
INVALID_PLAN = """\
id: broken
name: Broken plan
metadata: {createdBy: tests}
steps:
  - {type: sendEmail, id: hello, templateId: tmpl_missing, subject: "Hi"}
  - type: branch
    id: route
    conditions:
      - {when: 'events.hasOpen("hello")', goto: done}
  - {type: wait, id: orphan, duration: {days: 1}}
  - {type: end, id: done, outcome: finished}
transitions:
  - {from: hello, to: route}
  - {from: route, to: done}
  - {from: orphan, to: done}
"""
INVALID_PLAN_PROBLEMS = [
    "hello: missing-template: template 'tmpl_missing' not found: "
    "expected templates/tmpl_missing.html in the content folder",
    "route: branch-without-default: the branch has no default: "
    "add {when: default, goto: <step>} as its last condition so every run has somewhere to go",
    "orphan: unreachable-step: no path leads from the first step 'hello' to 'orphan': "
    "add a transition or a branch condition that goes to it, or remove it",
]

UNKNOWN_STEP_TYPE_PLAN = """\
id: typo
name: Typo
metadata: {createdBy: tests}
steps:
  - {type: sms, id: text-them, body: hi}
  - {type: end, id: done, outcome: finished}
"""


@pytest.fixture
def database(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'dee.db'}"


@pytest.fixture
def spec_copy(tmp_path: Path) -> Path:
    """The spec example and its content, in a folder the test may change."""
    folder = tmp_path / "example"
    shutil.copytree(EXAMPLES, folder)
    return folder / "spec-plan.yaml"


def run(database: str, *args: str) -> Result:
    return CliRunner().invoke(dee, ["--database", database, *args], catch_exceptions=False)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_validate_the_spec_example(database: str) -> None:
    result = run(database, "plans", "validate", str(SPEC_PLAN))

    assert (result.exit_code, result.stdout, result.stderr) == (
        0,
        f"{SPEC_PLAN}: valid (7 steps)\n",
        "",
    )


def test_validate_reports_every_problem_one_per_line(database: str, tmp_path: Path) -> None:
    plan = write(tmp_path / "broken.yaml", INVALID_PLAN)

    result = run(database, "plans", "validate", str(plan))

    assert result.exit_code == 1
    assert result.stdout.splitlines() == [f"{plan}: {line}" for line in INVALID_PLAN_PROBLEMS]
    assert result.stderr == "3 problems\n"


def test_validate_a_yaml_syntax_error(database: str, tmp_path: Path) -> None:
    plan = write(tmp_path / "bad.yaml", "id: x\nname: x\nsteps:\n  - {type: end, id: done\n")

    result = run(database, "plans", "validate", str(plan))

    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == (
        f"{plan}:5:1: invalid YAML: expected ',' or '}}', but got '<stream end>'\n"
    )


def test_validate_a_missing_file(database: str, tmp_path: Path) -> None:
    result = run(database, "plans", "validate", str(tmp_path / "nope.yaml"))

    assert result.exit_code == 2
    assert (
        result.stderr
        == f"{tmp_path / 'nope.yaml'}: cannot read the file: No such file or directory\n"
    )


def test_validate_an_unknown_step_type(database: str, tmp_path: Path) -> None:
    plan = write(tmp_path / "typo.yaml", UNKNOWN_STEP_TYPE_PLAN)

    result = run(database, "plans", "validate", str(plan))

    assert result.exit_code == 1
    assert result.stdout == (
        f"{plan}: text-them: unknown-step-type: steps[0]: step type 'sms' does not exist; "
        "expected one of sendEmail, sendVoice, wait, branch, end\n"
    )
    assert result.stderr == "1 problem\n"


def test_validate_with_a_step_limit_and_no_content(database: str, tmp_path: Path) -> None:
    result = run(
        database,
        "plans",
        "validate",
        str(SPEC_PLAN),
        "--max-steps",
        "3",
        "--content",
        str(tmp_path / "missing"),
    )

    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0] == (
        f"{SPEC_PLAN}: (plan): too-many-steps: the plan has 7 steps; the limit is 3: "
        "split it into several plans"
    )
    assert [line.split(": ")[1:3] for line in lines[1:]] == [
        ["intro-email", "missing-template"],
        ["warm-follow-up", "missing-template"],
        ["cold-follow-up", "missing-template"],
        ["follow-up-call", "missing-script"],
        ["follow-up-call", "missing-voicemail-message"],
    ]
    assert result.stderr == "6 problems\n"


def test_create_then_create_again_then_change_the_content(database: str, spec_copy: Path) -> None:
    first = run(database, "plans", "create", str(spec_copy))
    again = run(database, "plans", "create", str(spec_copy))
    template = spec_copy.parent / "content" / "templates" / "tmpl_intro.html"
    template.write_text(template.read_text() + "<p>P.S. We are hiring.</p>\n")
    changed = run(database, "plans", "create", str(spec_copy))

    assert (first.exit_code, first.stdout, first.stderr) == (0, "outbound-intro v1\n", "")
    assert (again.exit_code, again.stdout) == (0, "outbound-intro v1\n")
    assert again.stderr == (
        "unchanged: the plan and its content equal the latest version, outbound-intro v1\n"
    )
    assert (changed.exit_code, changed.stdout, changed.stderr) == (0, "outbound-intro v2\n", "")


def test_create_names_the_creator_when_the_plan_does_not(database: str, tmp_path: Path) -> None:
    plan = write(
        tmp_path / "tiny.yaml",
        "id: tiny\nname: Tiny\nsteps:\n"
        "  - {type: wait, id: pause, duration: {hours: 1}}\n"
        "  - {type: end, id: done, outcome: finished}\n",
    )
    created = run(database, "plans", "create", str(plan), "--created-by", "ana")
    shown = run(database, "plans", "show", "tiny", "--json")
    assert (created.exit_code, created.stdout) == (0, "tiny v1\n")
    assert json.loads(shown.stdout)["metadata"]["createdBy"] == "ana"


def test_create_refuses_an_invalid_plan(database: str, tmp_path: Path) -> None:
    plan = write(tmp_path / "broken.yaml", INVALID_PLAN)

    result = run(database, "plans", "create", str(plan))

    assert result.exit_code == 1
    assert result.stdout.splitlines() == [f"{plan}: {line}" for line in INVALID_PLAN_PROBLEMS]
    assert result.stderr == "3 problems\n"
    assert run(database, "plans", "list").stdout == ""


def test_list(database: str, spec_copy: Path) -> None:
    empty = run(database, "plans", "list")
    run(database, "plans", "create", str(spec_copy))
    spec_copy.write_text(spec_copy.read_text().replace("3, hours: 12", "4"))
    run(database, "plans", "create", str(spec_copy))

    result = run(database, "plans", "list")

    assert (empty.exit_code, empty.stdout) == (0, "")
    assert empty.stderr == "no plans yet: create one with dee plans create FILE\n"
    assert result.exit_code == 0
    header, row = result.stdout.splitlines()
    assert header.split() == ["ID", "NAME", "LATEST", "VERSIONS", "UPDATED"]
    assert row.startswith("outbound-intro  Intro sequence with a follow-up call  v2      2  ")
    # Columns line up under their headings.
    assert row.index("v2") == header.index("LATEST")
    assert row.index("20") == header.index("UPDATED")


def test_show(database: str) -> None:
    run(database, "plans", "create", str(SPEC_PLAN))

    result = run(database, "plans", "show", "outbound-intro")

    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[:3] == [
        "plan:        outbound-intro v1",
        "name:        Intro sequence with a follow-up call",
        "created by:  sales-ops@example.com",
    ]
    assert lines[3].startswith("created at:  20")
    assert lines[5].startswith("digest:      ") and len(lines[5]) == 13 + 64
    assert "  wait-for-reply  wait       3d 12h" in lines
    assert (
        '  check-response  branch     events.hasReply("intro-email") -> end-sequence; '
        'events.hasOpen("intro-email") -> warm-follow-up; default -> cold-follow-up'
    ) in lines
    assert "  check-response -> warm-follow-up (opened)" in lines
    assert "content (6 files):" in lines
    assert (
        "  templates/tmpl_intro.html           "
        "sha256 5010349b477984d517a5cefeafed6b1033d43d6547bfe15e6c6a61376a30a8a8"
    ) in lines


def test_show_json_creates_the_same_version_again(database: str, tmp_path: Path) -> None:
    run(database, "plans", "create", str(SPEC_PLAN))

    shown = run(database, "plans", "show", "outbound-intro", "--json")
    saved = write(tmp_path / "saved.json", shown.stdout)
    again = run(database, "plans", "create", str(saved), "--content", str(EXAMPLES / "content"))

    document = json.loads(shown.stdout)
    assert (document["id"], document["version"]) == ("outbound-intro", 1)
    assert document["steps"] == load_plan(SPEC_PLAN).to_document()["steps"]
    assert (again.exit_code, again.stdout) == (0, "outbound-intro v1\n")
    assert again.stderr.startswith("unchanged: ")


def test_show_an_unknown_version(database: str) -> None:
    run(database, "plans", "create", str(SPEC_PLAN))

    result = run(database, "plans", "show", "outbound-intro", "--version", "9")

    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == (
        "error: plan 'outbound-intro' v9 does not exist: see `dee plans list`\n"
    )


def test_graph_by_file_and_by_id(database: str) -> None:
    run(database, "plans", "create", str(SPEC_PLAN))

    by_file = run(database, "plans", "graph", str(SPEC_PLAN))
    by_id = run(database, "plans", "graph", "outbound-intro", "--version", "1")

    expected = to_mermaid(load_plan(SPEC_PLAN))
    assert (by_file.exit_code, by_file.stdout) == (0, expected)
    assert (by_id.exit_code, by_id.stdout) == (0, expected)


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        # Not an id, so a file: one that does not exist.
        (["no/such/plan.yaml"], 2, "no/such/plan.yaml: cannot read the file: No such file"),
        # An id that is not in the registry.
        (["no-such-plan"], 1, "error: plan 'no-such-plan' does not exist"),
        # Files have no versions.
        ([str(SPEC_PLAN), "--version", "2"], 2, "Error: --version applies to plans in the"),
    ],
)
def test_graph_errors(database: str, args: list[str], status: int, message: str) -> None:
    result = run(database, "plans", "graph", *args)

    assert result.exit_code == status
    assert message in result.stderr


def test_graph_of_a_file_with_data_problems(database: str, tmp_path: Path) -> None:
    plan = write(tmp_path / "typo.yaml", UNKNOWN_STEP_TYPE_PLAN)

    result = run(database, "plans", "graph", str(plan))

    assert result.exit_code == 1
    assert result.stdout.startswith(f"{plan}: text-them: unknown-step-type: ")


def test_an_unsupported_database_is_an_error_not_a_traceback() -> None:
    result = run("mysql://db.example.com/dee", "plans", "list")

    assert result.exit_code == 1
    assert result.stderr.startswith("error: unsupported database 'mysql://db.example.com/dee'")


def test_the_console_script_exit_codes(tmp_path: Path) -> None:
    broken = write(tmp_path / "broken.yaml", INVALID_PLAN)
    unparsable = write(tmp_path / "bad.yaml", "steps: [\n")

    def validate(plan: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dee.cli.main", "plans", "validate", str(plan)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    valid, invalid, bad = validate(SPEC_PLAN), validate(broken), validate(unparsable)

    assert (valid.returncode, valid.stdout, valid.stderr) == (
        0,
        f"{SPEC_PLAN}: valid (7 steps)\n",
        "",
    )
    assert (invalid.returncode, len(invalid.stdout.splitlines()), invalid.stderr) == (
        1,
        3,
        "3 problems\n",
    )
    assert (bad.returncode, bad.stdout) == (2, "")
    assert bad.stderr.startswith(f"{unparsable}:2:1: invalid YAML: ")


def test_step_details_keep_control_characters_off_the_terminal() -> None:
    from dee.cli._format import step_details
    from dee.plans.model import BranchStep, SendEmailStep

    email = SendEmailStep(id="m", template_id="t", subject="Hi\t\x9b there", reply_to="a\x1b@b.c")
    assert step_details(email) == 'template t, subject "Hi\\t? there", reply-to a?@b.c'
    branch = BranchStep(id="b", conditions=[("a  and\nb", "x"), ("default", "y")])
    assert step_details(branch) == "a and b -> x; default -> y"


def test_validate_a_number_too_long_to_read_is_a_parse_error(database: str, tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text("id: huge\nname: Huge\nsteps:\n  - " + "9" * 5000 + "\n")
    result = run(database, "plans", "validate", str(plan))
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == f"{plan}:4:5: invalid YAML: a number of more than 4,300 digits\n"


def test_validate_reads_at_most_a_document_from_an_endless_file(database: str) -> None:
    # /dev/zero says it has no size and never ends: what is read is capped, not stat().
    result = run(database, "plans", "validate", "/dev/zero")
    assert result.exit_code == 2
    assert result.stderr == (
        "/dev/zero: the file has more than 4,194,304 bytes; a plan document may have 4,194,304\n"
    )
