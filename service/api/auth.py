"""Who may call what. With ``HPSEARCH_AUTH=on`` every route but ``/healthz``, the dashboard's
static page and the session routes below needs a token: ``Authorization: Bearer <token>``, or
the dashboard's session cookie (a user token the browser sent once, kept ``HttpOnly`` and
``SameSite=Strict``). 401 without a valid token, 403 with a token of the wrong kind, and 403
for a state change that carries the cookie from anywhere but the service's own origin (scheme,
host and port in ``Origin``, or ``Sec-Fetch-Site: same-origin``)."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Body, Depends, Request, Response
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from service.auth import tokens as auth
from service.auth.schemas import Login, Session, TokenRef
from service.auth.tokens import Principal, TokenKind
from service.context import ServiceContext
from service.schemas import ErrorBody

SESSION_COOKIE = "hpsearch_session"
_SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}

bearer = HTTPBearer(
    auto_error=False,
    description="a user token, or a worker token for the worker protocol (`hpsearch token create`)",
)
cookie = APIKeyCookie(
    name=SESSION_COOKIE,
    auto_error=False,
    description="the dashboard's session (POST /api/v1/session)",
)


class AuthError(Exception):
    """401 (no valid token) or 403 (a token that may not do this)."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


def _context(request: Request) -> ServiceContext:
    ctx: ServiceContext = request.app.state.context
    return ctx


async def _principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    session: Annotated[str | None, Depends(cookie)],
) -> Principal | None:
    ctx = _context(request)
    if not ctx.settings.auth:
        return None
    if credentials is not None:
        token = credentials.credentials
    elif session:
        token = session
        _check_origin(request, cookie=True)
    else:
        raise AuthError(401, "this endpoint needs a token: send `Authorization: Bearer <token>`")
    principal = await run_in_threadpool(auth.authenticate, ctx, token)
    if principal is None:
        raise AuthError(401, "the token is unknown, revoked or expired")
    return principal


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(scheme: str, host: str | None, port: int | None) -> tuple[str, str, int | None]:
    scheme = scheme.lower()
    return scheme, (host or "").lower(), port or _DEFAULT_PORTS.get(scheme)


def _own_origin(request: Request) -> tuple[str, str, int | None]:
    """This service's origin as the request reached it (behind a TLS proxy, the scheme it
    forwards: uvicorn's ``--proxy-headers`` and ``FORWARDED_ALLOW_IPS``)."""
    return _origin(request.url.scheme, request.url.hostname, request.url.port)


def _parse_origin(origin: str) -> tuple[str, str, int | None] | None:
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme.lower() not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return _origin(parts.scheme, parts.hostname, port)


def _check_origin(request: Request, cookie: bool = False) -> None:
    """A cookie rides along on any request the browser makes: a state-changing one must come
    from this service's own pages, the same scheme, host and port (SameSite=Strict already
    stops other sites; this is the second lock). With the cookie (``cookie``), a request that
    says nothing of where it comes from is refused too, unless ``Sec-Fetch-Site`` says
    ``same-origin``: browsers send one or the other on every state change."""
    if request.method in _SAFE_METHODS:
        return
    origin = request.headers.get("origin")
    own = _own_origin(request)
    if origin is not None:
        if _parse_origin(origin) != own:
            scheme, host, port = own
            raise AuthError(
                403,
                f"cross-site request from {origin} refused: a state change with the "
                f"dashboard's session must come from its own pages ({scheme}://{host}:{port})",
            )
        return
    if cookie and request.headers.get("sec-fetch-site") != "same-origin":
        raise AuthError(
            403,
            "a state change with the dashboard's session cookie needs an Origin header from "
            "this service's pages (or Sec-Fetch-Site: same-origin); scripts send "
            "`Authorization: Bearer <token>` instead",
        )


def require(*kinds: TokenKind) -> Any:
    """A dependency: the request's token must be one of ``kinds`` (when auth is on)."""
    wanted = " or ".join(kinds)

    async def check(
        principal: Annotated[Principal | None, Depends(_principal)],
    ) -> Principal | None:
        if principal is not None and principal.kind not in kinds:
            raise AuthError(
                403,
                f"this endpoint needs a {wanted} token; "
                f"{principal.name!r} ({principal.token_id}) is a {principal.kind} token",
            )
        return principal

    return Depends(check)


USER = require("user")
WORKER = require("worker")
USER_OR_WORKER = require("user", "worker")
# A route's caller (``None`` with auth off), for routes that answer each kind differently.
UserOrWorkerDep = Annotated[Principal | None, USER_OR_WORKER]


# -- the dashboard's session ----------------------------------------------------------------------

session_router = APIRouter(prefix="/api/v1/session", tags=["session"])


@session_router.get("")
async def whoami(request: Request, session: Annotated[str | None, Depends(cookie)]) -> Session:
    """Whether auth is on and who this browser is signed in as (never 401: the dashboard asks
    before it shows anything)."""
    ctx = _context(request)
    principal = await run_in_threadpool(auth.authenticate, ctx, session) if session else None
    return Session(
        auth=ctx.settings.auth,
        signed_in=principal is not None,
        token=principal and TokenRef(id=principal.token_id, name=principal.name),
    )


@session_router.post(
    "",
    status_code=204,
    responses={
        401: {"model": ErrorBody, "description": "the token is unknown, revoked or expired"},
        403: {"model": ErrorBody, "description": "a worker token, or a request from another site"},
    },
)
async def sign_in(request: Request, login: Annotated[Login, Body()]) -> Response:
    """Sign the dashboard in with a user token: it is kept in an HttpOnly, SameSite=Strict
    cookie, never in the page's scripts."""
    _check_origin(request)
    principal = await run_in_threadpool(auth.authenticate, _context(request), login.token)
    if principal is None:
        raise AuthError(401, "the token is unknown, revoked or expired")
    if principal.kind != "user":
        raise AuthError(403, "the dashboard needs a user token; this is a worker token")
    response = Response(status_code=204)
    response.set_cookie(
        SESSION_COOKIE,
        login.token,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


@session_router.delete("", status_code=204)
async def sign_out(request: Request) -> Response:
    """Forget the dashboard's session."""
    _check_origin(request)
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response
