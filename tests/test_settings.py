"""DEE's configuration from the environment."""

from __future__ import annotations

import pytest

from dee.settings import Settings


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
