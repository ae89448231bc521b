"""Bearer-token auth: one shared token from an environment variable (name configurable) or the serve
config, compared in constant time. Probes (/healthz, /readyz) and the OpenAPI document stay open."""

from __future__ import annotations

import hmac
import os

from terrazzo.server.api_errors import ApiError, ServeError
from terrazzo.server.settings import ServeSettings

MIN_TOKEN_CHARS = 16
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json"})
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


def resolve_token(settings: ServeSettings, host: str) -> str | None:
    """The token requests must present; None only when auth is disabled, which loopback alone allows."""
    auth = settings.auth
    if auth.disabled:
        if host not in LOOPBACK_HOSTS:
            raise ServeError(f"auth is disabled but the server would listen on {host}",
                             fix="keep auth on (set the token), or bind to 127.0.0.1 for local tests")
        return None
    token, where = os.environ.get(auth.token_env), f"environment variable {auth.token_env}"
    if not token and auth.token:
        token, where = auth.token, "serve config auth.token"
    if not token and auth.token_file:
        path = settings.path(auth.token_file)
        try:
            token, where = path.read_text().strip(), f"token file {path}"
        except OSError as exc:
            raise ServeError(f"cannot read auth.token_file {path}: {exc}", fix="point it at a readable file") from None
    if not token:
        raise ServeError(f"no API token: {auth.token_env} is unset and the serve config names none",
                         fix=f"export {auth.token_env}=$(openssl rand -hex 24), or pass --no-auth on 127.0.0.1")
    if len(token) < MIN_TOKEN_CHARS:
        raise ServeError(f"the API token from {where} has {len(token)} characters, fewer than {MIN_TOKEN_CHARS}",
                         fix="use a long random token, e.g. openssl rand -hex 24")
    return token


def check_bearer(authorization: str | None, token: str | None) -> None:
    """Raise 401 (with WWW-Authenticate) unless `Authorization: Bearer <token>` matches."""
    if token is None:
        return
    scheme, _, given = (authorization or "").partition(" ")
    if not authorization or scheme.lower() != "bearer" or not given.strip():
        raise ApiError(401, "missing bearer token", type="authentication_error", code="missing_token",
                       fix="send the header 'Authorization: Bearer <token>'",
                       headers={"WWW-Authenticate": 'Bearer realm="terrazzo"'})
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ApiError(401, "invalid bearer token", type="authentication_error", code="invalid_token",
                       fix="use the token the server was started with",
                       headers={"WWW-Authenticate": 'Bearer realm="terrazzo", error="invalid_token"'})
