"""Bearer-token auth with tenants: one token (tenant `default`) from an environment variable (name
configurable), the serve config or a file, or several tokens, each naming its tenant (`auth.tenants`).
Every token is compared in constant time, all of them on every request, so timing tells nothing about
which one nearly matched. The tenant a token names owns the sessions and request ids it uses. Probes
(/healthz, /readyz) and the OpenAPI document stay open."""

from __future__ import annotations

import hmac
import os
import re
from collections.abc import Mapping

from terrazzo.server.api_errors import ApiError, ServeError
from terrazzo.server.settings import ServeSettings, TokenSource

MIN_TOKEN_CHARS = 16
DEFAULT_TENANT = "default"
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json"})
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
# RFC 6750's b64token: what a client can send after "Bearer " without quoting; no whitespace anywhere.
TOKEN_CHARS = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")

TokenMap = Mapping[str, str]  # token -> tenant


def _read(source: TokenSource, settings: ServeSettings, label: str) -> tuple[str | None, str]:
    token = os.environ.get(source.token_env) if source.token_env else None
    where = f"environment variable {source.token_env}"
    if not token and source.token:
        token, where = source.token, f"serve config {label}.token"
    if not token and source.token_file:
        path = settings.path(source.token_file)
        try:
            token, where = path.read_text().rstrip("\r\n"), f"token file {path}"  # one trailing newline is normal
        except OSError as exc:
            raise ServeError(f"cannot read {label}.token_file {path}: {exc}", fix="point it at a readable file") \
                from None
    return token, where


def check_token(token: str, where: str) -> str:
    """Refuse a token no client could present: too short, or with whitespace (HTTP strips a header's
    leading and trailing spaces, so such a token would never match)."""
    if not token.strip():
        raise ServeError(f"the API token from {where} is empty or all whitespace",
                         fix="use a long random token, e.g. openssl rand -hex 24")
    if not TOKEN_CHARS.match(token):
        bad = "leading or trailing whitespace" if token != token.strip() else \
            "whitespace" if any(c.isspace() for c in token) else "characters a Bearer header cannot carry"
        raise ServeError(f"the API token from {where} has {bad}, so no client could send it",
                         fix="use letters, digits and -._~+/ only, e.g. openssl rand -hex 24")
    if len(token) < MIN_TOKEN_CHARS:
        raise ServeError(f"the API token from {where} has {len(token)} characters, fewer than {MIN_TOKEN_CHARS}",
                         fix="use a long random token, e.g. openssl rand -hex 24")
    return token


def resolve_tokens(settings: ServeSettings, host: str) -> dict[str, str] | None:
    """token -> tenant for every token requests may present; None only when auth is disabled, which
    loopback alone allows."""
    auth = settings.auth
    if auth.disabled:
        if host not in LOOPBACK_HOSTS:
            raise ServeError(f"auth is disabled but the server would listen on {host}",
                             fix="keep auth on (set the token), or bind to 127.0.0.1 for local tests")
        return None
    tokens: dict[str, str] = {}
    if auth.tenants:
        for tenant, source in auth.tenants.items():
            token, where = _read(source, settings, f"auth.tenants.{tenant}")
            if not token:
                raise ServeError(f"tenant '{tenant}' has no token: set token_env (exported), token or token_file",
                                 fix=f"give auth.tenants.{tenant} a token source")
            check_token(token, where)
            if token in tokens:
                raise ServeError(f"tenants '{tokens[token]}' and '{tenant}' have the same token",
                                 fix="give every tenant its own token")
            tokens[token] = tenant
        return tokens
    token, where = _read(auth, settings, "auth")
    if not token:
        raise ServeError(f"no API token: {auth.token_env} is unset and the serve config names none",
                         fix=f"export {auth.token_env}=$(openssl rand -hex 24), or pass --no-auth on 127.0.0.1")
    return {check_token(token, where): DEFAULT_TENANT}


def resolve_token(settings: ServeSettings, host: str) -> str | None:
    """The single token (one-tenant set-ups and older callers)."""
    tokens = resolve_tokens(settings, host)
    return None if tokens is None else next(iter(tokens))


def as_token_map(token: str | TokenMap | None) -> TokenMap | None:
    return {token: DEFAULT_TENANT} if isinstance(token, str) else token


def check_bearer(authorization: str | None, tokens: TokenMap | None) -> str:
    """The tenant of `Authorization: Bearer <token>`, or raise 401 (with WWW-Authenticate)."""
    if tokens is None:
        return DEFAULT_TENANT
    scheme, _, given = (authorization or "").partition(" ")
    if not authorization or scheme.lower() != "bearer" or not given.strip():
        raise ApiError(401, "missing bearer token", type="authentication_error", code="missing_token",
                       fix="send the header 'Authorization: Bearer <token>'",
                       headers={"WWW-Authenticate": 'Bearer realm="terrazzo"'})
    presented, tenant = given.strip().encode(), None
    for token, name in tokens.items():  # every token, no early exit
        if hmac.compare_digest(presented, token.encode()):
            tenant = name
    if tenant is None:
        raise ApiError(401, "invalid bearer token", type="authentication_error", code="invalid_token",
                       fix="use the token the server was started with",
                       headers={"WWW-Authenticate": 'Bearer realm="terrazzo", error="invalid_token"'})
    return tenant

