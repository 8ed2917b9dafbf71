"""API: experiments — define one (POST /experiments), describe it, and report it (JSON and a PNG chart) from its
exposures joined to events by rec_id; helpers the recommendation route uses to serve and log an arm."""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.deps import RuntimeDep
from api.schemas import EventIn, ExperimentCreate, ExperimentPublic
from api.serving import Served, VersionUnavailableError, model_view
from indexer.search import count, get_items, payload_filter
from thaw.db import Experiment, Exposure, Interaction, as_utc, utcnow
from thaw.experiments.assignment import seed_of
from thaw.experiments.interleaving import team_draft
from thaw.experiments.report import Catalogue, EventLog, ExposureLog, Shown, build_report, chart_png, join
from thaw.experiments.spec import Arm, ExperimentSpec
from thaw.runtime import Runtime

router = APIRouter(tags=["experiments"])


def experiment_spec(record: Experiment) -> ExperimentSpec:
    return ExperimentSpec(tuple(Arm.from_dict(a) for a in record.arms), record.control, record.salt, record.kind)


def is_running(record: Experiment, now: datetime) -> bool:
    return as_utc(record.start_at) <= now and (record.end_at is None or now < as_utc(record.end_at))


def _status(record: Experiment, now: datetime) -> Literal["scheduled", "running", "ended"]:
    if now < as_utc(record.start_at):
        return "scheduled"
    return "running" if is_running(record, now) else "ended"


def _public(record: Experiment) -> ExperimentPublic:
    return ExperimentPublic(
        experiment_id=record.experiment_id,
        name=record.name,
        kind=record.kind,
        control=record.control,
        salt=record.salt,
        arms=record.arms,
        start_at=as_utc(record.start_at),
        end_at=as_utc(record.end_at) if record.end_at else None,
        created_at=as_utc(record.created_at),
        status=_status(record, utcnow()),
    )


def interleave(a: Served, b: Served, k: int, rec_id: str, teams: tuple[str, str]) -> tuple[Served, list[str]]:
    """Team-draft interleaving of two served lists (coin flips seeded by the rec_id); returns the merged list, with
    each item's score and interactions from the list that drafted it, and the team of each position."""
    items, owner = team_draft(a.items, b.items, k, random.Random(seed_of(rec_id)), teams)
    source = {teams[0]: a, teams[1]: b}
    pos = [source[t].items.index(i) for i, t in zip(items, owner, strict=True)]
    pick = list(zip(owner, pos, strict=True))
    merged = Served(
        a.policy,
        a.model_version if a.model_version == b.model_version else f"{a.model_version}+{b.model_version}",
        None,
        items,
        [source[t].scores[p] for t, p in pick],
        [source[t].interactions[p] for t, p in pick],
    )
    return merged, owner


def _exposure_log(row: Exposure) -> ExposureLog:
    items = [Shown(i["item_id"], bool(i["cold"]), i.get("age_s"), i.get("team")) for i in row.items]
    return ExposureLog(row.rec_id, row.arm, row.user_id, as_utc(row.created_at).timestamp(), items)


def joined_events(session: Session, batch: Sequence[EventIn]) -> int:
    """How many of these events join an exposure: same rec_id, same user, an item of that list."""
    rec_ids = {e.rec_id for e in batch if e.rec_id}
    if not rec_ids:
        return 0
    rows = session.scalars(select(Exposure).where(Exposure.rec_id.in_(rec_ids))).all()
    events = [EventLog(e.rec_id, e.user_id, e.item_id, e.type, 0.0) for e in batch if e.rec_id]
    return join([_exposure_log(r) for r in rows], events)[1]


@router.post("/experiments", response_model=ExperimentPublic, status_code=201)
def create_experiment(body: ExperimentCreate, rt: RuntimeDep) -> ExperimentPublic:
    for arm in body.arms:
        if arm.model_version is not None:
            try:
                model_view(rt, arm.model_version)
            except VersionUnavailableError as exc:
                raise HTTPException(422, f"arm {arm.name!r}: {exc}") from exc
    experiment_id = uuid.uuid4().hex[:16]
    spec = ExperimentSpec(
        tuple(Arm.from_dict({**a.model_dump(), "share": a.share or 0.5}) for a in body.arms),
        body.control,
        body.salt or experiment_id,
        body.kind,
    )
    record = Experiment(
        experiment_id=experiment_id,
        name=body.name,
        kind=spec.kind,
        salt=spec.salt,
        control=spec.control,
        arms=[a.as_dict() for a in spec.arms],
        start_at=body.start_at or utcnow(),
        end_at=body.end_at,
    )
    with Session(rt.engine) as session:
        session.add(record)
        session.commit()
        session.refresh(record)
        return _public(record)


@router.get("/experiments", response_model=list[ExperimentPublic])
def list_experiments(rt: RuntimeDep) -> list[ExperimentPublic]:
    with Session(rt.engine) as session:
        return [_public(r) for r in session.scalars(select(Experiment).order_by(Experiment.created_at))]


def _record(rt: Runtime, experiment_id: str) -> Experiment:
    with Session(rt.engine) as session:
        record = session.get(Experiment, experiment_id)
    if record is None:
        raise HTTPException(404, f"experiment {experiment_id!r} does not exist")
    return record


@router.get("/experiments/{experiment_id}", response_model=ExperimentPublic)
def get_experiment(experiment_id: str, rt: RuntimeDep) -> ExperimentPublic:
    return _public(_record(rt, experiment_id))


def experiment_report(rt: Runtime, experiment_id: str) -> dict[str, Any]:
    """Exposures and their joined events from the database, catalogue sizes from the index, then the pure report."""
    record = _record(rt, experiment_id)
    rt.active_version()  # 503 before any model exists: there is no catalogue to measure coverage against
    with Session(rt.engine) as session:
        exposures = [
            _exposure_log(r) for r in session.scalars(select(Exposure).where(Exposure.experiment_id == experiment_id))
        ]
        rows = session.execute(
            select(
                Interaction.rec_id, Interaction.user_id, Interaction.item_id, Interaction.kind, Interaction.created_at
            )
            .join(Exposure, Exposure.rec_id == Interaction.rec_id)
            .where(Exposure.experiment_id == experiment_id)
        ).all()
    events = [EventLog(str(rec), user, item, kind, as_utc(at).timestamp()) for rec, user, item, kind, at in rows]
    n_items = count(rt.index)
    cold_now = count(rt.index, payload_filter(cold_only=True))
    shown_cold = sorted({s.item_id for e in exposures for s in e.items if s.cold})
    warmed = sum(1 for h in get_items(rt.index, shown_cold, vectors=False) if int(h.payload.get("interactions", 0)))
    catalogue = Catalogue(n_items, cold_now + warmed, n_items - cold_now)
    report = build_report(
        experiment_spec(record), exposures, events, catalogue, start=as_utc(record.start_at).timestamp()
    )
    report["experiment"] = {**_public(record).model_dump(mode="json"), **report["experiment"]}
    return report


@router.get("/experiments/{experiment_id}/report")
def get_report(experiment_id: str, rt: RuntimeDep) -> dict[str, Any]:
    return experiment_report(rt, experiment_id)


@router.get("/experiments/{experiment_id}/report.png", response_class=Response)
def get_chart(experiment_id: str, rt: RuntimeDep) -> Response:
    report = experiment_report(rt, experiment_id)
    png = chart_png(report, f"experiment {report['experiment']['name']} ({experiment_id})")
    return Response(png, media_type="image/png")
