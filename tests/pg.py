"""A throwaway PostgreSQL server for tests and benches, started from the server binaries on this machine.

    with PostgresServer.start() as server:
        url = server.create_database()

Fixtures: ``postgres_server`` (one per test session, or xdist worker) and ``postgres_url`` (a fresh database per
test). Without PostgreSQL they skip, or fail under ``CI`` so a CI machine never passes by skipping.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Self

import pytest

from qolaba_mcp.ledger import LedgerStore, open_ledger

# initdb refuses to run as root (CI runs as root): the server then runs as this OS user.
OS_USER = "postgres"
# Speed over durability: the data is thrown away.
_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off", "shared_buffers=32MB")
# CREATE DATABASE copies a few hundred files: on tmpfs a test's fresh database takes 0.05 s, not 0.4 s.
_TMPFS = Path("/dev/shm")
_TMPFS_MIN_FREE = 1 << 30


class PostgresUnavailable(Exception):
    """No PostgreSQL server binaries here, or no way to run them (a server that fails to start is a RuntimeError)."""


def find_bin_dir() -> Path:
    """The folder holding initdb and pg_ctl: from PATH, else the newest /usr/lib/postgresql/*/bin (Debian's)."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda path: [int(part) for part in Path(path).parts[-3].split(".") if part.isdigit()],
    )
    if versions:
        return Path(versions[-1]).parent
    raise PostgresUnavailable("no PostgreSQL server binaries (initdb) on PATH or in /usr/lib/postgresql/*/bin")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """A PostgreSQL cluster in a temporary folder, trusting local connections, on a free loopback port."""

    def __init__(self, *, bin_dir: Path, root: Path, port: int, as_user: list[str]) -> None:
        self.bin_dir, self.root, self.port, self._as_user = bin_dir, root, port, as_user
        self.data = root / "data"

    @classmethod
    def start(cls) -> Self:
        bin_dir = find_bin_dir()
        on_tmpfs = _TMPFS.is_dir() and os.access(_TMPFS, os.W_OK) and shutil.disk_usage(_TMPFS).free > _TMPFS_MIN_FREE
        root = Path(tempfile.mkdtemp(prefix="qolaba-pg-", dir=_TMPFS if on_tmpfs else None))
        as_user: list[str] = []
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam(OS_USER)
            except KeyError:
                shutil.rmtree(root)
                raise PostgresUnavailable(f"running as root, and no {OS_USER!r} OS user to run PostgreSQL") from None
            os.chown(root, user.pw_uid, user.pw_gid)
            as_user = ["runuser", "-u", OS_USER, "--"]
        server = cls(bin_dir=bin_dir, root=root, port=_free_port(), as_user=as_user)
        try:
            server._run("initdb", "-D", str(server.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
            options = f"-c listen_addresses=127.0.0.1 -p {server.port} -k {root}"
            options += "".join(f" -c {setting}" for setting in _SETTINGS)
            log = str(root / "server.log")
            server._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(server.data), "-l", log, "-o", options)
        except BaseException:
            server.stop()
            raise
        return server

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new, empty database; its URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        self.psql(f"CREATE DATABASE {name}")
        return self.url(name)

    def drop_database(self, url: str) -> None:
        self.psql(f"DROP DATABASE {url.rpartition('/')[2]} WITH (FORCE)")

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` as the superuser; its output."""
        command = [str(self.bin_dir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
        command += ["-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", database, "-c", sql]
        return subprocess.run(command, check=True, capture_output=True, text=True, timeout=60).stdout

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "stop", "-m", "immediate", "-w", "-D", str(self.data))
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, program: str, *args: str) -> None:
        command = [*self._as_user, str(self.bin_dir / program), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=self.root)
        if done.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{program} failed ({done.returncode}): {done.stderr.strip()}\n{tail}")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    try:
        server = PostgresServer.start()
    except PostgresUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is needed under CI: {exc}")
        pytest.skip(f"PostgreSQL is not available: {exc}")
    with server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh database for this test, dropped after it."""
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url)


# Every ledger test runs on both backends: SQLite in a fresh folder, and a fresh database on the session's server.
@pytest.fixture(params=["sqlite", "postgres"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/data/ledger.db"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
async def store(ledger_url: str) -> AsyncIterator[LedgerStore]:
    opened = open_ledger(ledger_url)
    await opened.open()
    yield opened
    await opened.close()
