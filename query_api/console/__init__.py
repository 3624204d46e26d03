"""The eventfold console: a page served by the query API at `/console`, and the JSON it reads.

    /console                          the page (status rendered on the server)
    /console/api/session              the token's id and scopes
    /console/api/dead-letters[...]    list, read, re-drive one or all
    /console/api/streams/{type}/{id}  one stream: topic, write side, read models
    /console/api/tail/{type}          live tail of a topic (Server-Sent Events)

Status and rebuilds are the query API's own `GET /projections` and
`POST /projections/{name}/rebuild`. Views need `read`, re-drives `admin`.
"""

from __future__ import annotations

from fastapi import FastAPI


def install(app: FastAPI) -> None:
    """Mount the console's page, static files and routes on the query API."""
    from query_api.console import dead_letters, pages, streams, tail

    app.include_router(pages.page_router())
    app.include_router(dead_letters.router)
    app.include_router(streams.router)
    app.include_router(tail.router)
    pages.mount_static(app)
