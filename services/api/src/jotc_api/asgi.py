"""The ASGI application each Granian worker loads: settings from the environment, then create_app."""

from __future__ import annotations

from litestar.types import ASGIApp

from jotc_api import tracing
from jotc_api.app import create_app
from jotc_api.settings import load_settings


def create() -> ASGIApp:
    """Granian factory target (``jotc_api.asgi:create``): each worker configures tracing for itself
    (the batch processor's thread and exporter belong to the worker), then builds the app."""
    tracing.configure("jotc-api")
    return create_app(load_settings())
