"""The ASGI application each Granian worker loads: settings from the environment, then the app."""

from __future__ import annotations

from litestar.types import ASGIApp

from jotc_api.app import create_app
from jotc_api.logs import request_id_middleware
from jotc_api.metrics import metrics_middleware
from jotc_api.redis_features import RateLimiter, RedisLink, rate_limit_middleware
from jotc_api.routes.jumps import hot_path
from jotc_api.settings import load_settings


def create() -> ASGIApp:
    """Granian factory target (``jotc_api.asgi:create``). Outside in: request id and access log,
    metrics, rate limiting (when JOTC_RATE_LIMIT is set), the hot path for POST /jumps and /jotc,
    then Litestar. The outer layers wrap the whole
    app, so 404s and errors raised before routing carry an X-Request-ID and are counted too."""
    settings = load_settings()
    redis = RedisLink(settings.redis_url)
    litestar = create_app(settings, redis=redis)
    app = hot_path(litestar, litestar)
    if settings.rate_limit is not None:
        app = rate_limit_middleware(RateLimiter(settings.rate_limit, redis, settings.trusted_proxies), app)
    app = metrics_middleware(app)
    return request_id_middleware(app, access=settings.access_log, fmt=settings.log_format)
