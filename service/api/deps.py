"""Request dependencies as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated, Any, NamedTuple

from fastapi import Depends, Path, Query, Request
from fastapi.exceptions import RequestValidationError

from service.context import ServiceContext

# Ids are 32-bit in the database: a larger one is a 422, never a database error.
MAX_ID = 2**31 - 1


def get_context(request: Request) -> ServiceContext:
    """The process's service context, built by ``create_app``."""
    context: ServiceContext = request.app.state.context
    return context


ContextDep = Annotated[ServiceContext, Depends(get_context)]
StudyIdPath = Annotated[int, Path(ge=1, le=MAX_ID, description="the study's id")]
TrialIdPath = Annotated[int, Path(ge=1, le=MAX_ID, description="the trial's id (assignment)")]
TrialNumberPath = Annotated[int, Path(ge=0, le=MAX_ID, description="the trial's number")]


class Page(NamedTuple):
    """Which rows of a list: ``limit`` rows from ``offset``."""

    offset: int
    limit: int


def page(default: int) -> Any:
    """A dependency for ``offset`` and ``limit`` (at most ``HPSEARCH_MAX_PAGE_SIZE``)."""

    def dependency(
        ctx: ContextDep,
        offset: Annotated[int, Query(ge=0, le=MAX_ID, description="rows to skip")] = 0,
        limit: Annotated[
            int, Query(ge=1, le=MAX_ID, description="rows per page (HPSEARCH_MAX_PAGE_SIZE)")
        ] = default,
    ) -> Page:
        maximum = ctx.settings.max_page_size
        if limit > maximum:
            raise RequestValidationError(
                [
                    {
                        "type": "less_than_equal",
                        "loc": ("query", "limit"),
                        "msg": f"at most {maximum} rows per page (HPSEARCH_MAX_PAGE_SIZE)",
                        "input": limit,
                    }
                ]
            )
        return Page(offset, limit)

    return Depends(dependency)
