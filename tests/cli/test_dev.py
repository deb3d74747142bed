"""``dee dev`` as a real process: it starts, runs a plan end to end, serves the API with a
development key, keeps its runs and keys across a restart, and stops cleanly on SIGINT without
leaving the Temporal dev server behind."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import re
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest

from dee.cli.dev import DevOptions, banner, dev_server_command, ensure_api_key, ensure_secret_key
from dee.settings import Settings
from tests.helpers.dev import (
    STOP_TIMEOUT,
    TINY_PLAN,
    Ports,
    answers,
    dee_dev,
    dee_dev_command,
    dev_servers,
    run_dee,
    until,
)
from tests.helpers.temporal import executable


async def test_dee_dev_runs_a_plan_and_stops_cleanly(
    tmp_path: Path, env: dict[str, str], ports: Ports
) -> None:
    plan_file = tmp_path / "tiny.yaml"
    plan_file.write_text(TINY_PLAN, encoding="utf-8")
    (tmp_path / "content" / "templates").mkdir(parents=True)
    (tmp_path / "content" / "templates" / "tmpl_hello.html").write_text(
        "<p>Hi {{ contact.firstName }}</p>", encoding="utf-8"
    )
    outbox = tmp_path / ".dee" / "outbox"
    contact = '{"email": "ana@example.com", "firstName": "Ana"}'

    api_key_file = tmp_path / ".dee" / "api_key"
    api = f"http://127.0.0.1:{ports.api}"

    async with dee_dev(cwd=tmp_path, env=env, ports=ports) as dev:
        api_key = api_key_file.read_text().strip()
        assert len(api_key) >= 32
        assert api_key_file.stat().st_mode & 0o777 == 0o600
        assert dev.banner == [
            "DEE dev environment is up:",
            f"  Temporal  127.0.0.1:{ports.temporal} (namespace default)",
            f"  Web UI    http://127.0.0.1:{ports.ui}",
            f"  SMTP      smtp://127.0.0.1:{ports.smtp} -> .dee/outbox/",
            "  Worker    task queue 'dee'",
            f"  API       {api} (docs at /docs)",
            f"  API key   {api_key}",
            "  Payloads  not encrypted (set DEE_PAYLOAD_KEYS to encrypt them)",
            "  State     .dee/temporal.db, .dee/secret_key, .dee/api_key",
            f'Try the API: curl -H "Authorization: Bearer {api_key}" {api}/v1/plans',
            f"Point dee at it with: export TEMPORAL_ADDRESS=127.0.0.1:{ports.temporal}",
            "Press Ctrl-C to stop.",
        ]
        assert await run_dee("plans", "create", "tiny.yaml", cwd=tmp_path, env=env) == "tiny v1\n"
        async with httpx.AsyncClient(base_url=api, timeout=10) as http:
            accepted = await http.get("/v1/plans", headers={"Authorization": f"Bearer {api_key}"})
            assert accepted.status_code == 200, accepted.text
            assert [plan["id"] for plan in accepted.json()] == ["tiny"]
            refused = await http.get("/v1/plans")
            assert refused.status_code == 401
            wrong = await http.get("/v1/plans", headers={"Authorization": "Bearer not-the-key"})
            assert wrong.status_code == 401
            assert (await http.get("/docs")).status_code == 200
        started = await run_dee(
            "runs", "start", "tiny", "--contact", contact, cwd=tmp_path, env=env
        )
        run_id = started.strip()
        # The default contact id is a keyed hash of the address, not the address.
        assert re.fullmatch(r"tiny:c-[a-z2-7]{24}", run_id), run_id

        async def show() -> dict[str, Any]:
            shown: dict[str, Any] = json.loads(
                await run_dee("runs", "show", run_id, "--json", cwd=tmp_path, env=env)
            )
            return shown

        state = await until(show, lambda state: state["status"] == "completed")
        assert state["outcome"] == "sent"
        [saved] = list(outbox.glob("*.eml"))
        message = email.message_from_bytes(saved.read_bytes(), policy=email.policy.default)
        assert (message["To"], message["Subject"]) == ("ana@example.com", "Hello Ana")
        assert message["X-Envelope-To"] == "ana@example.com"

        assert await dev.stop() == 0
    assert dev_servers(ports.temporal) == []
    assert not answers(ports.temporal) and not answers(ports.smtp)
    assert (tmp_path / ".dee" / "temporal.db").is_file()
    key = (tmp_path / ".dee" / "secret_key").read_text().strip()
    assert len(key) >= 32
    assert (tmp_path / ".dee" / "secret_key").stat().st_mode & 0o777 == 0o600
    # DEE's lines reach the log; the migrations' INFO lines (registry, ledger) do not.
    log = (tmp_path / "dev-stderr.log").read_text()
    assert "INFO dee.cli._dev_keys: generated an API key in .dee/api_key" in log
    assert "INFO dee.cli.dev: stopping" in log
    assert "alembic" not in log and "Running upgrade" not in log

    # Started again, without a worker: the finished run is still there, and `dee worker`
    # run beside it does the work.
    async with dee_dev("--no-worker", cwd=tmp_path, env=env, ports=ports) as dev:
        assert "  Worker" not in "\n".join(dev.banner)
        assert f"  API key   {api_key}" in dev.banner
        state = await show()
        assert (state["status"], state["outcome"]) == ("completed", "sent")

        bob = '{"email": "bob@example.com", "firstName": "Bob"}'
        await run_dee("runs", "start", "tiny", "--contact", bob, cwd=tmp_path, env=env)
        worker_env = {
            **env,
            "DEE_SMTP_URL": f"smtp://127.0.0.1:{ports.smtp}",
            "DEE_SECRET_KEY": key,
        }
        worker = await asyncio.create_subprocess_exec(
            executable("dee"),
            "worker",
            cwd=tmp_path,
            env=worker_env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            saved = await until(
                lambda: asyncio.sleep(0, result=list(outbox.glob("*.eml"))),
                lambda found: len(found) == 2,
            )
            assert len(saved) == 2
        finally:
            worker.send_signal(signal.SIGINT)
            assert await asyncio.wait_for(worker.wait(), timeout=STOP_TIMEOUT) == 0
        assert await dev.stop() == 0
    assert dev_servers(ports.temporal) == []
    assert (tmp_path / ".dee" / "secret_key").read_text().strip() == key
    assert api_key_file.read_text().strip() == api_key


def test_dev_server_command_keeps_state_and_registers_attributes(tmp_path: Path) -> None:
    options = DevOptions(state_dir=tmp_path / ".dee", port=7300, ui_port=8300)
    command = dev_server_command(Path("/bin/temporal"), options)
    assert command[:3] == ["/bin/temporal", "server", "start-dev"]
    pairs = list(zip(command[3::2], command[4::2], strict=True))
    assert ("--ip", "127.0.0.1") in pairs
    assert ("--port", "7300") in pairs
    assert ("--ui-port", "8300") in pairs
    assert ("--db-filename", str(tmp_path / ".dee" / "temporal.db")) in pairs
    assert [value for flag, value in pairs if flag == "--search-attribute"] == [
        "DeePlanId=Keyword",
        "DeePlanVersion=Int",
        "DeeContactId=Keyword",
        "DeeCurrentStep=Keyword",
        "DeeOutcome=Keyword",
    ]


def test_the_web_ui_decodes_through_the_api_servers_codec_only_with_payload_keys(
    tmp_path: Path,
) -> None:
    options = DevOptions(state_dir=tmp_path / ".dee", ui_port=8300, api_port=8100)
    assert "--ui-codec-endpoint" not in dev_server_command(Path("/bin/temporal"), options)
    command = dev_server_command(Path("/bin/temporal"), options, codec_endpoint=options.codec_url)
    assert command[-2:] == ["--ui-codec-endpoint", "http://127.0.0.1:8100/codec"]
    # A browser may call it from the UI's address, or from the same port as localhost.
    assert options.ui_origins == ("http://127.0.0.1:8300", "http://localhost:8300")

    keys = ("2026b:" + "b" * 43 + "=", "2026a:" + "a" * 43 + "=")
    lines = banner(options, Settings(payload_keys=keys), api_key="k3y")
    assert "  Payloads  encrypted with key '2026b', decoded at http://127.0.0.1:8100/codec" in lines
    assert lines[-4:-2] == [
        "Decoded payloads in the Web UI: sign in at http://127.0.0.1:8100/codec/login with an "
        "API key, then in the UI's",
        "Codec Server settings use http://127.0.0.1:8100/codec from your browser and tick "
        "'Include cross-origin credentials'.",
    ]
    # The keys themselves are never printed.
    assert not any("a" * 43 in line or "b" * 43 in line for line in lines)


def test_secret_key_is_generated_once_unless_given(tmp_path: Path) -> None:
    state = tmp_path / ".dee"
    assert ensure_secret_key(state, given="from-env") == "from-env"
    assert not (state / "secret_key").exists()
    key = ensure_secret_key(state)
    assert ensure_secret_key(state) == key
    assert (state / "secret_key").stat().st_mode & 0o777 == 0o600


def test_api_key_is_generated_once_and_kept_private(tmp_path: Path) -> None:
    state = tmp_path / ".dee"
    key = ensure_api_key(state)
    assert len(key) >= 32
    path = state / "api_key"
    assert path.read_text() == key + "\n"
    assert path.stat().st_mode & 0o777 == 0o600
    assert ensure_api_key(state) == key
    assert ensure_secret_key(state) != key


def test_banner_shows_the_dev_api_key_and_how_to_use_it() -> None:
    lines = banner(DevOptions(), Settings(api_keys=("k3y",)), api_key="k3y")
    assert "  API key   k3y" in lines
    assert "  State     .dee/temporal.db, .dee/secret_key, .dee/api_key" in lines
    assert 'Try the API: curl -H "Authorization: Bearer k3y" http://127.0.0.1:8000/v1/plans' in (
        lines
    )
    assert not any("DEE_API_KEYS" in line for line in lines)
    # Keys from DEE_API_KEYS are the environment's own: never printed.
    from_env = banner(DevOptions(), Settings(api_keys=("env-only-key",)))
    assert not any("env-only-key" in line or "Bearer" in line for line in from_env)


def test_dev_log_leaves_out_migration_chatter(tmp_path: Path) -> None:
    """The logging `dee dev` (and `dee worker`, `dee serve`) sets up, then a registry on a new
    SQLite file, which runs every migration: DEE's lines show, Alembic's INFO lines do not."""
    script = textwrap.dedent(
        """
        import logging, sys
        from dee.cli.main import _log_to_stderr
        from dee.plans.registry import PlanRegistry

        _log_to_stderr()
        logging.getLogger("dee.cli.dev").info("a line of DEE's")
        with PlanRegistry(sys.argv[1]) as registry:
            registry.list_plans()
        """
    )
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    done = subprocess.run(
        [sys.executable, "-c", script, url], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "fresh.db").is_file()
    assert "INFO dee.cli.dev: a line of DEE's" in done.stderr
    assert "alembic" not in done.stderr
    for chatter in ("Context impl", "Will assume", "Running upgrade"):
        assert chatter not in done.stderr


def test_banner_without_worker_says_how_to_run_one() -> None:
    lines = banner(DevOptions(worker=False), Settings())
    assert lines[-2] == (
        'No worker: run one with DEE_SMTP_URL=smtp://127.0.0.1:1025 DEE_SECRET_KEY="$(cat '
        '.dee/secret_key)" dee worker'
    )
    assert not any("TEMPORAL_ADDRESS" in line for line in lines)


async def test_a_busy_port_is_refused_by_name(
    tmp_path: Path, env: dict[str, str], ports: Ports
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", ports.smtp))
        taken.listen()
        process = await asyncio.create_subprocess_exec(
            *dee_dev_command(ports),
            cwd=tmp_path,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 1
    assert out == b""
    assert (
        f"error: the SMTP server cannot use 127.0.0.1:{ports.smtp}: it is in use; is another "
        "`dee dev` or Temporal server running? Choose another port with --smtp-port"
    ) in err.decode()
    assert dev_servers(ports.temporal) == []


if sys.platform != "linux":  # pragma: no cover - /proc is how the tests find processes
    pytestmark = pytest.mark.skip(reason="needs /proc")
