"""The session's answers (the dashboard's sign-in)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class TokenRef(BaseModel):
    """A token, by id and name (never its secret)."""

    id: str
    name: str


class Session(BaseModel):
    """Whether auth is on, and who this browser is signed in as."""

    auth: bool
    signed_in: bool
    token: TokenRef | None = Field(description="the signed-in token, if any")


class Login(BaseModel):
    """A sign-in."""

    token: str = Field(min_length=1, max_length=512, description="a user token")
