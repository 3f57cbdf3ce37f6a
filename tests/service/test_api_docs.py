"""``/docs`` on a machine without internet: Swagger UI served whole by the API (its script and
style from the fastapi-offline package), opened in a real browser (Debian's chromium, driven by
Playwright) that may reach nothing but the API; behind a token, under a CSP of its own. And the
files the API serves are in the wheel that the API image installs."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from tests.service.test_dashboard import Tab, browser  # noqa: F401  (browser: a fixture)
from tests.support import Api, start_secured_api

ROOT = Path(__file__).resolve().parents[2]
# Records every Content-Security-Policy violation of the page, from before its first script.
CSP_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => window.__cspViolations.push(
  `${e.violatedDirective}: ${e.blockedURI} at ${e.sourceFile}:${e.lineNumber}`));
"""


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """An API with auth on (the docs do not depend on the database: SQLite)."""
    server, drop = start_secured_api("sqlite", tmp_path_factory.mktemp("docs"))
    yield server
    server.stop()
    drop()


def operations(api: Api) -> list[tuple[str, str, str]]:
    """(tag, METHOD, path) of every operation in the API's OpenAPI schema, once per tag: Swagger
    UI lists an operation under each of its tags ("default" when it has none)."""
    schema = api.http.get("/openapi.json").json()
    return [
        (tag, method.upper(), path)
        for path, item in schema["paths"].items()
        for method, operation in item.items()
        if method in ("get", "put", "post", "delete", "patch", "head", "options")
        for tag in operation.get("tags") or ["default"]
    ]


def test_docs_list_every_operation_with_nothing_outside_the_service_reachable(
    secured: Api,
    browser: Any,  # noqa: F811
) -> None:
    expected = operations(secured)
    assert ("studies", "POST", "/api/v1/studies") in expected and len(expected) >= 25
    tab = Tab(browser)
    page = tab.page
    outside: list[str] = []

    def only_the_service(route: Any) -> None:
        url = route.request.url
        if url == secured.url or url.startswith(secured.url + "/"):
            route.continue_()
        else:
            outside.append(url)
            route.abort()

    page.route("**/*", only_the_service)
    page.add_init_script(CSP_VIOLATIONS)
    # Signed in as the dashboard signs in: the session cookie then opens /docs.
    signed = tab.context.request.post(
        f"{secured.url}/api/v1/session", data={"token": secured.token}
    )
    assert signed.status == 204

    answer = page.goto(f"{secured.url}/docs")
    assert answer is not None and answer.status == 200
    try:
        page.wait_for_function(
            "n => document.querySelectorAll('.opblock').length === n", arg=len(expected)
        )
    except PlaywrightTimeoutError:
        listed = page.locator(".opblock").count()
        raise AssertionError(
            f"Swagger UI lists {listed} of {len(expected)} operations; requests blocked: "
            f"{outside}; errors: {tab.errors}"
        ) from None
    shown = page.eval_on_selector_all(
        ".opblock",
        """blocks => blocks.map(b => [
             b.closest('.opblock-tag-section').querySelector('.opblock-tag').dataset.tag,
             b.querySelector('.opblock-summary-method').textContent,
             b.querySelector('.opblock-summary-path').dataset.path])""",
    )
    assert sorted(map(tuple, shown)) == sorted(expected)
    assert page.title() == "hpsearch API"
    assert "hpsearch" in page.inner_text(".info .title")

    # An operation opens, and "Try it out" calls the API with the session's cookie.
    listing = page.locator(
        '.opblock-get:has(.opblock-summary-path[data-path="/api/v1/studies"])'
    ).first
    listing.locator(".opblock-summary").click()
    listing.locator(".try-out__btn").click()
    listing.locator(".execute").click()
    answered = listing.locator(".live-responses-table tbody tr.response").first
    answered.wait_for()
    assert answered.locator(".response-col_status").inner_text().strip() == "200"
    assert '"count"' in answered.locator(".response-col_description pre").first.inner_text()
    studies = page.locator('.opblock-post:has(.opblock-summary-path[data-path="/api/v1/studies"])')
    assert studies.count() == 1 and studies.is_visible()
    tab.shot("api-docs-offline")

    assert outside == []
    assert page.evaluate("window.__cspViolations") == []
    assert tab.errors == []
    tab.close()


def test_docs_need_a_token_and_send_a_csp_without_inline_scripts(secured: Api) -> None:
    assert httpx.get(f"{secured.url}/docs").status_code == 401
    assert httpx.get(f"{secured.url}/openapi.json").status_code == 401
    page = secured.http.get("/docs")  # with a Bearer token
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "://" not in page.text  # nothing named on another origin
    policy = dict(
        d.strip().split(" ", 1) for d in page.headers["content-security-policy"].split(";")
    )
    assert policy["script-src"] == "'self'" and policy["default-src"] == "'none'"
    assert policy["connect-src"] == "'self'" and policy["frame-ancestors"] == "'none'"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["referrer-policy"] == "no-referrer"

    # Swagger UI's own files hold no data: no token needed, and nothing else is reachable.
    for name, kind in (
        ("swagger-ui-bundle.js", "text/javascript"),
        ("swagger-ui.css", "text/css"),
        ("init.js", "text/javascript"),
    ):
        asset = httpx.get(f"{secured.url}/docs/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind)
        assert asset.headers["x-content-type-options"] == "nosniff"
        assert f"/docs/{name}" in page.text
    assert "SwaggerUIBundle" in httpx.get(f"{secured.url}/docs/swagger-ui-bundle.js").text
    for name in ("redoc.standalone.js", "..%2F..%2Fpyproject.toml", "index.html"):
        missing = httpx.get(f"{secured.url}/docs/{name}")
        assert missing.status_code == 404, name


def test_the_api_image_s_wheel_holds_the_files_the_api_serves(tmp_path: Path) -> None:
    """The API image installs a wheel built from what .dockerignore lets in: every file of the
    docs' and the dashboard's folders must be in it (a wheel leaves out what is not Python
    unless pyproject.toml names it)."""
    uv = Path(sys.executable).parent / "uv"
    assert uv.exists(), f"uv is expected beside {sys.executable} (make install puts it there)"
    context = tmp_path / "context"
    context.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, context / name)
    for package in ("hpsearch", "service", "trainer"):
        shutil.copytree(
            ROOT / package, context / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    built = subprocess.run(
        [str(uv), "build", "--offline", "--wheel", "--out-dir", str(tmp_path / "dist")],
        cwd=context,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("hpsearch-*.whl")
    packaged = set(zipfile.ZipFile(wheel).namelist())
    served = [
        path.relative_to(ROOT).as_posix()
        for folder in ("service/api/docs_static", "service/dashboard/static")
        for path in sorted((ROOT / folder).iterdir())
        if path.is_file()
    ]
    assert "service/api/docs_static/init.js" in served
    assert [path for path in served if path not in packaged] == []
