"""One writer per backup: an exclusive lock on the output (a kernel file lock locally, a renewed lease object on an object store).

Two exports into one backup at once (a cron run still going when the next one starts, a fleet
task re-run while its first worker is alive) would each take the other's uncommitted files for
orphans, delete them, and overwrite each other's checkpoint. `export` and `compact` therefore
hold the output's lock for as long as they write; a second one stops at once with exit code 7
and says who holds it.

- Local directories: `fcntl.flock` on `DIR/_lock`. The kernel drops it when the holder exits,
  however it exits (SIGKILL included), so a resumed run never waits for a dead one. The file
  stays; it names the last holder (pid, host, start) for the message.
- Object stores cannot lock. There the lock is a lease object `_lock.json` naming its holder
  and renewed every `ttl / 3` seconds by a background thread; a lease not renewed for `ttl`
  seconds (clocks compared, so machines' clocks must roughly agree) is taken over, and so is
  one whose holder was on this host and is no longer alive.
- Where the store takes conditional writes (S3 through botocore, see `storage`), the lease is
  created only if absent (If-None-Match) and replaced (renewed, or taken over) only if unchanged
  since it was read (If-Match): of two runs starting together exactly one gets it. The
  checkpoint is written the same way, so a run that lost its lease cannot overwrite the new
  holder's commits. Without conditional writes a holder re-reads the lease after writing it,
  which catches runs that do not start within the same instant.
- Before every commit the writer calls `check()`: on an object store it reads the lease again
  and stops when it is not ours any more or was not renewed within its lifetime.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson

from exporter.backup.storage import DocumentChanged, Storage, storage_error
from exporter.core.errors import BusyError, ExporterError

__all__ = ["BusyError", "OutputLock", "describe_holder", "holder", "locked"]

LOCK_NAME = "_lock"
LEASE_NAME = "_lock.json"
LEASE_TTL = 300.0  # seconds a lease lives without renewal
LEASE_SETTLE = 0.5  # seconds between writing a lease and reading it back (no conditional writes)
RELEASE_ATTEMPTS = 6  # a lease left behind blocks other hosts for `ttl`: retry its removal


def _holder(purpose: str, token: str) -> dict[str, Any]:
    now = time.time()
    return {
        "purpose": purpose,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started_at": datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"),
        "renewed_at": now,
        "token": token,  # tells our lease from another's: random, not a secret
    }


def _describe(holder: dict[str, Any] | None, what: str) -> str:
    if not holder:
        return what
    return (
        f"{what} ({holder.get('purpose', 'a run')}, pid {holder.get('pid', '?')} on "
        f"{holder.get('host', '?')}, since {holder.get('started_at', '?')})"
    )


def _taken_by(holder: dict[str, Any] | None) -> str:
    return f"our lease lapsed and {_describe(holder, 'another run')} took the backup over"


def _alive_here(holder: dict[str, Any]) -> bool:
    """Whether the holder is a live process on this host (True when it cannot be told)."""
    if holder.get("host") != socket.gethostname():
        return True
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _flock_soon(fd: int, attempts: int = 10) -> None:
    """The exclusive lock, tried a few times over half a second: `holder()` peeking (a status
    command at the same instant) holds a shared lock for a moment, and must not make an
    export fail. BlockingIOError when someone really holds it."""
    for attempt in range(attempts):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.05)


def read_lease(storage: Storage) -> dict[str, Any] | None:
    """The lease object of an object-store backup, or None (none, torn or foreign)."""
    raw = storage.read_document(LEASE_NAME)
    if raw is None:
        return None
    try:
        lease = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None  # a torn or foreign object: no live holder can be named
    return lease if isinstance(lease, dict) else None


def holder(storage: Storage) -> dict[str, Any] | None:
    """Who is writing the backup now (purpose, pid, host, since), or None when no one is."""
    if not storage.local:
        lease = read_lease(storage)
        if lease is None:
            return None
        fresh = time.time() - float(lease.get("renewed_at") or 0) < LEASE_TTL
        return lease if fresh and _alive_here(lease) else None
    try:
        fd = os.open(storage.path(LOCK_NAME), os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise storage_error("read", storage.path(LOCK_NAME), exc) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                found = orjson.loads(os.pread(fd, 4096, 0) or b"{}")
            except (OSError, orjson.JSONDecodeError):
                found = {}
            return found if isinstance(found, dict) else {}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def describe_holder(found: dict[str, Any]) -> str:
    return _describe(found, "another run")


class OutputLock:
    """Held while a run writes a backup; `release()` (or leaving the `with`) lets it go."""

    def __init__(self, storage: Storage, purpose: str, *, ttl: float = LEASE_TTL) -> None:
        self.storage = storage
        self.purpose = purpose
        self.ttl = ttl
        self._fd: int | None = None
        self._token = secrets.token_hex(8)
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        # Why the lease is not ours any more, once we know (a clause: "our lease ..."); sticky.
        self.lost: str | None = None
        self._renewed = 0.0  # time.monotonic() of our last successful lease write

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock of an existing output, or raise BusyError naming who holds it."""
        if self.storage.local:
            self._lock_file()
        else:
            self._take_lease()

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._renewer is not None:
            self._stop.set()
            self._renewer.join()
            self._renewer = None
            self._remove_lease()

    def _remove_lease(self) -> None:
        """Delete our lease, retried over passing store errors: left behind it would make other
        hosts wait for its lifetime. Never deletes another run's lease."""
        for attempt in range(RELEASE_ATTEMPTS):
            try:
                current = read_lease(self.storage)
                if current is None or current.get("token") != self._token:
                    return
                self.storage.delete(LEASE_NAME)
                return
            except ExporterError:
                if attempt == RELEASE_ATTEMPTS - 1:
                    return  # it lapses after `ttl`; the run's own outcome is what matters
                time.sleep(0.2 * 2**attempt)

    def check(self) -> None:
        """Raise BusyError when the lease is not ours any more (another run took it over while
        we were paused past its lifetime) or could not be renewed within its lifetime:
        committing now could overwrite another run's checkpoint. On an object store the lease
        is read again, so this holds at the very commit, not only as of the last renewal."""
        if self._renewer is not None and self.lost is None:
            silent = time.monotonic() - self._renewed
            if silent >= self.ttl:
                self.lost = (
                    f"our lease was not renewed for {silent:.0f} s, past its {self.ttl:g} s "
                    "lifetime (the store refused or did not answer), so another run may have "
                    "taken the backup over"
                )
            else:
                current = read_lease(self.storage)
                if current is None:
                    self.lost = "our lease is gone (removed by another run, or by hand)"
                elif current.get("token") != self._token:
                    self.lost = _taken_by(current)
        if self.lost is not None:
            raise BusyError(
                f"{self.storage.display}: {self.lost}; stopped without committing. Run the "
                "same command again once no other run writes this backup"
            )

    # -- local: a kernel lock ---------------------------------------------------------------

    def _lock_file(self) -> None:
        path = self.storage.path(LOCK_NAME)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise storage_error("lock", path, exc) from None
        try:
            _flock_soon(fd)
        except BlockingIOError:
            holder = None
            with contextlib.suppress(OSError, orjson.JSONDecodeError):
                holder = orjson.loads(os.pread(fd, 4096, 0) or b"null")
            os.close(fd)
            raise BusyError(
                f"{self.storage.display} is being written by another run: "
                + _describe(holder if isinstance(holder, dict) else None, "it holds the lock")
                + ". Wait for it to finish, or stop it; a killed run's lock goes with it"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise storage_error("lock", path, exc) from None
        holder = _holder(self.purpose, self._token)
        del holder["token"], holder["renewed_at"]
        with contextlib.suppress(OSError):  # only informs the message a second run shows
            os.ftruncate(fd, 0)
            os.pwrite(fd, orjson.dumps(holder), 0)
        self._fd = fd

    # -- object stores: a renewed lease -----------------------------------------------------

    def _write_lease(self) -> None:
        """Write our lease; conditional on the version last read where the store allows it
        (DocumentChanged when another run wrote it in between)."""
        self.storage.write_atomically(LEASE_NAME, orjson.dumps(_holder(self.purpose, self._token)))
        self._renewed = time.monotonic()

    def _take_lease(self) -> None:
        current = read_lease(self.storage)
        if current is not None and current.get("token") != self._token:
            age = time.time() - float(current.get("renewed_at") or 0)
            if age < self.ttl and _alive_here(current):
                raise BusyError(
                    f"{self.storage.display} is being written by another run: "
                    + _describe(current, f"its lease was renewed {age:.0f} s ago")
                    + f". Wait for it to finish; if it died, its lease lapses "
                    f"{self.ttl - age:.0f} s from now"
                )
        try:
            self._write_lease()
        except DocumentChanged:
            mine: dict[str, Any] | None = read_lease(self.storage)
        else:
            if self.storage.conditional_writes:
                mine = {"token": self._token}  # created or replaced only as we read it: ours
            else:
                time.sleep(LEASE_SETTLE)
                mine = read_lease(self.storage)
        if mine is None or mine.get("token") != self._token:
            raise BusyError(
                f"{self.storage.display}: another run took the lease at the same moment: "
                + _describe(mine, "it holds it now")
                + ". Wait for it to finish"
            )
        self._renewer = threading.Thread(target=self._renew, name="lease", daemon=True)
        self._renewer.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                if not self.storage.conditional_writes:
                    current = read_lease(self.storage)
                    if current is not None and current.get("token") != self._token:
                        self.lost = _taken_by(current)
                        return
                self._write_lease()
            except DocumentChanged:
                self.lost = _taken_by(read_lease_quietly(self.storage))
                return
            except ExporterError:
                continue  # a passing store error: the next turn retries; `check` sees the age


def read_lease_quietly(storage: Storage) -> dict[str, Any] | None:
    with contextlib.suppress(ExporterError):
        return read_lease(storage)
    return None


@contextlib.contextmanager
def locked(storage: Storage, purpose: str) -> Iterator[OutputLock]:
    """Hold the output's lock for the `with` block."""
    lock = OutputLock(storage, purpose)
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()
