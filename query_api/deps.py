"""Dependencies the query routes receive through `Annotated` shortcuts."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Query, Request

from eventfold.problems import Problem
from query_api.bootstrap import QuerySide
from schemas.position import InvalidPosition, Position


async def get_side(request: Request) -> QuerySide:
    side: QuerySide = request.app.state.side
    return side


SideDep = Annotated[QuerySide, Depends(get_side)]


async def wait_for_position(
    side: QuerySide, projection: str, wait_for: str | None, wait_timeout: float | None
) -> None:
    """Hold the request until `projection` has applied `wait_for` (a command's position)."""
    qcfg = side.settings.query_api
    if wait_timeout is not None and wait_timeout > qcfg.wait_timeout_max_s:
        raise Problem(
            422,
            "invalid_wait_timeout",
            f"wait_timeout may be at most {qcfg.wait_timeout_max_s:g} seconds",
        )
    if wait_for is None:
        return
    try:
        pos = Position.parse(wait_for)
    except InvalidPosition as exc:
        raise Problem(400, "invalid_position", str(exc)) from None
    topics = {p.topic(side.settings.kafka) for p in side.projections if p.name == projection}
    if pos.topic not in topics:
        raise Problem(
            400,
            "invalid_position",
            f"the position is on {pos.topic!r}, which projection {projection!r} does not read",
        )
    timeout = wait_timeout if wait_timeout is not None else qcfg.wait_timeout_default_s
    if not await side.watcher.wait((projection, pos.topic, pos.partition), pos.offset, timeout):
        raise Problem(
            504,
            "projection_lagging",
            f"projection {projection!r} has not applied the position within {timeout:g}s",
            headers={"Retry-After": "1"},
        )


WAIT_FOR_DESCRIPTION = "A command's `position`: answer only once it is applied."
WAIT_TIMEOUT_DESCRIPTION = "Seconds to wait for `wait_for` (default 5, max 30)."


def _waiter(projection: str):  # type: ignore[no-untyped-def]
    async def wait_for_position_of(
        side: SideDep,
        wait_for: Annotated[str | None, Query(max_length=512, description=WAIT_FOR_DESCRIPTION)] = None,
        wait_timeout: Annotated[float | None, Query(gt=0, description=WAIT_TIMEOUT_DESCRIPTION)] = None,
    ) -> None:
        """Hold the request until the projection has applied `wait_for`."""
        await wait_for_position(side, projection, wait_for, wait_timeout)

    return wait_for_position_of


def caught_up(projection: str) -> Any:
    """A route dependency: with `wait_for`, answer only once `projection` has applied it."""
    return Depends(_waiter(projection))
