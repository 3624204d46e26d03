"""Bearer-token authentication with scopes, for both APIs.

API keys look like `efk_<id>_<secret>`. The server keeps only a SHA-256 of each
whole token (keys are random, 256-bit: a slow password hash buys nothing),
looks the entry up by id and compares digests in constant time. Scopes:
`commands:write` (command API), `read` (query API), `admin` (everything,
including rebuilds and dead-letter re-drive).

Every route that requires a scope declares the `bearer` HTTP security scheme
in its OpenAPI operation, with 401 and 403 among its answers.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import Depends, FastAPI, Request
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.security.base import SecurityBase
from pydantic import BaseModel, Field, field_validator

from eventfold import openapi
from eventfold.problems import PROBLEM_RESPONSES, Problem
from eventfold.settings import AuthSettings

log = logging.getLogger(__name__)

SCOPES = ("commands:write", "read", "admin")
_PREFIX = "efk_"


class ApiKey(BaseModel):
    id: str = Field(pattern=r"^[a-z0-9-]{1,40}$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    scopes: list[str]
    expires_at: datetime | None = None

    @field_validator("scopes")
    @classmethod
    def _known(cls, scopes: list[str]) -> list[str]:
        unknown = set(scopes) - set(SCOPES)
        if unknown:
            raise ValueError(f"unknown scopes {sorted(unknown)}; known: {', '.join(SCOPES)}")
        return scopes


def load_keys(settings: AuthSettings) -> list[ApiKey]:
    raw = settings.api_keys_file.read_bytes() if settings.api_keys_file else settings.api_keys.encode()
    try:
        entries = orjson.loads(raw or b"[]")
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"EVENTFOLD_API_KEYS is not a JSON list: {exc}") from None
    return [ApiKey.model_validate(k) for k in entries]


@dataclass(frozen=True)
class Principal:
    key_id: str
    scopes: frozenset[str]
    # When the token stops being valid: a live subscription it opened ends then.
    expires_at: datetime | None = None

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


ANONYMOUS_ADMIN = Principal("auth-disabled", frozenset(SCOPES))


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_key(key_id: str, scopes: Iterable[str], expires_at: datetime | None = None) -> tuple[str, ApiKey]:
    """A fresh token and the entry that stores only its hash."""
    token = f"{_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    return token, ApiKey(id=key_id, sha256=digest(token), scopes=list(scopes), expires_at=expires_at)


class Authenticator:
    def __init__(self, settings: AuthSettings, *, service: str) -> None:
        self.disabled = settings.auth_disabled
        self._keys = {k.id: k for k in load_keys(settings)}
        if self.disabled:
            log.warning("%s: authentication is DISABLED (EVENTFOLD_AUTH_DISABLED=true)", service)
        elif not self._keys:
            log.warning("%s: no API keys configured; every protected request will get 401", service)

    def authenticate(self, authorization: str | None) -> Principal:
        if self.disabled:
            return ANONYMOUS_ADMIN
        if not authorization or not authorization.lower().startswith("bearer "):
            raise _unauthorized("a bearer token is required")
        token = authorization[7:].strip()
        key_id = token[len(_PREFIX) :].split("_", 1)[0] if token.startswith(_PREFIX) else ""
        entry = self._keys.get(key_id)
        # Compare against something even for unknown ids, so timing tells nothing.
        expected = entry.sha256 if entry else "0" * 64
        if not hmac.compare_digest(digest(token), expected) or entry is None:
            raise _unauthorized("the token is not valid")
        if entry.expires_at is not None and entry.expires_at <= datetime.now(UTC):
            raise _unauthorized("the token has expired")
        return Principal(entry.id, frozenset(entry.scopes), entry.expires_at)


def _unauthorized(detail: str) -> Problem:
    return Problem(401, "unauthorized", detail, headers={"WWW-Authenticate": 'Bearer realm="eventfold"'})


BEARER_SCHEME = "bearer"
_BEARER_MODEL = HTTPBearerModel(
    bearerFormat="efk_<id>_<secret>",
    description="An API key, sent as `Authorization: Bearer efk_<id>_<secret>`. Its scopes: "
    "`commands:write` sends commands (and reads streams), `read` reads the query API, "
    "`admin` may do everything, rebuilds included.",
)


class Require(SecurityBase):
    """A dependency that admits a principal holding any of `scopes`.

    To FastAPI it is also a security scheme, the HTTP bearer one, so every
    route that depends on it declares `bearer` in its OpenAPI operation, at no
    cost per request: it is the same one dependency that authenticates.
    """

    def __init__(self, scopes: tuple[str, ...]) -> None:
        self.scopes = scopes
        self.scheme_name = BEARER_SCHEME
        self.model = _BEARER_MODEL

    async def __call__(self, request: Request) -> Principal:
        authenticator: Authenticator = request.app.state.authenticator
        principal = authenticator.authenticate(request.headers.get("authorization"))
        if not any(principal.allows(s) for s in self.scopes):
            raise Problem(403, "forbidden", "the token does not grant this operation")
        request.state.principal = principal
        return principal


def require(*scopes: str) -> Require:
    """A dependency that admits a principal holding any of `scopes`."""
    return Require(scopes)


CommandWriter = Annotated[Principal, Depends(require("commands:write"))]
Reader = Annotated[Principal, Depends(require("read", "commands:write"))]
QueryReader = Annotated[Principal, Depends(require("read"))]
Admin = Annotated[Principal, Depends(require("admin"))]


def install(app: FastAPI, settings: AuthSettings, *, service: str) -> None:
    """Authenticate `app`'s protected routes; document their 401 and 403 answers."""
    app.state.authenticator = Authenticator(settings, service=service)
    openapi.extend(app, document_refusals)


def document_refusals(doc: openapi.Document) -> None:
    """Add the 401 and 403 problems to every operation that requires a bearer token."""
    for operations in doc.get("paths", {}).values():
        for operation in operations.values():
            if any(BEARER_SCHEME in requirement for requirement in operation.get("security", ())):
                responses = operation.setdefault("responses", {})
                for status in (401, 403):
                    responses.setdefault(str(status), PROBLEM_RESPONSES[status])
                operation["responses"] = dict(sorted(responses.items()))


def install_cors(app: Any, settings: AuthSettings) -> None:
    """CORS only for the origins configured; none by default."""
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    if origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "If-Match",
                "If-None-Match",
                "Idempotency-Key",
                "X-Correlation-ID",
                "traceparent",
            ],
            expose_headers=["ETag", "X-Correlation-ID", "Idempotent-Replayed"],
        )
