"""The drain's record of the trials this API process serves notes a trial only when the call
that names it was answered 2xx: an unauthenticated or refused request (anyone can send one)
cannot keep a draining serve waiting on a trial it never served (review of issue 16)."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from service.api.lifecycle import Drain, DrainGate


async def protocol_call(request: Request) -> JSONResponse:
    """Answers as the API would: 401 without a token, 409 for a lease not held, else 200."""
    if "authorization" not in request.headers:
        return JSONResponse({"detail": "a token is needed"}, status_code=401)
    if request.path_params["trial_id"] == 2:
        return JSONResponse({"detail": "not leased to you"}, status_code=409)
    return JSONResponse({"should_stop": False})


def test_only_trials_named_by_answered_calls_are_noted() -> None:
    drain = Drain()
    app = Starlette(
        routes=[Route("/api/v1/trials/{trial_id:int}/{call}", protocol_call, methods=["POST"])]
    )
    client = TestClient(DrainGate(app, drain, ask_again=1, come_back=1))
    assert client.post("/api/v1/trials/1/report", json={}).status_code == 401
    assert client.post("/api/v1/trials/7/heartbeat", json={}).status_code == 401
    token = {"Authorization": "Bearer t"}
    assert client.post("/api/v1/trials/2/report", json={}, headers=token).status_code == 409
    assert drain.recent_trials(60) == []
    assert client.post("/api/v1/trials/3/report", json={}, headers=token).status_code == 200
    assert client.post("/api/v1/trials/4/release", json={}, headers=token).status_code == 200
    assert sorted(drain.recent_trials(60)) == [3, 4]
