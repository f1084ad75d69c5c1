"""Locust's web UI behind a login: loaded beside the locustfile by jotc-loadtest, with Locust's
--web-login, when JOTC_LT_WEB_USERNAME and JOTC_LT_WEB_PASSWORD are set. The UI starts, stops and
retargets the swarm, whose workers may hold tokens, so only the operator who knows both may use it.

Locust serves its login page and guards every route of the UI (the static assets and the login
page aside); this file gives it the check of the form it posts: both values compared in constant
time, a session cookie signed with a key made at start-up (a restart signs everyone out)."""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import Mapping
from typing import Any

from flask import Blueprint, redirect, request, session, url_for
from flask_login import UserMixin, login_user
from locust import events
from werkzeug.wrappers import Response

from jotc_loadtest.entrypoint import credentials


class Operator(UserMixin):  # type: ignore[misc]  # flask-login ships no types
    def __init__(self, name: str) -> None:
        self.id = name


def accepted(username: str, password: str, env: Mapping[str, str]) -> bool:
    """Both right; both compared in full, in constant time, whichever is wrong."""
    expected_username, expected_password = credentials(env)
    same_username = hmac.compare_digest(username.encode(), expected_username.encode())
    same_password = hmac.compare_digest(password.encode(), expected_password.encode())
    return bool(expected_password) and same_username & same_password


@events.init.add_listener  # type: ignore[untyped-decorator]
def require_login(environment: Any, **_: Any) -> None:
    web_ui = environment.web_ui  # jotc-loadtest loads this file only with --web-login, for the UI roles
    operator, _password = credentials(os.environ)
    web_ui.app.config.update(
        SECRET_KEY=secrets.token_bytes(32), SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Strict"
    )
    web_ui.login_manager.user_loader(lambda name: Operator(name) if name == operator else None)
    base = environment.parsed_options.web_base_path or ""
    web_ui.auth_args = {"username_password_callback": f"{base}/login_submit"}
    blueprint = Blueprint("jotc_login", __name__, url_prefix=base or None)

    @blueprint.route("/login_submit", methods=["POST"])
    def login_submit() -> Response:
        if accepted(request.form.get("username", ""), request.form.get("password", ""), os.environ):
            login_user(Operator(operator))
            return redirect(url_for("locust.index"))
        session["auth_error"] = "Wrong username or password."
        return redirect(url_for("locust.login"))

    web_ui.app.register_blueprint(blueprint)
