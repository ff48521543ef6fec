"""``GET /api/v1/events``: the audit log, filtered, and followed by long polling."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from edgefleet.controller.api import queries
from edgefleet.controller.api.convert import event_schema, parse_time
from edgefleet.controller.api.devices import ControllerDep
from edgefleet.controller.api.errors import ApiError
from edgefleet.controller.api.schemas import EventList
from edgefleet.controller.models import EventKind

__all__ = ["MAX_WAIT_S", "router"]

router = APIRouter(tags=["events"])

# Maximum wait for new events, in seconds. Proxies commonly cut idle requests at 60 s.
MAX_WAIT_S = 60.0
# How often a waiting request checks for new events. Events come at human pace (deploys,
# alerts), so a quarter second costs one indexed query per waiting client and adds no
# delay anyone notices.
POLL_INTERVAL_S = 0.25


@router.get("/events", response_model=EventList, summary="List or follow events")
async def list_events(
    request: Request,
    controller: ControllerDep,
    device_id: Annotated[str | None, Query(description="Only events of this device.")] = None,
    kind: Annotated[
        list[str] | None, Query(description="Only events of these kinds (repeatable).")
    ] = None,
    since: Annotated[str | None, Query(description="Only events at or after this time.")] = None,
    after_id: Annotated[
        int | None,
        Query(
            ge=0,
            le=2**63 - 1,
            description="Only events newer than this id; pass the last_id returned.",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    wait: Annotated[
        float,
        Query(
            ge=0,
            le=MAX_WAIT_S,
            description="With after_id: seconds to wait for a new event when none is there.",
        ),
    ] = 0.0,
) -> EventList:
    """List events oldest first: the newest ``limit``, or after ``after_id`` the next ones.

    A waiting request returns its page, empty if no event came, as soon as the server
    starts to stop.
    """
    kinds = _parse_kinds(kind)
    start = parse_time(since, name="since")
    if wait > 0 and after_id is None:
        raise ApiError(
            400,
            "invalid_input",
            f"wait={wait:g} needs after_id; pass the last_id of your previous request "
            "(0 for the first)",
            field="wait",
        )
    database = controller.registry.database

    def fetch() -> list:
        return queries.list_events(
            database,
            device_id=device_id,
            kinds=kinds,
            since=start,
            after_id=after_id,
            limit=limit,
        )

    rows = await run_in_threadpool(fetch)
    deadline = time.monotonic() + wait
    stopping = request.app.state.stopping
    while not rows and time.monotonic() < deadline and not stopping.is_set():
        await asyncio.sleep(min(POLL_INTERVAL_S, max(deadline - time.monotonic(), 0)))
        rows = await run_in_threadpool(fetch)

    last_id = rows[-1].id if rows else after_id
    return EventList(events=[event_schema(row) for row in rows], last_id=last_id)


def _parse_kinds(values: list[str] | None) -> list[EventKind] | None:
    if not values:
        return None
    kinds = []
    for value in values:
        for part in value.split(","):
            try:
                kinds.append(EventKind(part.strip()))
            except ValueError:
                allowed = ", ".join(kind.value for kind in EventKind)
                raise ApiError(
                    400,
                    "invalid_input",
                    f"unknown event kind {part.strip()!r}; use one of {allowed}",
                    field="kind",
                ) from None
    return kinds
