"""Alembic environment: runs on the connection `store.db.migrate` hands over (no alembic.ini)."""

from __future__ import annotations

from alembic import context

from chatfactory.server.store.models import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through chatfactory.server.store.db.migrate(engine)")
# render_as_batch: SQLite cannot ALTER most things; batch mode copies the table instead.
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
