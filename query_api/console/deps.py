"""The console's dependencies: its resources and the scopes its routes check."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from eventfold.auth import Principal, require
from query_api.console.resources import ConsoleSide


async def get_console(request: Request) -> ConsoleSide:
    console: ConsoleSide = request.app.state.console
    return console


ConsoleDep = Annotated[ConsoleSide, Depends(get_console)]
# Views of the console need `read`; re-drives and rebuilds need `admin`.
Viewer = Annotated[Principal, Depends(require("read"))]
Operator = Annotated[Principal, Depends(require("admin"))]
