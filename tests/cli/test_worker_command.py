"""``dee worker`` and ``python worker.py`` refuse settings that would send links to nowhere."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.smtp import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "command",
    [
        # What the image runs.
        [sys.executable, "-m", "dee.cli.main", "worker"],
        [sys.executable, "worker.py"],
    ],
)
@pytest.mark.parametrize(
    ("public_url", "smtp_url", "refused"),
    [
        # Real mail, loopback links: refused before anything connects.
        ("http://localhost:8000", "smtp://smtp.example.com:587?starttls=true", True),
        # The positive control: public links pass the check and the worker goes on to
        # connect to Temporal (nothing listens on the port given: it fails there instead).
        ("https://dee.example.com", "smtp://smtp.example.com:587?starttls=true", False),
    ],
)
def test_worker_refuses_a_loopback_public_url_with_remote_smtp(
    command: list[str], public_url: str, smtp_url: str, refused: bool
) -> None:
    env = {
        **os.environ,
        "TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",
        "DEE_PUBLIC_URL": public_url,
        "DEE_SMTP_URL": smtp_url,
        "DEE_SECRET_KEY": "k",
    }
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    if refused:
        assert done.returncode == 2
        assert done.stderr.startswith(
            "error: DEE_PUBLIC_URL is 'http://localhost:8000', a loopback"
        )
        assert "DEE_ALLOW_LOOPBACK_PUBLIC_URL=true" in done.stderr
        assert "Traceback" not in done.stderr
    else:
        assert done.returncode != 0
        assert "loopback" not in done.stderr
        assert "Temporal" in done.stderr or "connect" in done.stderr.lower()
