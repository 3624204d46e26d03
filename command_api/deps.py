"""Dependencies the routes receive through `Annotated` shortcuts."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from command_api.bootstrap import CommandSide


def get_side(request: Request) -> CommandSide:
    side: CommandSide = request.app.state.side
    return side


SideDep = Annotated[CommandSide, Depends(get_side)]
