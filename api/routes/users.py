"""API: recommendations (the default blend, an experiment's arm logged as an exposure, or the popularity fallback),
interaction events, a user's history and a user's erasure."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from api.deps import RuntimeDep, require_model
from api.schemas import (
    DEFAULT_PAGE,
    MAX_PAGE,
    EventIn,
    EventsAccepted,
    Explanation,
    PastEventPublic,
    Recommendations,
    RecommendedItem,
    UserHistory,
    encode_cursor,
    moment_cursor,
    parse_filter,
)
from services import events as event_service
from services.recommendations import recommend
from services.serving import Because
from thaw.errors import InvalidInputError, TooLargeError
from thaw.schema import check_id

router = APIRouter(tags=["recommendations"], dependencies=[Depends(require_model)])
MAX_EVENTS = 10_000
KNOWN_PARAMS = frozenset({"k", "alpha", "cold_only", "experiment", "offset", "filter", "exclude", "explain"})
MAX_EXCLUDE = 1000


@router.get("/users/{user_id}/recommendations", response_model=Recommendations)
def recommendations(
    user_id: str,
    request: Request,
    rt: RuntimeDep,
    k: Annotated[int, Query(ge=1, le=500)] = 10,
    alpha: Annotated[float | None, Query(ge=0.0, le=1.0)] = None,
    cold_only: bool = False,
    experiment: Annotated[str | None, Query(max_length=64, description="serve this experiment's arm")] = None,
    offset: Annotated[int, Query(ge=0, le=10_000, description="skip this many (the next page)")] = 0,
    filter: Annotated[str | None, Query(description='payload filter, JSON: {"modalities": "image"}')] = None,
    exclude: Annotated[
        list[str] | None, Query(description=f"item ids never to serve (repeat the parameter; at most {MAX_EXCLUDE})")
    ] = None,
    explain: Annotated[bool, Query(description="say why each item is there (`because`)")] = False,
) -> Recommendations:
    """The blended recommendations (the `thaw` policy on the served model); with `experiment`, the user's arm of a
    running experiment, logged as an exposure under the returned rec_id (outside its time window: the default,
    not logged). A user the model cannot place (no learned factors, no events on indexed items) gets the
    most-interacted warm items, with `fallback` set, not logged. `exclude` leaves items out besides the user's
    history; `explain` names, for each item, the user's history items whose content put it there (`because`). Unknown
    query parameters are refused."""
    unknown = set(request.query_params) - KNOWN_PARAMS
    if unknown:
        raise InvalidInputError(f"unknown query parameters {sorted(unknown)}; expected {sorted(KNOWN_PARAMS)}")
    if exclude is not None and len(exclude) > MAX_EXCLUDE:
        raise TooLargeError(f"at most {MAX_EXCLUDE} exclude ids, got {len(exclude)}")
    rec = recommend(
        rt,
        check_id(user_id, "user_id"),
        k,
        alpha=alpha,
        cold_only=cold_only,
        experiment_id=experiment,
        offset=offset,
        match=parse_filter(filter),
        exclude=[check_id(i) for i in exclude or ()],
        explain=explain,
    )
    s = rec.served
    because: list[Because | None] = list(s.because) if s.because is not None else [None] * len(s.items)
    items = [
        RecommendedItem(
            item_id=i,
            score=sc,
            cold=n == 0,
            team=rec.teams[p] if rec.teams else None,
            because=None if why is None else Explanation.model_validate(why, from_attributes=True),
        )
        for p, (i, sc, n, why) in enumerate(zip(s.items, s.scores, s.interactions, because, strict=True))
    ]
    return Recommendations(
        rec_id=rec.rec_id,
        user_id=rec.user_id,
        alpha=s.alpha,
        model_version=s.model_version,
        items=items,
        experiment_id=rec.experiment_id,
        arm=rec.arm,
        fallback=rec.fallback,
    )


@router.get("/users/{user_id}/history", response_model=UserHistory)
def user_history(
    user_id: str,
    rt: RuntimeDep,
    cursor: Annotated[str | None, Query(max_length=1024, description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE,
) -> UserHistory:
    """The user's events, newest first (by when they happened), page by page; 404 for a user with no events."""
    user_id = check_id(user_id, "user_id")
    before = moment_cursor("history", cursor, int)
    page, last = event_service.history_page(rt, user_id, before, limit)
    return UserHistory(
        user_id=user_id,
        events=[
            PastEventPublic(item_id=e.item_id, weight=e.weight, type=e.kind, rec_id=e.rec_id, timestamp=e.timestamp)
            for e in page
        ],
        next_cursor=None if last is None else encode_cursor("history", last[0].isoformat(), last[1]),
    )


@router.delete("/users/{user_id}", status_code=204, response_class=Response)
def erase_user(user_id: str, rt: RuntimeDep) -> Response:
    """Erase a user: their events, their experiment exposures (rec_ids, arms, lists) and their vector in every model
    version's users collection; the items they touched are folded in again from the remaining audience in every version.
    204 when something of the user was erased; 404 when nothing is left, so a repeated erase answers 404."""
    event_service.erase_user(rt, check_id(user_id, "user_id"))
    return Response(status_code=204)


@router.post("/events", response_model=EventsAccepted)
def post_events(events: EventIn | list[EventIn], rt: RuntimeDep) -> EventsAccepted:
    """Record user-item interactions; each touched item slides towards a CF vector learned from its audience."""
    batch = events if isinstance(events, list) else [events]
    if not batch:
        raise InvalidInputError("no events given")
    if len(batch) > MAX_EVENTS:
        raise TooLargeError(f"at most {MAX_EVENTS} events per request, got {len(batch)}")
    plain = [event_service.Event(e.user_id, e.item_id, e.weight, e.type, e.rec_id, e.timestamp) for e in batch]
    return EventsAccepted(accepted=len(batch), joined=event_service.record(rt, plain))
