"""How a DATABASE_URL becomes something SQLAlchemy can connect with, and how to name it in logs."""

from __future__ import annotations

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError


class DatabaseURLError(ValueError):
    """DATABASE_URL is missing or is not a PostgreSQL URL."""


def sqlalchemy_url(raw: str | None) -> URL:
    """Parse DATABASE_URL and pin the psycopg 3 driver.

    Operators write the URL the way libpq and every PostgreSQL tool do
    (``postgresql://user@host/db``); SQLAlchemy would pick psycopg2 for that
    spelling, which this image does not ship.
    """
    if raw is None or not raw.strip():
        raise DatabaseURLError(
            "DATABASE_URL is not set; expected e.g. postgresql://user:password@host:5432/jotc"
        )
    try:
        url = make_url(raw.strip())
    except ArgumentError as exc:
        raise DatabaseURLError(f"DATABASE_URL is not a valid URL: {exc}") from None
    if url.get_backend_name() not in {"postgresql", "postgres"}:
        raise DatabaseURLError(
            f"DATABASE_URL must be a postgresql:// URL, got scheme {url.drivername!r}"
        )
    return url.set(drivername="postgresql+psycopg")


def describe(url: URL) -> str:
    """host:port/database, without the password, for messages."""
    return f"{url.host or 'localhost'}:{url.port or 5432}/{url.database or ''}"
