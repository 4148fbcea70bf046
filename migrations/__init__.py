"""Alembic migrations of state.db, installed as ``matricula_backup.migrations``."""
