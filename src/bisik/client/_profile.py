"""A client profile directory: the key file, the encrypted database and a lock.

Layout of ``home``::

    keyfile.json   master key wrapped under the password (Argon2id + AES-GCM)
    bisik.db       SQLCipher database (every key, session and message)
    .lock          held while a process has the profile open
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from bisik.client._errors import ProfileError
from bisik.client._store import LocalStore
from bisik.crypto import KdfParams, KeyFile, KeyFileError, MasterKey, create_master_key

KEYFILE = "keyfile.json"
DATABASE = "bisik.db"
LOCKFILE = ".lock"


@dataclass
class OpenProfile:
    home: Path
    store: LocalStore
    pickle_key: bytes
    _lock: IO[str]

    def close(self) -> None:
        self.store.close()
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        self._lock.close()

    def __repr__(self) -> str:
        return f"OpenProfile(home={str(self.home)!r})"


def _lock(home: Path) -> IO[str]:
    handle = os.fdopen(os.open(home / LOCKFILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ProfileError(f"profile {home} is in use by another bisik process") from None
    return handle


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def exists(home: Path) -> bool:
    return (home / KEYFILE).exists()


def _open(home: Path, master: MasterKey, lock: IO[str]) -> OpenProfile:
    try:
        store = LocalStore.open(home / DATABASE, master.derive("database"))
    except BaseException:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
        raise
    return OpenProfile(home, store, master.derive("pickle"), lock)


def create(home: Path, password: str, params: KdfParams | None = None) -> OpenProfile:
    """A new profile in ``home`` (which must not hold one yet)."""
    if exists(home):
        raise ProfileError(f"{home} already holds a profile")
    if not password:
        raise ProfileError("the password must not be empty")
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = _lock(home)
    keyfile, master = create_master_key(password, params)
    _write_private(home / KEYFILE, keyfile.to_json())
    # Private even in a directory that is not (``--home`` an existing one): the
    # database is encrypted, but its size and times are nobody else's. SQLCipher
    # starts a new database in the empty file, and gives -wal and -shm its mode.
    os.close(os.open(home / DATABASE, os.O_WRONLY | os.O_CREAT, 0o600))
    return _open(home, master, lock)


def unlock(home: Path, password: str) -> OpenProfile:
    """Open an existing profile; ``WrongPassword`` changes nothing on disk."""
    try:
        text = (home / KEYFILE).read_text()
    except FileNotFoundError:
        raise ProfileError(
            f"no profile in {home}; create one with `bisik account create`"
        ) from None
    keyfile = _read_keyfile(home, text)
    lock = _lock(home)
    try:
        master = keyfile.unlock(password)
    except BaseException as exc:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
        if isinstance(exc, KeyFileError):
            raise ProfileError(f"{home / KEYFILE}: {exc}") from None
        raise
    return _open(home, master, lock)


def _read_keyfile(home: Path, text: str) -> KeyFile:
    try:
        return KeyFile.from_json(text)
    except KeyFileError as exc:
        # Its KDF parameters out of range, too: Argon2 would refuse them (or
        # try to allocate terabytes) with an error that names no file.
        raise ProfileError(f"{home / KEYFILE}: {exc}") from None


def change_password(home: Path, old: str, new: str) -> None:
    """Re-wrap the master key under ``new``; the database is not touched."""
    if not new:
        raise ProfileError("the password must not be empty")
    keyfile = _read_keyfile(home, (home / KEYFILE).read_text())
    try:
        rewrapped = keyfile.rewrap(old, new)
    except KeyFileError as exc:
        raise ProfileError(f"{home / KEYFILE}: {exc}") from None
    _write_private(home / KEYFILE, rewrapped.to_json())


def destroy(home: Path) -> None:
    """Remove a half-created profile (registration failed)."""
    for name in (KEYFILE, DATABASE, DATABASE + "-wal", DATABASE + "-shm", LOCKFILE):
        (home / name).unlink(missing_ok=True)
