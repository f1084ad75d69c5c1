"""JOTC database schema: the Alembic migrations and the job that applies them."""

__version__ = "1.0.0"
