"""Dependencies the routes receive through `Annotated` shortcuts."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from command_api.bootstrap import CommandSide


async def get_side(request: Request) -> CommandSide:
    # async on purpose: FastAPI runs a plain `def` dependency in a worker thread.
    side: CommandSide = request.app.state.side
    return side


SideDep = Annotated[CommandSide, Depends(get_side)]
