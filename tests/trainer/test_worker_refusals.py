"""What the worker makes of an API refusal whose body is not the API's JSON (a proxy's HTML
page, a JSON list): an error that says what came back, never a decoding error escaping the
worker (review of issue 16). Against a real HTTP server standing in for a proxy."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from hpsearch.client import Client, LeaseLostError, TokenRefusedError
from hpsearch.protocol import EpochReport

HTML = "<html><body><h1>404 Not Found</h1>nginx</body></html>"
# path -> (status, content type, body)
ANSWERS = {
    "/api/v1/trials/1/report": (404, "text/html", HTML),
    "/api/v1/trials/2/report": (409, "application/json", json.dumps(["held", "elsewhere"])),
    "/api/v1/trials/3/report": (401, "application/json", json.dumps(["no", "token"])),
    "/api/v1/trials/4/report": (403, "text/html", "<p>forbidden by the proxy</p>"),
    "/api/v1/trials/5/report": (404, "application/json", json.dumps({"detail": "no trial 5"})),
}


class Proxy(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        status, content_type, body = ANSWERS[self.path]
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    api = Client(f"http://127.0.0.1:{server.server_address[1]}", "t", connect_deadline=5.0)
    yield api
    api.close()
    server.shutdown()


def report(client: Client, trial_id: int) -> None:
    client.report(trial_id, EpochReport(worker_id="w", attempt=1, epoch=1, metrics={"loss": 1.0}))


@pytest.mark.parametrize(
    ("trial_id", "error", "says"),
    [
        (1, LeaseLostError, HTML),
        (2, LeaseLostError, '["held", "elsewhere"]'),
        (3, TokenRefusedError, 'HTTP 401: ["no", "token"]'),
        (4, TokenRefusedError, "HTTP 403: <p>forbidden by the proxy</p>"),
        (5, LeaseLostError, "no trial 5"),
    ],
)
def test_a_refusal_that_is_not_the_apis_json_says_what_came_back(
    client: Client, trial_id: int, error: type[Exception], says: str
) -> None:
    with pytest.raises(error) as info:
        report(client, trial_id)
    assert type(info.value) is error
    assert says in str(info.value)
