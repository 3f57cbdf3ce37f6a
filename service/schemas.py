"""What every domain's answers share: timestamps as the API writes them, and a page of rows."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field, WithJsonSchema

# Timestamps are stored and answered as naive UTC (no offset), which JSON Schema's date-time
# format would reject: the schema says so in words.
UtcTimestamp = Annotated[
    datetime,
    WithJsonSchema(
        {"type": "string", "description": "UTC, ISO 8601 without an offset: 2025-01-31T12:00:00"}
    ),
]


class PageInfo(BaseModel):
    """Where a page of a list sits: the list's length and the page's bounds."""

    count: int = Field(description="rows in the whole list (matching the query)")
    offset: int
    limit: int


class Health(BaseModel):
    """``/healthz``: the process is up."""

    status: Literal["ok"]


class Readiness(BaseModel):
    """``/readyz``: the database answers and its schema is current (503 otherwise)."""

    status: Literal["ready"]


class FieldProblem(BaseModel):
    """A field at fault: its dotted path and the reason."""

    field: str
    reason: str


class ErrorBody(BaseModel):
    """Every refusal: what went wrong, and each field at fault with its reason."""

    detail: str
    errors: list[FieldProblem]
