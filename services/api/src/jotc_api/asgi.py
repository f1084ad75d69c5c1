"""The ASGI application each Granian worker loads: settings from the environment, then create_app."""

from __future__ import annotations

from litestar.types import ASGIApp

from jotc_api.app import create_app
from jotc_api.settings import load_settings


def create() -> ASGIApp:
    """Granian factory target (``jotc_api.asgi:create``)."""
    return create_app(load_settings())
