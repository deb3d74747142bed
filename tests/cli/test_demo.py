"""The README's quick start: scripts/demo.sh (what `make demo` runs) from start to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers.smtp import free_port
from tests.helpers.spec import ROOT


def test_demo_runs_a_plan_on_the_embedded_default(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DEE": str(Path(sys.executable).parent / "dee"),
        "DEE_DEMO_EXIT": "1",
        "DEE_DEMO_PORT": str(free_port()),
        "DEE_DEMO_UI_PORT": str(free_port()),
        "DEE_DEMO_SMTP_PORT": str(free_port()),
        "DEE_DEMO_API_PORT": str(free_port()),
    }
    for name in ("DEE_DATABASE_URL", "DEE_SMTP_URL", "DEE_SECRET_KEY", "TEMPORAL_ADDRESS"):
        env.pop(name, None)
    result = subprocess.run(
        [str(ROOT / "scripts" / "demo.sh")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "quick-intro v1" in result.stdout
    assert "status:       completed" in result.stdout
    assert "outcome:      replied" in result.stdout
    assert "warm-follow-up  sendEmail  sent <" in result.stdout
    assert len(list((tmp_path / ".dee" / "outbox").glob("*.eml"))) == 2
    assert (tmp_path / ".dee" / "dee.db").exists()
    assert (tmp_path / ".dee" / "temporal.db").exists()
