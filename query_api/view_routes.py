"""Generic read routes: every projection the query API serves gets its views under /views.

For a projection `p` with document table `t` and child tables `c...`:

- `GET /views/p/{id}`: one document; its ETag is its version.
- `GET /views/p?<filter>=...&limit=&cursor=`: documents in id order, equal on
  the declared `filters`; any other query parameter is refused.
- `GET /views/p/{id}/c`: one document's child rows in version order.

The paths, query parameters and response schemas are concrete per projection
(built from the declarations when the app is created), so the OpenAPI
document names every view and types it from its table. Each request is one
SELECT through the GET pool (`side.reads`).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Annotated, Any, ClassVar

from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.params import Depends as DependsParam
from fastapi.responses import Response
from pydantic import Field, create_model

from eventfold.auth import require
from eventfold.direct_route import RequestParams, served_by
from eventfold.problems import PROBLEM_RESPONSES, Problem
from eventfold.projection import Projection
from query_api import cursor
from query_api.bootstrap import QuerySide
from query_api.columns import column_type, max_length
from query_api.deps import wait_for_position
from query_api.documents import (
    ChildTable,
    DocumentTable,
    get_document,
    list_children,
    list_documents,
    refuse_unknown_filters,
)
from query_api.routing import (
    STREAM_ID,
    WAIT_RESPONSES,
    CanRead,
    Limit,
    SideDep,
    after,
    caught_up,
    etag_matches,
    json_response,
)
from query_api.view_models import camel, page_model, row_model

PageCursor = Annotated[
    str | None, Query(alias="cursor", max_length=1024, description="`next_cursor` of the last page.")
]
DocId = Annotated[str, Path(pattern=STREAM_ID, description="The document's id: its stream's id.")]
# Query parameters every listing takes besides its filters.
_LISTING_PARAMS = frozenset({"limit", "cursor", "wait_for", "wait_timeout"})
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: PROBLEM_RESPONSES[404]}
_AUTH: dict[int | str, dict[str, Any]] = {k: v for k, v in PROBLEM_RESPONSES.items() if k in (401, 403)}


def view_router(projections: Sequence[Projection]) -> APIRouter:
    """The views of `projections`, then a 404 problem for any other path under /views."""
    router = APIRouter(prefix="/views", tags=["views"])
    docs = [DocumentTable.of(p) for p in projections]
    for d in docs:
        _add_views(router, d)
    _add_unknown(router, {d.name: d for d in docs})
    return router


def _add_views(router: APIRouter, docs: DocumentTable) -> None:
    if column_type(docs.table.c.id).python is not str:
        raise ValueError(f"table {docs.table.name!r}: a document's `id` is its stream id, a string column")
    name = docs.name
    clash = _LISTING_PARAMS.intersection(docs.filters)
    if clash:
        raise ValueError(f"projection {name!r} cannot filter on {sorted(clash)}: the listing takes those")
    document = row_model(docs.table, "Document", f"A document of projection `{name}`.")
    waits = caught_up(name)
    deps = [CanRead, waits]
    responses: dict[int | str, dict[str, Any]] = {**_AUTH, **WAIT_RESPONSES}

    async def read_document(
        side: SideDep, id: DocId, if_none_match: Annotated[str | None, Header(max_length=256)] = None
    ) -> Response:
        doc = await get_document(side.reads, docs, id)
        if doc is None:
            raise Problem(404, "document_not_found", f"projection {name!r} has no document {id!r}")
        etag = f'"{doc["version"]}"'
        if etag_matches(if_none_match, etag):
            return Response(status_code=304, headers={"ETag": etag})
        return json_response(doc, headers={"ETag": etag})

    router.add_api_route(
        f"/{name}/{{id}}",
        read_document,
        methods=["GET"],
        response_model=document,
        dependencies=deps,
        responses={304: {"description": "Not modified (If-None-Match holds its version)"}, **responses},
        operation_id=f"read_{name}",
        route_class_override=served_by(_document_arguments(name)),
        summary=f"Read one {name} document",
        description=f"Read one document of projection `{name}`; its ETag is its version.",
    )
    router.add_api_route(
        f"/{name}",
        _listing(docs),
        methods=["GET"],
        response_model=page_model(
            document, f"{camel(docs.table.name)}Page", f"A page of `{name}` documents."
        ),
        # Refuse an unknown parameter before waiting on wait_for.
        dependencies=[CanRead, Depends(_only_filters(docs)), waits],
        responses=responses,
        operation_id=f"list_{name}",
        route_class_override=served_by(_listing_arguments(docs)),
        summary=f"List {name} documents",
        description=(
            f"List documents of projection `{name}` in id order, a page at a time"
            + (f", optionally equal on {', '.join(f'`{f}`' for f in docs.filters)}." if docs.filters else ".")
        ),
    )
    for child in docs.children.values():
        _add_child_view(router, docs, child, deps, responses)


class _WaitParams(RequestParams):
    """`wait_for` and `wait_timeout`, as `caught_up` declares them."""

    LOCATIONS: ClassVar[dict[str, tuple[str, str]]] = {
        "wait_for": ("query", "wait_for"),
        "wait_timeout": ("query", "wait_timeout"),
    }
    wait_for: Annotated[str | None, Field(max_length=512)] = None
    wait_timeout: Annotated[float | None, Field(gt=0)] = None


class _DocumentParams(_WaitParams):
    """What `GET /views/<p>/{id}` reads, with the constraints of its documented signature."""

    LOCATIONS: ClassVar[dict[str, tuple[str, str]]] = {
        **_WaitParams.LOCATIONS,
        "id": ("path", "id"),
        "if_none_match": ("header", "if-none-match"),
    }
    id: Annotated[str, Field(pattern=STREAM_ID)]
    if_none_match: Annotated[str | None, Field(max_length=256)] = None


class _ListingParams(_WaitParams):
    """What every listing reads besides its filters (`_listing_params` adds those)."""

    LOCATIONS: ClassVar[dict[str, tuple[str, str]]] = {
        **_WaitParams.LOCATIONS,
        "limit": ("query", "limit"),
        "cursor_": ("query", "cursor"),
    }
    limit: Annotated[int, Field(ge=1, le=500)] = 50
    cursor_: Annotated[str | None, Field(max_length=1024)] = None


_READER = require("read")


def _document_arguments(projection: str) -> Any:
    """Reads one document route's arguments: authenticates, validates, waits for `wait_for`.

    The hottest read route skips FastAPI's per-request dependency solving
    (`eventfold.direct_route`); it does what its declared dependencies
    (`CanRead`, `caught_up`) do, in their order.
    """

    async def read(request: Request) -> dict[str, Any]:
        await _READER(request)
        params = _DocumentParams.read(request)
        side: QuerySide = request.app.state.side
        await wait_for_position(side, projection, params.wait_for, params.wait_timeout)
        return {"side": side, "id": params.id, "if_none_match": params.if_none_match}

    return read


def _listing_arguments(docs: DocumentTable) -> Any:
    """Reads a listing's arguments as its declared dependencies would, in their order.

    Authenticates, refuses an undeclared parameter (before waiting, so a
    mistyped filter is a 400 at once), validates every parameter in one pass,
    then waits for `wait_for`. The listing's signature, built from the
    declared filters, still describes it in the OpenAPI document.
    """
    filters = _filter_fields(docs)
    params = create_model(  # type: ignore[call-overload]
        f"_{camel(docs.table.name)}ListingParams",
        __base__=_ListingParams,
        **{param: (annotation, None) for param, (_, annotation) in filters.items()},
    )
    params.LOCATIONS = {
        **_ListingParams.LOCATIONS,
        **{param: ("query", column_name) for param, (column_name, _) in filters.items()},
    }
    name = docs.name

    async def read(request: Request) -> dict[str, Any]:
        await _READER(request)
        refuse_unknown_filters(docs, set(request.query_params) - _LISTING_PARAMS)
        given = params.read(request)
        side: QuerySide = request.app.state.side
        await wait_for_position(side, name, given.wait_for, given.wait_timeout)
        args = {"side": side, "limit": given.limit, "cursor_": given.cursor_}
        args.update((param, getattr(given, param)) for param in filters)
        return args

    return read


def _filter_fields(docs: DocumentTable) -> dict[str, tuple[str, Any]]:
    """Per declared filter: its parameter name, its column and its optional, constrained type."""
    fields: dict[str, tuple[str, Any]] = {}
    for i, column_name in enumerate(docs.filters):
        column = docs.table.c[column_name]
        python = column_type(column).python
        longest = max_length(column) if python is str else None
        fields[f"filter_{i}"] = (column_name, Annotated[python | None, Field(max_length=longest)])
    return fields


def _add_child_view(
    router: APIRouter,
    docs: DocumentTable,
    child: ChildTable,
    deps: list[DependsParam],
    responses: dict[int | str, dict[str, Any]],
) -> None:
    name, table = docs.name, child.table.name
    row = row_model(child.table, "Row", f"A row of `{table}`, appended for a document of `{name}`.")
    version = child.version.name

    async def read_children(
        side: SideDep, id: DocId, limit: Limit = 50, cursor_: PageCursor = None
    ) -> Response:
        kind = f"view:{name}/{table}:{id}"
        start = after(kind, cursor_, (int,))
        page = await list_children(
            side.reads, docs, child, id, after=start[0] if start else None, limit=limit
        )
        if page is None:
            raise Problem(404, "document_not_found", f"projection {name!r} has no document {id!r}")
        items, more = page
        nxt = cursor.encode(kind, [items[-1][version]]) if more and items else None
        return json_response({"items": items, "next_cursor": nxt})

    router.add_api_route(
        f"/{name}/{{id}}/{table}",
        read_children,
        methods=["GET"],
        response_model=page_model(row, f"{camel(table)}Page", f"A page of `{table}` rows."),
        dependencies=deps,
        responses=responses,
        operation_id=f"list_{name}_{table}",
        summary=f"List a {name} document's {table}",
        description=f"List the `{table}` rows of one `{name}` document in version order, a page at a time.",
    )


def _listing(docs: DocumentTable) -> Any:
    """The listing endpoint, with one typed, optional query parameter per declared filter."""
    name = docs.name
    by_param = {param: column for param, (column, _) in _filter_fields(docs).items()}

    async def list_view(side: QuerySide, limit: int, cursor_: str | None, **filters: Any) -> Response:
        kind = f"view:{name}"
        start = after(kind, cursor_, (str,))
        where = {by_param[p]: v for p, v in filters.items() if v is not None}
        items, more = await list_documents(
            side.reads, docs, where=where, after=start[0] if start else None, limit=limit
        )
        nxt = cursor.encode(kind, [items[-1]["id"]]) if more and items else None
        return json_response({"items": items, "next_cursor": nxt})

    params = [
        inspect.Parameter("side", inspect.Parameter.KEYWORD_ONLY, annotation=SideDep),
        inspect.Parameter("limit", inspect.Parameter.KEYWORD_ONLY, annotation=Limit, default=50),
        inspect.Parameter("cursor_", inspect.Parameter.KEYWORD_ONLY, annotation=PageCursor, default=None),
    ]
    for param, column_name in by_param.items():
        column = docs.table.c[column_name]
        python = column_type(column).python
        query = Query(
            alias=column_name,
            max_length=max_length(column) if python is str else None,
            description=column.comment or f"Only documents whose `{column_name}` equals this.",
        )
        params.append(
            inspect.Parameter(
                param,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=Annotated[python | None, query],
                default=None,
            )
        )
    list_view.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    return list_view


def _only_filters(docs: DocumentTable) -> Any:
    """Refuse a query parameter the listing does not take: a mistyped filter must not list everything."""

    async def only_declared_filters(request: Request) -> None:
        refuse_unknown_filters(docs, set(request.query_params) - _LISTING_PARAMS)

    return only_declared_filters


def _add_unknown(router: APIRouter, docs: dict[str, DocumentTable]) -> None:
    """404 problems that say which views exist, for paths under /views that name none."""

    def unknown_projection(projection: str) -> Problem:
        return Problem(
            404,
            "view_not_found",
            f"there is no view {projection!r} (known: {', '.join(docs) or 'none'})",
        )

    async def unknown(projection: str) -> None:
        raise unknown_projection(projection)

    async def unknown_child(projection: str, id: str, child: str) -> None:
        d = docs.get(projection)
        if d is None:
            raise unknown_projection(projection)
        raise Problem(
            404,
            "view_not_found",
            f"projection {projection!r} has no child table {child!r} "
            f"(known: {', '.join(d.children) or 'none'})",
        )

    for path, endpoint in (
        ("/{projection}", unknown),
        ("/{projection}/{id}", unknown),
        ("/{projection}/{id}/{child}", unknown_child),
    ):
        router.add_api_route(
            path,
            endpoint,
            methods=["GET"],
            dependencies=[CanRead],
            include_in_schema=False,
            responses=_NOT_FOUND,
        )
