"""Request dependencies as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request

from service.context import ServiceContext


def get_context(request: Request) -> ServiceContext:
    """The process's service context, built by ``create_app``."""
    context: ServiceContext = request.app.state.context
    return context


ContextDep = Annotated[ServiceContext, Depends(get_context)]
OffsetDep = Annotated[int, Query(ge=0, description="rows to skip")]
LimitDep = Annotated[int, Query(ge=1, le=1000, description="rows per page")]
