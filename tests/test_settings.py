"""DEE's configuration from the environment."""

from __future__ import annotations

import re

import pytest

from dee.settings import Settings, split_address


def test_defaults() -> None:
    assert Settings.from_env({}) == Settings()
    assert Settings().tracking_sweep_after == 30.0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("45", 45.0),
        # Fractions, for tests and impatient operators.
        ("0.5", 0.5),
        # Empty is unset, as for every other variable.
        ("", 30.0),
    ],
)
def test_tracking_sweep_after(value: str, seconds: float) -> None:
    assert Settings.from_env({"DEE_TRACKING_SWEEP_AFTER": value}).tracking_sweep_after == seconds


@pytest.mark.parametrize("value", ["soon", "0", "-5", "nan", "inf", "1e400"])
def test_tracking_sweep_after_refuses_what_is_no_wait(value: str) -> None:
    with pytest.raises(
        ValueError,
        match=f"DEE_TRACKING_SWEEP_AFTER must be a number of seconds above 0, not '{value}'",
    ):
        Settings.from_env({"DEE_TRACKING_SWEEP_AFTER": value})


@pytest.mark.parametrize(("value", "size"), [("0", 0), ("2000", 2000), (" 64 ", 64), ("", 500)])
def test_workflow_cache(value: str, size: int) -> None:
    assert Settings.from_env({"DEE_WORKFLOW_CACHE": value}).workflow_cache == size


@pytest.mark.parametrize("value", ["-1", "many", "1.5", "1e3"])
def test_workflow_cache_refuses_what_is_no_count(value: str) -> None:
    with pytest.raises(ValueError, match="DEE_WORKFLOW_CACHE must be a whole number"):
        Settings.from_env({"DEE_WORKFLOW_CACHE": value})


@pytest.mark.parametrize(
    ("value", "migrates"),
    [("", True), ("true", True), ("ON", True), ("1", True), ("false", False), ("0", False)],
)
def test_migrate_on_start(value: str, migrates: bool) -> None:
    assert Settings.from_env({"DEE_MIGRATE_ON_START": value}).migrate_on_start is migrates


def test_migrate_on_start_refuses_what_is_not_a_yes_or_no() -> None:
    with pytest.raises(ValueError, match="DEE_MIGRATE_ON_START must be true or false, not 'y'"):
        Settings.from_env({"DEE_MIGRATE_ON_START": "y"})


# Running it: shutdown, logs, metrics and the public-URL check (one block, issue 12).


@pytest.mark.parametrize(("value", "seconds"), [("", 25.0), ("0", 0.0), ("40", 40.0), ("2.5", 2.5)])
def test_shutdown_timeout(value: str, seconds: float) -> None:
    assert Settings.from_env({"DEE_SHUTDOWN_TIMEOUT": value}).shutdown_timeout == seconds


@pytest.mark.parametrize("value", ["-1", "soon", "nan", "inf"])
def test_shutdown_timeout_refuses_what_is_no_duration(value: str) -> None:
    with pytest.raises(ValueError, match="DEE_SHUTDOWN_TIMEOUT must be a number of seconds"):
        Settings.from_env({"DEE_SHUTDOWN_TIMEOUT": value})


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, ("text", "INFO")),
        ({"DEE_LOG_FORMAT": "JSON", "DEE_LOG_LEVEL": "debug"}, ("json", "DEBUG")),
        ({"DEE_LOG_FORMAT": " text ", "DEE_LOG_LEVEL": "warning"}, ("text", "WARNING")),
    ],
)
def test_log_settings(env: dict[str, str], expected: tuple[str, str]) -> None:
    settings = Settings.from_env(env)
    assert (settings.log_format, settings.log_level) == expected


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DEE_LOG_FORMAT": "xml"}, "DEE_LOG_FORMAT must be text or json, not 'xml'"),
        # NOTSET and CRITICAL are not offered: one would log everything, one nearly nothing.
        ({"DEE_LOG_LEVEL": "loud"}, "DEE_LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR"),
        ({"DEE_LOG_LEVEL": "NOTSET"}, "DEE_LOG_LEVEL must be one of"),
        ({"DEE_WORKER_METRICS_ADDRESS": "9464"}, "must be host:port, such as 127.0.0.1:9464"),
        ({"DEE_WORKER_METRICS_ADDRESS": "0.0.0.0:99999"}, "must be host:port"),
        ({"DEE_WORKER_METRICS_ADDRESS": ":9464"}, "must be host:port"),
        ({"DEE_ALLOW_LOOPBACK_PUBLIC_URL": "maybe"}, "must be true or false, not 'maybe'"),
    ],
)
def test_running_settings_refuse_what_they_cannot_use(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Settings.from_env(env)


def test_metrics_settings() -> None:
    settings = Settings.from_env(
        {"DEE_WORKER_METRICS_ADDRESS": "[::1]:9464", "DEE_METRICS_KEYS": " a, b ,"}
    )
    assert settings.worker_metrics_address == "[::1]:9464"
    assert split_address("[::1]:9464", name="X") == ("::1", 9464)
    assert settings.metrics_keys == ("a", "b")
    # Keys never show in a repr (tracebacks, logs).
    assert "metrics_keys" not in repr(settings)


@pytest.mark.parametrize(
    ("public_url", "smtp_url", "refused"),
    [
        # The defaults: a local catcher, local links (dee dev).
        ("http://127.0.0.1:8000", "smtp://127.0.0.1:1025", False),
        ("http://localhost:8000", "smtp://localhost:25", False),
        ("http://[::1]:8000", "smtp://[::1]:25", False),
        # A container's host is this machine too (the compose file's mail catcher).
        ("http://127.0.0.1:8000", "smtp://host.docker.internal:1025", False),
        ("http://localhost:8000", "smtp://host.containers.internal:1025", False),
        # Real mail with loopback links: each is refused.
        ("http://127.0.0.1:8000", "smtps://user:pw@smtp.example.com:465", True),
        ("http://localhost:8000", "smtp://smtp.example.com:587?starttls=true", True),
        ("http://app.localhost", "smtp://10.0.0.5:25", True),
        ("http://127.8.9.10", "smtp://smtp.example.com", True),
        ("http://[::1]:8000", "smtp://smtp.example.com", True),
        ("http://0.0.0.0:8000", "smtp://smtp.example.com", True),
        # Public links: any mail server will do.
        ("https://dee.example.com", "smtp://smtp.example.com", False),
        ("https://dee.example.com", "smtp://127.0.0.1:25", False),
        # A name that only looks loopback is not.
        ("https://localhost.example.com", "smtp://smtp.example.com", False),
    ],
)
def test_public_url_problem(public_url: str, smtp_url: str, refused: bool) -> None:
    settings = Settings.from_env({"DEE_PUBLIC_URL": public_url, "DEE_SMTP_URL": smtp_url})
    problem = settings.public_url_problem()
    assert (problem is not None) is refused
    if problem:
        assert "DEE_PUBLIC_URL" in problem and "DEE_ALLOW_LOOPBACK_PUBLIC_URL=true" in problem
        # The credentials in DEE_SMTP_URL are never repeated.
        assert "pw" not in problem.replace("https://", "")
    allowed = Settings.from_env(
        {
            "DEE_PUBLIC_URL": public_url,
            "DEE_SMTP_URL": smtp_url,
            "DEE_ALLOW_LOOPBACK_PUBLIC_URL": "true",
        }
    )
    assert allowed.public_url_problem() is None
