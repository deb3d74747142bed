"""Storage: database URLs, engines, the store base class, and the Alembic migrations."""
