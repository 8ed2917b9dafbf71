"""Services: Alembic's entry point for the schema revisions, run on the connection services.db.migrate passes (inside
its transaction, under its lock)."""

from alembic import context

from services.db import Base

context.configure(connection=context.config.attributes["connection"], target_metadata=Base.metadata)
with context.begin_transaction():
    context.run_migrations()
