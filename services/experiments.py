"""Services: online experiments — define one, serve a user their arm (or an interleaving of two arms) and log the
exposure, and report from the exposures joined to events by rec_id (the pure report of thaw.experiments)."""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import String, cast, select
from sqlalchemy import delete as sql_delete
from sqlalchemy.orm import Session

from indexer.search import count, get_items, payload_filter
from services.db import Experiment, Exposure, Interaction, ItemRecord, as_utc, utcnow
from services.runtime import Runtime
from services.serving import Request, Served, serve
from thaw.errors import ConflictError, InvalidInputError, NotFoundError
from thaw.experiments.assignment import seed_of
from thaw.experiments.interleaving import team_draft
from thaw.experiments.policies import Policy, UserContext
from thaw.experiments.report import Catalogue, EventLog, ExposureLog, Shown, build_report, join
from thaw.experiments.spec import Arm, ExperimentSpec

Status = Literal["scheduled", "running", "ended"]


def spec_of(record: Experiment) -> ExperimentSpec:
    return ExperimentSpec(tuple(Arm.from_dict(a) for a in record.arms), record.control, record.salt, record.kind)


def is_running(record: Experiment, now: datetime) -> bool:
    return as_utc(record.start_at) <= now and (record.end_at is None or now < as_utc(record.end_at))


def status(record: Experiment, now: datetime) -> Status:
    if now < as_utc(record.start_at):
        return "scheduled"
    return "running" if is_running(record, now) else "ended"


def create(
    rt: Runtime, name: str, spec: ExperimentSpec, start_at: datetime | None, end_at: datetime | None
) -> Experiment:
    """Record an experiment whose spec is valid; an arm's model version must be trained and indexed
    (otherwise InvalidInputError naming every such arm)."""
    problems = []
    for arm in spec.arms:
        if arm.policy.model_version is not None:
            try:
                rt.view(arm.policy.model_version)
            except (NotFoundError, ConflictError) as exc:
                problems.append(f"arm {arm.name!r}: {exc}")
    if problems:
        raise InvalidInputError("; ".join(problems))
    record = Experiment(
        experiment_id=uuid.uuid4().hex[:16],
        name=name,
        kind=spec.kind,
        salt=spec.salt,
        control=spec.control,
        arms=[a.as_dict() for a in spec.arms],
        start_at=start_at or utcnow(),
        end_at=end_at,
    )
    if not spec.salt:
        record.salt = record.experiment_id
    with rt.session() as session:
        session.add(record)
        session.commit()
        session.refresh(record)
        session.expunge(record)
    return record


def stop(rt: Runtime, experiment_id: str) -> Experiment:
    """End an experiment now: from here on its users get the default list, not logged; its report keeps what was
    served. Stopping one that has ended already changes nothing; one not started yet ends before it starts."""
    with rt.session() as session:
        record = get(session, experiment_id)
        now = utcnow()
        if record.end_at is None or now < as_utc(record.end_at):
            if now < as_utc(record.start_at):
                record.start_at = now
            record.end_at = now
            session.commit()
            session.refresh(record)
        session.expunge(record)
    return record


def listed(session: Session) -> list[Experiment]:
    return list(session.scalars(select(Experiment).order_by(Experiment.created_at)))


def get(session: Session, experiment_id: str) -> Experiment:
    record = session.get(Experiment, experiment_id)
    if record is None:
        raise NotFoundError(f"experiment {experiment_id!r} does not exist")
    return record


def forget_item(session: Session, item_id: str) -> None:
    """Take a deleted item out of every exposure that showed it (the other positions keep theirs)."""
    shown = select(Exposure).where(cast(Exposure.items, String).contains(item_id, autoescape=True))
    for row in session.scalars(shown):
        kept = [i for i in row.items if i.get("item_id") != item_id]
        if len(kept) != len(row.items):
            row.items = kept


def forget_user(session: Session, user_id: str) -> int:
    """Delete a user's exposures (their rec_ids, arms and lists); returns how many there were."""
    result = session.execute(sql_delete(Exposure).where(Exposure.user_id == user_id))
    return int(getattr(result, "rowcount", 0) or 0)


def interleave(a: Served, b: Served, k: int, rec_id: str, teams: tuple[str, str]) -> tuple[Served, list[str]]:
    """Team-draft interleaving of two served lists (coin flips seeded by the rec_id); returns the merged list, with
    each item's score and interactions from the list that drafted it, and the team of each position."""
    items, owner = team_draft(a.items, b.items, k, random.Random(seed_of(rec_id)), teams)
    source = {teams[0]: a, teams[1]: b}
    pick = [(t, source[t].items.index(i)) for i, t in zip(items, owner, strict=True)]
    merged = Served(
        a.policy,
        a.model_version if a.model_version == b.model_version else f"{a.model_version}+{b.model_version}",
        None,
        items,
        [source[t].scores[p] for t, p in pick],
        [source[t].interactions[p] for t, p in pick],
        None if a.because is None or b.because is None else [(source[t].because or [])[p] for t, p in pick],
    )
    return merged, owner


def arm_policies(record: Experiment, user_id: str) -> list[Policy]:
    """The policies a user is served in a running experiment: their arm's (A/B), or both arms' (interleaving)."""
    spec = spec_of(record)
    return [spec.assign(user_id).policy] if spec.kind == "ab" else [arm.policy for arm in spec.arms]


def serve_arm(
    rt: Runtime, record: Experiment, k: int, req: Request, rec_id: str, contexts: dict[str, UserContext]
) -> tuple[Served, list[str] | None, str | None]:
    """The user's arm of a running experiment (A/B), or the interleaving of its two arms, logged as an exposure
    under `rec_id`. Returns the list, the team of each position (interleaving) and the arm (A/B)."""
    spec = spec_of(record)
    if spec.kind == "ab":
        arm = spec.assign(req.user_id)
        served, teams, arm_name = serve(rt, [arm.policy], k, req, contexts)[0], None, arm.name
    else:
        a, b = serve(rt, [arm.policy for arm in spec.arms], k, req, contexts)
        served, teams = interleave(a, b, k, rec_id, (spec.arms[0].name, spec.arms[1].name))
        arm_name = None
    with rt.session() as session:
        items = exposure_items(session, served, teams)
        exposure = Exposure(
            rec_id=rec_id, experiment_id=record.experiment_id, arm=arm_name, user_id=req.user_id, items=items
        )
        session.add(exposure)
        session.commit()
    return served, teams, arm_name


def exposure_items(session: Session, served: Served, teams: list[str] | None = None) -> list[dict[str, Any]]:
    """The exposure log's view of a served list: position, score, interactions and cold when shown, age (seconds
    since the item's first upload), team."""
    rows = session.execute(
        select(ItemRecord.item_id, ItemRecord.created_at).where(ItemRecord.item_id.in_(served.items))
    ).all()
    created = {item: as_utc(at) for item, at in rows}
    now = utcnow()
    return [
        {
            "item_id": item,
            "position": p,
            "score": served.scores[p],
            "interactions": served.interactions[p],
            "cold": served.interactions[p] == 0,
            "age_s": (now - created[item]).total_seconds() if item in created else None,
            "team": teams[p] if teams else None,
        }
        for p, item in enumerate(served.items)
    ]


def _exposure_log(row: Exposure) -> ExposureLog:
    items = [Shown(i["item_id"], bool(i["cold"]), i.get("age_s"), i.get("team")) for i in row.items]
    return ExposureLog(row.rec_id, row.arm, row.user_id, as_utc(row.created_at).timestamp(), items)


def joined_events(session: Session, events: Sequence[EventLog]) -> int:
    """How many of these events join an exposure: same rec_id, same user, an item of that list."""
    rec_ids = {e.rec_id for e in events if e.rec_id}
    if not rec_ids:
        return 0
    rows = session.scalars(select(Exposure).where(Exposure.rec_id.in_(rec_ids))).all()
    return join([_exposure_log(r) for r in rows], [e for e in events if e.rec_id])[1]


def report(rt: Runtime, experiment_id: str) -> tuple[Experiment, dict[str, Any]]:
    """Exposures and their joined events from the database, catalogue sizes from the index, then the pure report."""
    with rt.session() as session:
        record = get(session, experiment_id)
        session.expunge(record)
    rt.active_version()  # 503 before any model exists: there is no catalogue to measure coverage against
    with rt.session() as session:
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
    return record, build_report(
        spec_of(record), exposures, events, catalogue, start=as_utc(record.start_at).timestamp()
    )
