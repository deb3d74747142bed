"""What the plan registry and the send ledger share: a migrated database behind a URL."""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import TracebackType
from typing import Concatenate, ParamSpec, Self, TypeVar

from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from dee.errors import DeeError
from dee.settings import database_pool, migrate_on_start
from dee.storage.database import make_engine, resolve_url, safe_url
from dee.storage.database import migrate as _migrate
from dee.storage.schema import check_schema

__all__ = ["Store", "database_errors"]

_P = ParamSpec("_P")
_R = TypeVar("_R")
_S = TypeVar("_S", bound="Store")


class Store:
    """A database opened from a URL (``None``: ``$DEE_DATABASE_URL``, else
    ``sqlite:///.dee/dee.db``) with its schema migrated; closes as a context manager.

    ``migrate`` (default: ``$DEE_MIGRATE_ON_START``, true unless set otherwise) says whether
    opening migrates the database; when false, a database at another schema revision is
    refused with :class:`dee.storage.schema.SchemaVersionError` saying to run
    ``dee db upgrade``.
    """

    #: What the store is called in messages, and the error it raises.
    label = "database"
    error: type[DeeError] = DeeError

    def __init__(
        self, url: str | None = None, *, echo: bool = False, migrate: bool | None = None
    ) -> None:
        try:
            migrate = migrate_on_start() if migrate is None else migrate
            # Read by make_engine: a wrong value is named here rather than as a traceback.
            database_pool()
        except ValueError as exc:
            raise self.error(str(exc)) from None
        self.url = resolve_url(url)
        self._engine = make_engine(self.url, echo=echo)
        try:
            if migrate:
                _migrate(self._engine)
            else:
                check_schema(self._engine)
        except SQLAlchemyError as exc:
            self._engine.dispose()
            raise self.error(
                f"cannot open the {self.label} {safe_url(self.url)}: {_reason(exc)}"
            ) from exc
        except BaseException:
            self._engine.dispose()
            raise

    def __repr__(self) -> str:
        return f"{type(self).__name__}({safe_url(self.url)!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the database connections."""
        self._engine.dispose()


def _reason(exc: SQLAlchemyError) -> object:
    return exc.orig if isinstance(exc, DBAPIError) else exc


def database_errors(
    method: Callable[Concatenate[_S, _P], _R],
) -> Callable[Concatenate[_S, _P], _R]:
    """A database that fails mid-call (connection lost, schema gone) raises the store's own
    error naming the database, not a driver traceback."""

    @functools.wraps(method)
    def wrapper(store: _S, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(store, *args, **kwargs)
        except SQLAlchemyError as exc:
            where = safe_url(store.url)
            error = store.error(f"the {store.label} {where} failed: {_reason(exc)}")
            error.transient = True
            raise error from exc

    return wrapper
