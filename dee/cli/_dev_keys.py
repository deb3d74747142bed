"""The keys ``dee dev`` keeps under its state folder (``.dee/``), each made once and read
back on every start, readable by their owner only."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

__all__ = ["ensure_api_key", "ensure_secret_key"]

logger = logging.getLogger(__name__)


def ensure_secret_key(state_dir: Path, *, given: str | None = None) -> str:
    """``given`` (the environment's ``DEE_SECRET_KEY``) when set, else the key kept in
    ``state_dir``, else a new one written there (readable by its owner only), so tracking
    and unsubscribe links stay valid across restarts.
    """
    if given:
        return given
    return _kept_key(state_dir / "secret_key", what="a secret key")


def ensure_api_key(state_dir: Path) -> str:
    """The development API key kept in ``state_dir``, else a new one written there (readable
    by its owner only), for when the environment sets no ``DEE_API_KEYS``: the same key on
    every start, so scripts and the browser's /docs keep working across restarts.
    """
    return _kept_key(state_dir / "api_key", what="an API key")


def _kept_key(path: Path, *, what: str) -> str:
    """The key in ``path``, else a new random one written there with mode 0600."""
    if path.is_file():
        key = path.read_text(encoding="utf-8").strip()
        if key:
            return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(key + "\n")
    logger.info("generated %s in %s", what, path)
    return key
