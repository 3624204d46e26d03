"""The console page, its static files, and `/` pointing newcomers at it.

The page is plain HTML, CSS and JavaScript shipped in the package
(`static/`): no build step, nothing fetched from elsewhere at run time. Its
status table is rendered here, on the server, when the request carries a
token that grants `read` (or authentication is off), so the read-only view
works without JavaScript; the script then keeps it live and adds the rest.
"""

from __future__ import annotations

from html import escape
from importlib.resources import files
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from eventfold.auth import Authenticator
from eventfold.problems import Problem
from query_api.console.deps import Viewer
from query_api.routing import SideDep, json_response
from query_api.status import process_manager_report, projection_report, reactor_report

STATIC = files("query_api.console") / "static"
_SLOT = "<!-- status rendered by the server -->"


def mount_static(app: FastAPI) -> None:
    app.mount("/console/static", StaticFiles(directory=str(STATIC)), name="console-static")


def page_router() -> APIRouter:
    """`/`, `/console` and `/console/api/session`; the page's template is read once, here."""
    template = (STATIC / "index.html").read_text()
    router = APIRouter(tags=["console"])

    @router.get("/", include_in_schema=False)
    async def root() -> Response:
        """The console, for whoever opens the API's address in a browser."""
        return RedirectResponse("/console", status_code=307)

    @router.get("/console", response_class=HTMLResponse, include_in_schema=False)
    async def read_console(request: Request, side: SideDep) -> Response:
        """The console page, its status table rendered for a caller who may read it."""
        status = await _status_html(request, side)
        return HTMLResponse(
            template.replace(_SLOT, status),
            headers={
                "cache-control": "no-store",
                # Everything the page loads is its own; nothing may be injected from elsewhere.
                "content-security-policy": "default-src 'self'; img-src 'self' data:; "
                "style-src 'self'; script-src 'self'; frame-ancestors 'none'",
                "referrer-policy": "no-referrer",
            },
        )

    @router.get("/console/api/session")
    async def read_session(principal: Viewer) -> Response:
        """Who the token is and what it may do (never the token itself)."""
        return json_response({"key_id": principal.key_id, "scopes": sorted(principal.scopes)})

    return router


async def _status_html(request: Request, side: Any) -> str:
    authenticator: Authenticator = request.app.state.authenticator
    try:
        principal = authenticator.authenticate(request.headers.get("authorization"))
    except Problem:
        return '<p class="muted">Sign in to see the projections.</p>'
    if not principal.allows("read"):
        return '<p class="muted">This key does not grant <code>read</code>.</p>'
    kafka, marks = side.settings.kafka, side.watermarks
    rows = await projection_report(side.engine, side.projections, kafka, marks)
    rows += await reactor_report(side.engine, side.reactors, kafka, marks)
    rows += await process_manager_report(side.engine, side.process_managers, kafka, marks)
    return status_table(rows)


def status_table(rows: list[dict[str, Any]]) -> str:
    """The status of every projection, reactor and process manager as an HTML table."""
    titles = ("Name", "Kind", "State", "Events applied", "Lag", "Dead letters")
    head = "".join(f'<th scope="col">{h}</th>' for h in titles)
    body = "".join(
        "<tr>"
        f'<th scope="row">{escape(r["name"])}</th>'
        f"<td>{escape(r.get('kind', 'projection'))}</td>"
        f"<td>{escape(str(r['state']))}</td>"
        f"<td>{_n(r['events_applied'])}</td>"
        f"<td>{_n(r['lag'])}</td>"
        f"<td>{_n(r['dead_letters'])}</td>"
        "</tr>"
        for r in rows
    )
    return f'<table class="status-table"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _n(value: int | None) -> str:
    return "unknown" if value is None else f"{value:,}"
