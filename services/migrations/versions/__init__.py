"""Services: one module per schema revision, oldest first (services.db.migrate applies them)."""
