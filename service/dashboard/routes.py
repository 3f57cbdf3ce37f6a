"""Serves the dashboard's page and assets. Every script and style comes from this service
(plotly.js from the installed plotly package), so the page works where no CDN is reachable."""

from __future__ import annotations

from pathlib import Path

import plotly
from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

STATIC = Path(__file__).parent / "static"
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
_ASSETS = {"app.js": "text/javascript", "trial.js": "text/javascript", "app.css": "text/css"}

router = APIRouter(include_in_schema=False)

# The page runs only its own scripts: no inline script, nothing from elsewhere, no framing.
# Inline styles stay allowed: the progress bars set their width that way, and plotly.js styles
# its plots through style attributes.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}


@router.get("/")
def index() -> FileResponse:
    """The single page; routes after ``#`` are the browser's."""
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=PAGE_HEADERS)


@router.get("/static/vendor/plotly.min.js")
def plotly_js() -> FileResponse:
    """plotly.js, from the Python package (cached for a day)."""
    return FileResponse(
        PLOTLY_JS, media_type="text/javascript", headers={"Cache-Control": "public, max-age=86400"}
    )


@router.get("/static/{name}")
def asset(name: str) -> FileResponse:
    """The page's own script and style (a fixed list: no path reaches the file system)."""
    if name not in _ASSETS:
        raise HTTPException(status_code=404, detail=f"no asset {name!r}")
    return FileResponse(
        STATIC / name, media_type=_ASSETS[name], headers={"Cache-Control": "no-cache"}
    )
