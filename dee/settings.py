"""DEE's configuration, from the environment.

=========================  =============================================  ==========================
variable                   meaning                                        default
=========================  =============================================  ==========================
``DEE_DATABASE_URL``       plan registry, send ledger, suppression list   ``sqlite:///.dee/dee.db``
``DEE_SMTP_URL``           ``smtp://user:pass@host:port`` (``?starttls``  ``smtp://127.0.0.1:1025``
                           for STARTTLS) or ``smtps://`` (implicit TLS)
``DEE_FROM_ADDRESS``       ``From`` of emails when a run names no sender  ``dee@localhost``
``DEE_PUBLIC_URL``         base of tracking, unsubscribe and callback     ``http://127.0.0.1:8000``
                           links
``DEE_SECRET_KEY``         signs tracking and unsubscribe tokens (HMAC)   none: required to send
``TWILIO_ACCOUNT_SID``     Twilio credentials                             none: required to call
``TWILIO_AUTH_TOKEN``
``DEE_TWILIO_API_URL``     Twilio's API base URL                          ``https://api.twilio.com``
``DEE_TASK_QUEUE``         the worker's task queue                        ``dee``
``DEE_API_KEYS``           bearer keys for the REST API, comma-separated  none: the API refuses all
``DEE_SENDGRID_WEBHOOK_``  SendGrid's event webhook verification key      none: the webhook refuses
``PUBLIC_KEY``             (base64 DER, from SendGrid's settings)
``DEE_INBOUND_SECRET``     shared secret in the inbound-mail webhook URL  none: inbound refuses
                           (``/webhooks/inbound/...?key=...``)
``DEE_TRACKING_SWEEP_``    seconds after a tracking hit that the server's ``30``
``AFTER``                  sweeper sends its signal if it has not gone
                           out (:mod:`dee.server.sweeper`)
``DEE_PAYLOAD_KEYS``       keys that encrypt what runs carry through      none: payloads are not
                           Temporal, ``<id>:<base64 32 bytes>``, comma-   encrypted
                           separated: the first encrypts, all decrypt
                           (see :mod:`dee.runs.codec`)
``DEE_CODEC_ORIGINS``      origins of the Temporal Web UI allowed to      none: no cross-origin
                           call ``/codec`` from a browser (CORS),         calls
                           comma-separated: ``https://ui.example.com``
``DEE_WORKFLOW_CACHE``     runs a worker keeps in memory between their    ``500``
                           workflow tasks; others are replayed from
                           their history when they wake (BENCHMARKS.md)
``DEE_MIGRATE_ON_START``   whether a process opening the database         ``true``
                           migrates it; ``false`` (production): it only
                           checks the schema revision and refuses to
                           start on another one (``dee db upgrade``)
``DEE_DATABASE_POOL_``     PostgreSQL connections each store of a         ``5``
``SIZE``                   process keeps open (README: Deployment)
``DEE_DATABASE_MAX_``      connections a store may open beyond those      ``10``
``OVERFLOW``               while busy
``DEE_SHUTDOWN_TIMEOUT``   seconds a stopping worker lets the sends in    ``25``
                           flight finish before it cancels them (keep it
                           below the orchestrator's stop grace period)
``DEE_LOG_FORMAT``         ``text``, or ``json``: one object a line       ``text``
``DEE_LOG_LEVEL``          ``DEBUG``, ``INFO``, ``WARNING`` or ``ERROR``  ``INFO``
``DEE_WORKER_METRICS_``    ``host:port`` where the worker serves          none: no metrics served
``ADDRESS``                Prometheus metrics (DEE's and the SDK's)
``DEE_METRICS_KEYS``       bearer keys for ``dee serve``'s ``/metrics``,  none: ``/metrics`` is 404
                           comma-separated
``DEE_ALLOW_LOOPBACK_``    ``true``: let a worker whose ``DEE_PUBLIC_``   ``false``: it refuses
``PUBLIC_URL``             ``URL`` is a loopback address send through a
                           mail server that is not (see
                           :meth:`Settings.public_url_problem`)
=========================  =============================================  ==========================

Temporal itself is configured the way every Temporal client is (``TEMPORAL_ADDRESS``,
``TEMPORAL_NAMESPACE``, ``TEMPORAL_API_KEY``, TLS, profiles): see
:mod:`temporalio.envconfig`.
"""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from urllib.parse import urlsplit

__all__ = [
    "LOG_LEVELS",
    "MIGRATE_ON_START_ENV",
    "Settings",
    "database_pool",
    "migrate_on_start",
    "split_address",
    "split_keys",
]

#: The levels ``DEE_LOG_LEVEL`` takes.
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str | None = None
    smtp_url: str = "smtp://127.0.0.1:1025"
    from_address: str = "dee@localhost"
    public_url: str = "http://127.0.0.1:8000"
    secret_key: str | None = None
    twilio_account_sid: str | None = None
    twilio_auth_token: str | None = None
    twilio_api_url: str = "https://api.twilio.com"
    task_queue: str = "dee"
    api_keys: tuple[str, ...] = ()
    sendgrid_webhook_public_key: str | None = None
    inbound_secret: str | None = None
    tracking_sweep_after: float = 30.0
    payload_keys: tuple[str, ...] = field(default=(), repr=False)
    codec_origins: tuple[str, ...] = ()
    #: The worker's ``max_cached_workflows``. Each cached run holds its own copy of the
    #: sandboxed workflow module and its input (about 0.17 MiB); a run that is not cached
    #: replays its history when it wakes (about a millisecond for a short one).
    workflow_cache: int = 500
    # Deployment: whether a process migrates the database when it opens it
    # (dee.storage.schema); the production compose file runs `dee db upgrade` once instead.
    migrate_on_start: bool = True
    # Each store (dee.storage.store) has its own pool of PostgreSQL connections: this many
    # kept open, and up to max_overflow more while busy (dee.storage.database.make_engine).
    database_pool_size: int = 5
    database_max_overflow: int = 10
    # Running it (issue 12): shutdown, logs, metrics, the public URL check.
    #: The worker's ``graceful_shutdown_timeout``: after SIGTERM, the seconds activities in
    #: flight get to finish before they are cancelled (the SDK's default is none at all).
    shutdown_timeout: float = 25.0
    log_format: Literal["text", "json"] = "text"
    log_level: str = "INFO"
    #: ``host:port`` of the worker's Prometheus endpoint; ``None``: none.
    worker_metrics_address: str | None = None
    metrics_keys: tuple[str, ...] = field(default=(), repr=False)
    allow_loopback_public_url: bool = False

    def public_url_problem(self) -> str | None:
        """Why a worker must not send with these settings, if it must not: links to a
        loopback ``public_url`` (``localhost``, ``127.0.0.1``, ``::1``) in emails that
        leave this machine through a mail server that is not on it reach no recipient. A
        mail server on this machine, or on the host of the worker's container
        (``host.docker.internal``), is taken for a local mail catcher."""
        if self.allow_loopback_public_url or not _is_loopback(urlsplit(self.public_url).hostname):
            return None
        smtp_host = urlsplit(self.smtp_url).hostname
        if _is_loopback(smtp_host) or (smtp_host or "").lower() in _CONTAINER_HOSTS:
            return None
        return (
            f"DEE_PUBLIC_URL is {self.public_url!r}, a loopback address, but DEE_SMTP_URL "
            f"sends through {smtp_host!r}: the tracking, unsubscribe and callback links in "
            "what it sends would lead recipients nowhere. Set DEE_PUBLIC_URL to the address "
            "the world reaches `dee serve` at (https://dee.example.com), or, for a mail "
            "catcher on another local host, set DEE_ALLOW_LOOPBACK_PUBLIC_URL=true"
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        defaults = cls()

        def get(name: str, default: str) -> str:
            return env.get(name) or default

        def seconds(name: str, default: float) -> float:
            text = env.get(name)
            if not text:
                return default
            try:
                value = float(text)
            except ValueError:
                value = math.nan
            if not 0 < value < math.inf:
                raise ValueError(f"{name} must be a number of seconds above 0, not {text!r}")
            return value

        def flag(name: str) -> bool:
            text = env.get(name, "").strip().lower()
            if text in {"", "0", "false", "no", "off"}:
                return False
            if text in {"1", "true", "yes", "on"}:
                return True
            raise ValueError(f"{name} must be true or false, not {env[name]!r}")

        def count(name: str, default: int) -> int:
            text = env.get(name)
            if not text:
                return default
            if not text.strip().isdigit():
                raise ValueError(f"{name} must be a whole number of 0 or more, not {text!r}")
            return int(text)

        return cls(
            database_url=env.get("DEE_DATABASE_URL") or None,
            smtp_url=get("DEE_SMTP_URL", defaults.smtp_url),
            from_address=get("DEE_FROM_ADDRESS", defaults.from_address),
            public_url=get("DEE_PUBLIC_URL", defaults.public_url).rstrip("/"),
            secret_key=env.get("DEE_SECRET_KEY") or None,
            twilio_account_sid=env.get("TWILIO_ACCOUNT_SID") or None,
            twilio_auth_token=env.get("TWILIO_AUTH_TOKEN") or None,
            twilio_api_url=get("DEE_TWILIO_API_URL", defaults.twilio_api_url).rstrip("/"),
            task_queue=get("DEE_TASK_QUEUE", defaults.task_queue),
            api_keys=split_keys(env.get("DEE_API_KEYS", "")),
            sendgrid_webhook_public_key=env.get("DEE_SENDGRID_WEBHOOK_PUBLIC_KEY") or None,
            inbound_secret=env.get("DEE_INBOUND_SECRET") or None,
            tracking_sweep_after=seconds("DEE_TRACKING_SWEEP_AFTER", defaults.tracking_sweep_after),
            payload_keys=split_keys(env.get("DEE_PAYLOAD_KEYS", "")),
            # Browsers send an origin without a trailing slash; one written with it would
            # never match.
            codec_origins=tuple(
                origin.rstrip("/") for origin in split_keys(env.get("DEE_CODEC_ORIGINS", ""))
            ),
            workflow_cache=count("DEE_WORKFLOW_CACHE", defaults.workflow_cache),
            migrate_on_start=migrate_on_start(env),
            database_pool_size=database_pool(env)[0],
            database_max_overflow=database_pool(env)[1],
            **_running_it(env, flag=flag),
        )


MIGRATE_ON_START_ENV = "DEE_MIGRATE_ON_START"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def migrate_on_start(environ: Mapping[str, str] | None = None) -> bool:
    """``DEE_MIGRATE_ON_START`` (default true): whether opening the database migrates it."""
    env = os.environ if environ is None else environ
    text = env.get(MIGRATE_ON_START_ENV, "").strip()
    if not text:
        return True
    if text.lower() in _TRUE | _FALSE:
        return text.lower() in _TRUE
    raise ValueError(f"{MIGRATE_ON_START_ENV} must be true or false, not {text!r}")


def database_pool(environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """``(DEE_DATABASE_POOL_SIZE, DEE_DATABASE_MAX_OVERFLOW)``, default ``(5, 10)``:
    SQLAlchemy's own defaults, per store."""
    env = os.environ if environ is None else environ
    values = []
    for name, default, least in (
        ("DEE_DATABASE_POOL_SIZE", 5, 1),
        ("DEE_DATABASE_MAX_OVERFLOW", 10, 0),
    ):
        text = env.get(name, "").strip()
        if not text:
            values.append(default)
        elif text.isdigit() and int(text) >= least:
            values.append(int(text))
        else:
            raise ValueError(f"{name} must be a whole number of {least} or more, not {text!r}")
    return values[0], values[1]


def split_keys(value: str) -> tuple[str, ...]:
    """The keys in a comma-separated setting (``DEE_API_KEYS``, ``DEE_PAYLOAD_KEYS``, and
    ``DEE_SECRET_KEY`` or ``DEE_INBOUND_SECRET`` while they are rotated), trimmed, empty ones
    dropped."""
    return tuple(key.strip() for key in value.split(",") if key.strip())


def _running_it(env: Mapping[str, str], *, flag: Callable[[str], bool]) -> dict[str, Any]:
    """The settings of shutdown, logs and metrics, from ``env``."""
    timeout = env.get("DEE_SHUTDOWN_TIMEOUT") or "25"
    try:
        shutdown_timeout = float(timeout)
    except ValueError:
        shutdown_timeout = math.nan
    if not 0 <= shutdown_timeout < math.inf:
        raise ValueError(
            f"DEE_SHUTDOWN_TIMEOUT must be a number of seconds of 0 or more, not {timeout!r}"
        )
    log_format = (env.get("DEE_LOG_FORMAT") or "text").strip().lower()
    if log_format not in {"text", "json"}:
        raise ValueError(f"DEE_LOG_FORMAT must be text or json, not {env['DEE_LOG_FORMAT']!r}")
    log_level = (env.get("DEE_LOG_LEVEL") or "INFO").strip().upper()
    if log_level not in LOG_LEVELS:
        raise ValueError(
            f"DEE_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, not {env['DEE_LOG_LEVEL']!r}"
        )
    address = env.get("DEE_WORKER_METRICS_ADDRESS", "").strip() or None
    if address is not None:
        split_address(address, name="DEE_WORKER_METRICS_ADDRESS")
    return {
        "shutdown_timeout": shutdown_timeout,
        "log_format": log_format,
        "log_level": log_level,
        "worker_metrics_address": address,
        "metrics_keys": split_keys(env.get("DEE_METRICS_KEYS", "")),
        "allow_loopback_public_url": flag("DEE_ALLOW_LOOPBACK_PUBLIC_URL"),
    }


def split_address(address: str, *, name: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:9464`` for IPv6; port 0: any free one) as a host and a port;
    ``name`` is the setting it came from, for the error."""
    host, _, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(
            f"{name} must be host:port, such as 127.0.0.1:9464 or [::1]:9464, not {address!r}"
        )
    return host, int(port)


#: What a container calls the machine it runs on (Docker, Podman): a mail server there is as
#: local as one on 127.0.0.1 is to a worker outside a container (the compose file's default
#: mail catcher is one).
_CONTAINER_HOSTS: Final = frozenset(
    {"host.docker.internal", "gateway.docker.internal", "host.containers.internal"}
)


def _is_loopback(host: str | None) -> bool:
    """Whether ``host`` names this machine only: ``localhost`` (and its subdomains, RFC 6761),
    a loopback address, or the unspecified address (which no recipient can reach either)."""
    if not host:
        return False
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified
