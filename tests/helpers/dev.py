"""``dee dev`` as a real process, for tests: start it on free ports, read its banner, run
``dee`` commands beside it, stop it as Ctrl-C does."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers.temporal import executable

__all__ = [
    "STARTUP_TIMEOUT",
    "STOP_TIMEOUT",
    "TINY_PLAN",
    "DevProcess",
    "Ports",
    "answers",
    "dee_dev",
    "dee_dev_command",
    "dev_servers",
    "run_dee",
    "until",
]

TINY_PLAN = """\
id: tiny
name: Tiny
metadata: {createdBy: tests}
steps:
  - {type: sendEmail, id: hello, templateId: tmpl_hello, subject: "Hello {{ contact.firstName }}"}
  - {type: end, id: done, outcome: sent}
"""

#: Bounds on how long `dee dev` may take to come up and to stop.
STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0


@dataclass(frozen=True)
class Ports:
    temporal: int
    ui: int
    smtp: int
    api: int


async def run_dee(*args: str, cwd: Path, env: dict[str, str]) -> str:
    """Run a ``dee`` command to completion; its stdout (it must succeed)."""
    process = await asyncio.create_subprocess_exec(
        executable("dee"),
        *args,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, (args, out, err)
    return out.decode()


def answers(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def dev_servers(port: int) -> list[int]:
    """Pids of Temporal dev servers serving ``port`` (from /proc: no extra packages)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"start-dev" in argv and str(port).encode() in argv:
            found.append(int(entry.name))
    return found


@dataclass
class DevProcess:
    process: asyncio.subprocess.Process
    banner: list[str]

    async def stop(self) -> int:
        """SIGINT, as Ctrl-C sends; the exit status, which must come within STOP_TIMEOUT."""
        self.process.send_signal(signal.SIGINT)
        return await asyncio.wait_for(self.process.wait(), timeout=STOP_TIMEOUT)


def dee_dev_command(ports: Ports, *args: str) -> list[str]:
    """``dee dev`` on ``ports``, with ``args``."""
    return [
        str(executable("dee")),
        "dev",
        "--port",
        str(ports.temporal),
        "--ui-port",
        str(ports.ui),
        "--smtp-port",
        str(ports.smtp),
        "--api-port",
        str(ports.api),
        *args,
    ]


@asynccontextmanager
async def dee_dev(
    *args: str, cwd: Path, env: dict[str, str], ports: Ports
) -> AsyncIterator[DevProcess]:
    with (cwd / "dev-stderr.log").open("ab") as stderr:
        process = await asyncio.create_subprocess_exec(
            *dee_dev_command(ports, *args),
            cwd=cwd,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
    try:
        assert process.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not lines or lines[-1] != "Press Ctrl-C to stop.":
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"dee dev did not come up: {lines}"
            line = await asyncio.wait_for(process.stdout.readline(), timeout=remaining)
            assert line, f"dee dev exited: {lines}\n{(cwd / 'dev-stderr.log').read_text()}"
            lines.append(line.decode().rstrip("\n"))
        assert answers(ports.temporal) and answers(ports.smtp) and answers(ports.ui)
        yield DevProcess(process, lines)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def until(read: Any, holds: Any, *, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await read()
        if holds(value) or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.3)
