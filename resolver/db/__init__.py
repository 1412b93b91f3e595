"""SQL storage: models, engine and Alembic migration helpers."""
