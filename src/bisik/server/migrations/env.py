"""Alembic environment: run on the connection the server hands in (see ``_db.migrate``)."""

from __future__ import annotations

from alembic import context

from bisik.server.stores.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
