"""Fixtures of the ``dee`` command's tests: free ports and a fresh shell's environment for
``dee dev`` (:mod:`tests.helpers.dev`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.dev import Ports
from tests.helpers.smtp import free_port


@pytest.fixture
def ports() -> Ports:
    return Ports(free_port(), free_port(), free_port(), free_port())


@pytest.fixture
def env(tmp_path: Path, ports: Ports) -> dict[str, str]:
    """The environment of a fresh shell: nothing of DEE's or Temporal's set but the address."""
    base = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("TEMPORAL_", "DEE_"))
    }
    return {
        **base,
        "TEMPORAL_ADDRESS": f"127.0.0.1:{ports.temporal}",
        "TEMPORAL_CONFIG_FILE": str(tmp_path / "no-temporal-profiles.toml"),
    }
