"""``dee dev`` with payload keys: Temporal keeps the runs encrypted, and the Temporal CLI and
the Temporal Web UI (in headless Chromium, as an operator uses it) show them decoded through
the API server's codec endpoint once they hold an API key."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, async_playwright

from tests.helpers.dev import TINY_PLAN, Ports, dee_dev, run_dee, until
from tests.helpers.temporal import executable

CHROMIUM = Path("/usr/bin/chromium")
KEY = "2026a:" + base64.b64encode(b"u" * 32).decode()
#: Only in the run's input: the contact's first name and company.
NAME = "Zephyrine"
COMPANY = "Quillfeather"
# A CRM's id for the contact, so the test knows the run id without DEE's contact id key.
CONTACT = json.dumps(
    {"id": "crm-4711", "email": "ana@example.com", "firstName": NAME, "company": COMPANY}
)
RUN_ID = "tiny:crm-4711"


@pytest.fixture
def chromium() -> Path:
    """Debian's Chromium (`apt-get install chromium`, which .ci/run does): in CI its absence
    fails the test; elsewhere it skips, saying so."""
    if not CHROMIUM.is_file():
        message = (
            f"THE TEMPORAL WEB UI TEST DID NOT RUN: {CHROMIUM} is missing; install it with "
            "`apt-get install -y chromium` (CI does)"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return CHROMIUM


async def temporal_show(ports: Ports, *codec: str) -> list[bytes]:
    """The data of every payload of the run's history, as ``temporal workflow show`` (the
    Temporal CLI, not DEE) prints it with the options ``codec``."""
    process = await asyncio.create_subprocess_exec(
        executable("temporal"),
        "workflow",
        "show",
        "--workflow-id",
        RUN_ID,
        "--address",
        f"127.0.0.1:{ports.temporal}",
        "--output",
        "json",
        *codec,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode()
    found: list[bytes] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            if isinstance(value.get("data"), str) and "metadata" in value:
                found.append(base64.b64decode(value["data"]))
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(json.loads(out))
    assert found, "no payloads in the history"
    return found


async def use_codec_with_credentials(page: Page, ui: str, codec: str) -> None:
    """What an operator does once in the Web UI of a dev server (which cannot be told to send
    credentials): the Codec Server settings, this browser's endpoint, with its cookies."""
    await page.goto(f"{ui}/namespaces/default/workflows")
    await page.get_by_test_id("data-encoder-status-configured").click()
    await page.get_by_text("Use my browser setting and ignore Cluster-level setting.").click()
    await page.locator("#data-encoder-endpoint-input").fill(codec)
    await page.get_by_text("Include cross-origin credentials").click()
    await page.get_by_role("button", name="Apply").click()


async def shown_input(page: Page, ui: str) -> None:
    """Open the run in the Web UI and scroll its input to the end, where the contact is."""
    await page.goto(f"{ui}/namespaces/default/workflows/{RUN_ID}")
    # The first editor on the page is the input's (the result's is beside it).
    await page.locator(".cm-content:visible").first.click()
    await page.keyboard.press("Control+End")


async def test_the_web_ui_shows_the_decoded_input_of_an_encrypted_run(
    tmp_path: Path, env: dict[str, str], ports: Ports, chromium: Path
) -> None:
    (tmp_path / "tiny.yaml").write_text(TINY_PLAN, encoding="utf-8")
    (tmp_path / "content" / "templates").mkdir(parents=True)
    (tmp_path / "content" / "templates" / "tmpl_hello.html").write_text(
        "<p>Hi {{ contact.firstName }}</p>", encoding="utf-8"
    )
    env = {**env, "DEE_PAYLOAD_KEYS": KEY}
    api = f"http://127.0.0.1:{ports.api}"
    ui = f"http://127.0.0.1:{ports.ui}"
    async with asyncio.timeout(240), dee_dev(cwd=tmp_path, env=env, ports=ports) as dev:
        assert f"  Payloads  encrypted with key '2026a', decoded at {api}/codec" in dev.banner
        api_key = (tmp_path / ".dee" / "api_key").read_text().strip()
        await run_dee("plans", "create", "tiny.yaml", cwd=tmp_path, env=env)
        await run_dee("runs", "start", "tiny", "--contact", CONTACT, cwd=tmp_path, env=env)

        async def shown() -> dict[str, Any]:
            state: dict[str, Any] = json.loads(
                await run_dee("runs", "show", RUN_ID, "--json", cwd=tmp_path, env=env)
            )
            return state

        assert (await until(shown, lambda state: state["status"] == "completed"))["outcome"] == (
            "sent"
        )

        # The Temporal CLI sees ciphertext, unless it decodes through DEE with an API key.
        assert not any(NAME.encode() in data for data in await temporal_show(ports))
        decoded = await temporal_show(
            ports, "--codec-endpoint", f"{api}/codec", "--codec-auth", f"Bearer {api_key}"
        )
        assert any(NAME.encode() in data and COMPANY.encode() in data for data in decoded)

        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=str(chromium))
            try:
                page = await browser.new_page(viewport={"width": 1400, "height": 1000})
                page.set_default_timeout(30_000)
                name = page.get_by_text(re.compile(NAME))

                # Wired to DEE's codec, but not signed in: the UI says it cannot decode.
                await shown_input(page, ui)
                await (
                    page.get_by_text("Codec Server could not connect")
                    .filter(visible=True)
                    .first.wait_for()
                )
                assert await name.count() == 0

                await page.goto(f"{api}/codec/login")
                await page.get_by_label("API key").fill(api_key)
                await page.get_by_role("button", name="Sign in").click()
                await page.get_by_text("Signed in").wait_for()
                await use_codec_with_credentials(page, ui, f"{api}/codec")

                await shown_input(page, ui)
                await name.wait_for()
                await page.get_by_text(re.compile(COMPANY)).wait_for()
                await page.screenshot(path=str(tmp_path / "web-ui-decoded.png"))
            finally:
                await browser.close()
        assert await dev.stop() == 0
