"""Services: the database schema's revisions (Alembic): a baseline, then each change; services.db.migrate applies
them at start-up."""
