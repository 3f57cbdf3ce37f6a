"""Domain errors -> HTTP, in one place, with one JSON shape:
``{"detail": "...", "errors": [{"field": "...", "reason": "..."}]}``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, DBAPIError
from starlette.exceptions import HTTPException

from service.api.auth import AuthError
from service.datasets.uploads import StorageFullError, UploadTooLargeError
from service.db.session import database_unavailable
from service.errors import AlreadyExistsError, ConflictError, InvalidSpecError, NotFoundError
from service.optuna_bridge import StorageInternalError
from service.schemas import ErrorBody

log = logging.getLogger(__name__)
# How long a client should wait before retrying while the database is away (restarting, failing
# over, busy): workers retry 503s by themselves, through the outage.
DATABASE_RETRY_AFTER_SECONDS = 1

_UNION_TAGS = {"float", "int", "categorical", "function-after[_one_source()]"}
# How much of a refused input a reason quotes: a 10,000-character string is named, not repeated.
_QUOTED_CHARS = 80


# Documented on every route, so that clients (and the schema fuzzer) know each refusal's shape.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in (
        (401, "no valid token (HPSEARCH_AUTH=on)"),
        (403, "a token of the wrong kind, or a request from another site"),
        (404, "no such study, trial or dataset"),
        (408, "the request body did not arrive in time"),
        (409, "the resource's state forbids it, or a configured maximum is reached"),
        (413, "the request body passes its size limit"),
        (422, "invalid input: each field at fault, with its reason"),
        (503, "the database is unavailable: retry after Retry-After"),
    )
}


def _body(detail: str, errors: list[dict[str, str]] | None = None) -> dict[str, Any]:
    return {"detail": detail, "errors": errors or []}


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc[1:] if str(p) not in _UNION_TAGS] if loc else []
    if loc and loc[0] in ("query", "path"):
        parts = [str(p) for p in loc[1:]]
    return ".".join(parts) or "(body)"


def refusal(
    status: int, reason: str, field: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """A refusal in the one error shape; with ``field``, the detail names it too. Also an ASGI
    app, so that middleware can answer with it before the application runs."""
    errors = [{"field": field, "reason": reason}] if field else []
    detail = f"{field}: {reason}" if field else reason
    return JSONResponse(status_code=status, content=_body(detail, errors), headers=headers)


def _quoted(value: Any) -> str:
    text = repr(value)
    if len(text) <= _QUOTED_CHARS:
        return text
    return f"{text[: _QUOTED_CHARS - 2]}…{text[-1]} ({len(text):,} characters)"


def _human(n: int) -> str:
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:g} {unit}"
        size /= 1024
    return f"{size:g} TiB"


async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
    # FastAPI answers a body it cannot parse with a bare 400: it is invalid input like any
    # other, so it gets the 422 and the field-by-field shape of every refusal.
    if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
        reason = "not valid JSON (or not UTF-8)"
        return JSONResponse(
            status_code=422,
            content=_body(f"(body): {reason}", [{"field": "(body)", "reason": reason}]),
        )
    return JSONResponse(
        status_code=exc.status_code, content=_body(str(exc.detail)), headers=exc.headers
    )


async def _unauthorized(request: Request, exc: AuthError) -> JSONResponse:
    log.info(
        "request refused",
        extra={"path": request.url.path, "status": exc.status_code, "problem": exc.detail},
    )
    headers = {"WWW-Authenticate": 'Bearer realm="hpsearch"'} if exc.status_code == 401 else {}
    return JSONResponse(status_code=exc.status_code, content=_body(exc.detail), headers=headers)


async def _invalid(_: Request, exc: InvalidSpecError) -> JSONResponse:
    return JSONResponse(status_code=422, content=_body(str(exc), exc.to_json()))


async def _invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = []
    for err in exc.errors():
        reason = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        quote = "input" in err and not isinstance(err["input"], dict)
        if quote and err.get("type") not in ("missing", "extra_forbidden"):
            reason += f" (got {_quoted(err['input'])})"
        if err.get("type") == "extra_forbidden":
            reason = "unknown name"
        errors.append({"field": _field(tuple(err.get("loc", ()))), "reason": reason})
    detail = "; ".join(f"{e['field']}: {e['reason']}" for e in errors)
    return JSONResponse(status_code=422, content=_body(detail, errors))


async def _too_large(request: Request, exc: UploadTooLargeError) -> JSONResponse:
    limit = request.app.state.context.settings.max_upload_bytes
    reason = (
        f"the file passes the limit of {limit:,} bytes ({_human(limit)}; "
        "HPSEARCH_MAX_UPLOAD_BYTES); nothing was stored"
    )
    return JSONResponse(
        status_code=413,
        content=_body(f"file: {reason}", [{"field": "file", "reason": reason}]),
        headers={"Connection": "close"},
    )


async def _storage_full(_: Request, exc: StorageFullError) -> JSONResponse:
    log.error("upload refused: the artifact directory is full", extra={"problem": str(exc)})
    reason = f"the service has no room for this file ({exc.strerror}); nothing was stored"
    return JSONResponse(
        status_code=507, content=_body(reason, [{"field": "file", "reason": reason}])
    )


async def _exists(_: Request, exc: AlreadyExistsError) -> JSONResponse:
    return JSONResponse(
        status_code=409, content=_body(str(exc), [{"field": exc.field, "reason": str(exc)}])
    )


async def _not_found(_: Request, exc: NotFoundError) -> JSONResponse:
    return JSONResponse(status_code=404, content=_body(str(exc)))


async def _conflict(_: Request, exc: ConflictError) -> JSONResponse:
    return JSONResponse(status_code=409, content=_body(str(exc)))


async def _unstorable(request: Request, exc: DataError) -> JSONResponse:
    # The database refused a value (too long, out of range, a NUL on PostgreSQL) that the
    # API's checks let through: still bad input, not a server error; the transaction was
    # rolled back. Logged, since a check that names the field is missing.
    problem = str(exc.orig).splitlines()[0] if exc.orig is not None else str(exc)
    log.warning(
        "a value the database cannot store reached it: answered 422",
        extra={"path": request.url.path, "problem": problem},
    )
    reason = f"a value does not fit what the database stores ({problem}); nothing was changed"
    return JSONResponse(
        status_code=422, content=_body(reason, [{"field": "(body)", "reason": reason}])
    )


async def _database(request: Request, exc: Exception) -> JSONResponse:
    problem = database_unavailable(exc)
    if problem is None:
        raise exc  # a bug, not an outage: the usual 500, with its traceback in the log
    log.warning(
        "database unavailable; answered 503",
        extra={"path": request.url.path, "problem": problem},
    )
    return JSONResponse(
        status_code=503,
        content=_body(f"the database is unavailable, retry shortly: {problem}"),
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
    )


# Each refusal's handler, by the exception that it answers.
_HANDLERS: tuple[tuple[type[Exception], Any], ...] = (
    (HTTPException, _http_error),
    (AuthError, _unauthorized),
    (InvalidSpecError, _invalid),
    (RequestValidationError, _invalid_request),
    (UploadTooLargeError, _too_large),
    (StorageFullError, _storage_full),
    (AlreadyExistsError, _exists),
    (NotFoundError, _not_found),
    (ConflictError, _conflict),
    (DataError, _unstorable),
    (DBAPIError, _database),
    (StorageInternalError, _database),
)


def install_error_handlers(app: FastAPI) -> None:
    """Register the mapping on ``app``."""
    for exc_type, handler in _HANDLERS:
        app.add_exception_handler(exc_type, handler)
