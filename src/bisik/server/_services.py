from __future__ import annotations

import asyncio
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from bisik.server._blobs import backend_for
from bisik.server._config import ServerConfig
from bisik.server._db import OneHop
from bisik.server.handlers import (
    AccountsHandler,
    AuthHandler,
    KeysHandler,
    MessagesHandler,
    Notifier,
)
from bisik.server.handlers.backups import BackupsHandler
from bisik.server.handlers.blobs import BlobsHandler
from bisik.server.handlers.devices import DevicesHandler
from bisik.server.handlers.groups import GroupsHandler
from bisik.server.handlers.presence import PresenceHandler
from bisik.server.handlers.push import PushHandler
from bisik.server.handlers.rendezvous import RendezvousHandler
from bisik.server.stores import AccountStore, AuthStore, KeyStore, MessageStore
from bisik.server.stores.backups import BackupStore
from bisik.server.stores.blobs import BlobStore
from bisik.server.stores.groups import GroupStore
from bisik.server.stores.presence import PresenceStore
from bisik.server.stores.push import PushStore
from bisik.server.stores.rendezvous import RendezvousStore


@dataclass
class Services:
    """The handlers, wired to their stores; shared by the HTTP and realtime layers."""

    config: ServerConfig
    engine: AsyncEngine
    accounts: AccountsHandler
    auth: AuthHandler
    keys: KeysHandler
    messages: MessagesHandler
    account_store: AccountStore
    devices: DevicesHandler
    rendezvous: RendezvousHandler
    backups: BackupsHandler
    presence: PresenceHandler
    push: PushHandler
    presence_store: PresenceStore
    blobs: BlobsHandler
    groups: GroupsHandler
    db: OneHop
    message_store: MessageStore
    auth_store: AuthStore

    @classmethod
    def build(cls, config: ServerConfig, engine: AsyncEngine, notifier: Notifier) -> Services:
        accounts = AccountStore(engine)
        db = OneHop(engine)
        presence_store = PresenceStore(db)
        presence = PresenceHandler(presence_store, notifier)
        push = PushHandler(config, PushStore(engine))
        backups = BackupsHandler(BackupStore(engine))
        groups = GroupsHandler(GroupStore(engine), notifier.group_changed)
        blobs = BlobsHandler(config, BlobStore(engine), backend_for(config))
        message_store = MessageStore(db)
        auth_store = AuthStore(db)
        return cls(
            config=config,
            engine=engine,
            accounts=AccountsHandler(config, accounts),
            auth=AuthHandler(config, auth_store),
            keys=KeysHandler(config, accounts, KeyStore(engine), notifier),
            messages=MessagesHandler(config, message_store, notifier, presence, push, groups),
            account_store=accounts,
            devices=DevicesHandler(accounts, notifier, backups),
            rendezvous=RendezvousHandler(config, RendezvousStore(engine)),
            backups=backups,
            presence=presence,
            push=push,
            presence_store=presence_store,
            blobs=blobs,
            groups=groups,
            db=db,
            message_store=message_store,
            auth_store=auth_store,
        )

    async def close(self) -> None:
        """Finish what is in flight and release it all: push tasks (cancelled), the
        blob backend, the group-commit batches (written), then the database thread."""
        await self.push.close()
        await self.blobs.close()
        for store in (self.message_store, self.auth_store, self.presence_store):
            await store.close()
        await asyncio.to_thread(self.db.close)
