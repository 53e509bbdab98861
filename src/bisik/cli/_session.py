"""What a command needs to reach the account: the profile, its password, the server."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import getpass
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from bisik.cli._output import Output
from bisik.client import Client, ClientError, NotConnected


def default_home() -> Path:
    """The profile directory: ``BISIK_HOME``, else ``$XDG_DATA_HOME/bisik``."""
    env = os.environ.get("BISIK_HOME")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "bisik"


def read_password(
    *, confirm: bool = False, env: str = "BISIK_PASSWORD", prompt: str = "Password: "
) -> str:
    """The password from ``env`` if set, else asked for on the terminal.

    Raises:
        ClientError: no terminal to ask on, or the two entries differ.
    """
    value = os.environ.get(env)
    if value is not None:
        return value
    if not sys.stdin.isatty():
        raise ClientError(f"no password: set {env} or run in a terminal")
    password = getpass.getpass(prompt)
    if confirm and getpass.getpass("Repeat: ") != password:
        raise ClientError("the passwords differ")
    return password


@dataclasses.dataclass(frozen=True)
class Session:
    """The profile directory and the output that every command is given."""

    home: Path
    out: Output

    @contextlib.asynccontextmanager
    async def open(self, password: str | None = None) -> AsyncIterator[Client]:
        """The profile's client (asking for its password unless given), closed on exit."""
        client = await Client.open(self.home, read_password() if password is None else password)
        try:
            yield client
        finally:
            await client.close()

    async def connect(self, client: Client, *, required: bool) -> bool:
        """Connect and fetch the backlog; ``False`` if the server is unreachable.

        Raises:
            NotConnected: the server is unreachable and ``required`` is set.
        """
        try:
            await client.connect()
            await asyncio.wait_for(client.synced.wait(), 30)
            # Messages queued while offline go out now, before the command ends.
            await client.drain_outbox(15)
        except (NotConnected, TimeoutError) as exc:
            if required:
                raise NotConnected(f"cannot reach {client.server_url}") from exc
            self.out.emit(
                {"event": "offline", "server": client.server_url},
                f"(offline: {client.server_url} unreachable)",
            )
            return False
        return True
