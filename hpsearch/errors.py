"""Validation errors that name the field at fault and the reason, shared by both halves."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError


@dataclass(frozen=True)
class FieldError:
    """One rejected field: a dotted path (``search_space.dropout.high``) and the reason."""

    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"


class InvalidSpecError(ValueError):
    """Raised when parameters, a dataset spec or a study spec are rejected before any work starts.

    ``errors`` lists every field at fault, so that a caller can show each next to its input.
    """

    def __init__(self, errors: Iterable[FieldError]) -> None:
        self.errors: tuple[FieldError, ...] = tuple(errors)
        super().__init__("; ".join(str(e) for e in self.errors))

    def to_json(self) -> list[dict[str, str]]:
        """The errors as ``[{"field": ..., "reason": ...}]``, the product's one error shape."""
        return [{"field": e.field, "reason": e.reason} for e in self.errors]


def field_errors_from_pydantic(
    exc: ValidationError, describe: Any = None, prefix: str = ""
) -> list[FieldError]:
    """Turn a pydantic ``ValidationError`` into ``FieldError``s.

    ``describe(name)``, when given, returns the allowed domain of a top-level field (e.g.
    ``"a float in (0, 1)"``); it is appended to the reason so that every message names the range.
    """
    out: list[FieldError] = []
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err["loc"] if p != "__root__"]
        # Model validators report at the model level; their message already names the field.
        if not loc and err["type"] == "value_error":
            message = str(err.get("ctx", {}).get("error", err["msg"]))
            name, _, reason = message.partition(": ")
            out.append(
                FieldError(
                    prefix + name if reason else prefix.rstrip(".") or "(spec)", reason or message
                )
            )
            continue
        name = ".".join(loc)
        if err["type"] == "extra_forbidden":
            reason = "unknown name"
            if describe is not None:
                known = describe(None)
                if known:
                    reason += f"; known names: {known}"
        else:
            reason = err["msg"].removeprefix("Value error, ")
            if "input" in err and err["type"] != "missing":
                reason += f" (got {err['input']!r})"
            if describe is not None and loc:
                domain = describe(loc[0])
                if domain:
                    reason += f"; allowed: {domain}"
        out.append(FieldError(prefix + name, reason))
    return out
