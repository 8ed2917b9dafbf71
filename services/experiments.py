"""Services: online experiments — define one, serve a user their arm (or an interleaving of two arms) and log the
exposure with what its report aggregates (services.reports); events join exposures by rec_id."""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Literal

from sqlalchemy import (
    case,
    func,
    or_,
    select,
    update,
)
from sqlalchemy import delete as sql_delete
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from services.db import (
    ArmItem,
    ArmUser,
    Experiment,
    Exposure,
    Impression,
    ItemRecord,
    as_utc,
    utcnow,
)
from services.runtime import Runtime
from services.serving import Request, Served, serve
from thaw.errors import ConflictError, InvalidInputError, NotFoundError
from thaw.experiments.assignment import seed_of
from thaw.experiments.interleaving import team_draft
from thaw.experiments.policies import Policy, UserContext
from thaw.experiments.report import (
    EventLog,
)
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
    """Take a deleted item out of every exposure that showed it (the other positions keep theirs), out of its users'
    counts and out of the items each arm has shown."""
    shown = session.execute(
        select(
            Exposure.experiment_id,
            Impression.arm,
            Exposure.user_id,
            func.count(),
            func.sum(case((Impression.cold, 1), else_=0)),
        )
        .join(Exposure, Exposure.rec_id == Impression.rec_id)
        .where(Impression.item_id == item_id, Impression.arm.is_not(None))
        .group_by(Exposure.experiment_id, Impression.arm, Exposure.user_id)
    ).all()
    for experiment_id, arm, user_id, n, n_cold in shown:
        session.execute(
            update(ArmUser)
            .where(ArmUser.experiment_id == experiment_id, ArmUser.arm == arm, ArmUser.user_id == user_id)
            .values(impressions=ArmUser.impressions - n, impressions_cold=ArmUser.impressions_cold - int(n_cold))
        )
    session.execute(sql_delete(Impression).where(Impression.item_id == item_id))
    session.execute(sql_delete(ArmItem).where(ArmItem.item_id == item_id))


def forget_user(session: Session, user_id: str) -> int:
    """Delete a user's exposures (their rec_ids, arms, lists and counts); returns how many there were."""
    theirs = select(Exposure.rec_id).where(Exposure.user_id == user_id)
    session.execute(sql_delete(Impression).where(Impression.rec_id.in_(theirs)))
    session.execute(sql_delete(ArmUser).where(ArmUser.user_id == user_id))
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
        log_exposure(session, record.experiment_id, rec_id, arm_name, req.user_id, served, teams)
        session.commit()
    return served, teams, arm_name


def log_exposure(
    session: Session,
    experiment_id: str,
    rec_id: str,
    arm: str | None,
    user_id: str,
    served: Served,
    teams: list[str] | None = None,
    at: datetime | None = None,
) -> None:
    """Record a list served now (or `at`): the exposure, its impressions (position, score, interactions and cold when
    shown, age in seconds since the item's first upload, the arm credited), the user's running counts in each
    credited arm and the items each arm has shown (the first showing kept)."""
    rows = session.execute(
        select(ItemRecord.item_id, ItemRecord.created_at).where(ItemRecord.item_id.in_(served.items))
    ).all()
    created = {item: as_utc(made) for item, made in rows}
    now = at or utcnow()
    session.add(Exposure(rec_id=rec_id, experiment_id=experiment_id, arm=arm, user_id=user_id, created_at=now))
    counts: dict[str, list[int]] = {arm: [0, 0]} if arm is not None else {}
    shown = []
    for p, item in enumerate(served.items):
        credited = teams[p] if teams else arm
        cold = served.interactions[p] == 0
        age = (now - created[item]).total_seconds() if item in created else None
        session.add(
            Impression(
                rec_id=rec_id,
                position=p,
                item_id=item,
                arm=credited,
                cold=cold,
                age_s=age,
                score=served.scores[p],
                interactions=served.interactions[p],
            )
        )
        if credited is not None:
            n = counts.setdefault(credited, [0, 0])
            n[0], n[1] = n[0] + 1, n[1] + cold
            shown.append(
                {
                    "experiment_id": experiment_id,
                    "arm": credited,
                    "item_id": item,
                    "first_at": now,
                    "first_cold": cold,
                    "first_age_s": age,
                    "shown_cold": cold,
                    "shown_warm": not cold,
                }
            )
    insert = postgresql_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    if counts:
        stmt = insert(ArmUser).values(
            [
                {
                    "experiment_id": experiment_id,
                    "arm": credited,
                    "user_id": user_id,
                    "exposures": 1,
                    "impressions": n_all,
                    "impressions_cold": n_cold,
                }
                for credited, (n_all, n_cold) in counts.items()
            ]
        )
        session.execute(
            stmt.on_conflict_do_update(
                index_elements=[ArmUser.experiment_id, ArmUser.arm, ArmUser.user_id],
                set_={
                    key: getattr(ArmUser, key) + getattr(stmt.excluded, key)
                    for key in ("exposures", "impressions", "impressions_cold")
                },
            )
        )
    if shown:
        stmt = insert(ArmItem).values(shown)
        session.execute(
            stmt.on_conflict_do_update(
                index_elements=[ArmItem.experiment_id, ArmItem.arm, ArmItem.item_id],
                set_={
                    "shown_cold": or_(ArmItem.shown_cold, stmt.excluded.shown_cold),
                    "shown_warm": or_(ArmItem.shown_warm, stmt.excluded.shown_warm),
                },
            )
        )


def joined_events(session: Session, events: Sequence[EventLog]) -> int:
    """How many of these events join an exposure: same rec_id, same user, an item of that list."""
    rec_ids = sorted({e.rec_id for e in events if e.rec_id})
    if not rec_ids:
        return 0
    shown = set(
        session.execute(
            select(Impression.rec_id, Exposure.user_id, Impression.item_id)
            .join(Exposure, Exposure.rec_id == Impression.rec_id)
            .where(Impression.rec_id.in_(rec_ids))
        ).all()
    )
    return sum(1 for e in events if (e.rec_id, e.user_id, e.item_id) in shown)
