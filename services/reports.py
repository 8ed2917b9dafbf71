"""Services: an experiment's report — its tally aggregated in SQL over what the serving path logged
(services.experiments: exposures, impressions, each user's running counts per arm, the items each arm has shown) and
the events, then the pure report of thaw.experiments.report."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    and_,
    case,
    cast,
    func,
    insert,
    select,
)
from sqlalchemy.orm import Session, aliased

from indexer.search import count, get_items, payload_filter
from services.db import ArmItem, ArmUser, Experiment, Exposure, Impression, Interaction, as_utc
from services.experiments import get, spec_of
from services.runtime import Runtime
from thaw.experiments.interleaving import preference
from thaw.experiments.report import CONVERSION_KINDS, COUNTS, IX, Catalogue, Tally, new_item_hours, report_of
from thaw.experiments.spec import ExperimentSpec


def report(rt: Runtime, experiment_id: str) -> tuple[Experiment, dict[str, Any]]:
    """The experiment's tally aggregated in SQL, catalogue sizes from the index, then the report."""
    with rt.session() as session:
        record = get(session, experiment_id)
        session.expunge(record)
    rt.active_version()  # 503 before any model exists: there is no catalogue to measure coverage against
    spec = spec_of(record)
    with rt.session() as session:
        t = tally(session, spec, experiment_id, as_utc(record.start_at).timestamp())
        shown_cold = list(
            session.scalars(
                select(ArmItem.item_id).distinct().where(ArmItem.experiment_id == experiment_id, ArmItem.shown_cold)
            )
        )
    n_items = count(rt.index)
    cold_now = count(rt.index, payload_filter(cold_only=True))
    warmed = sum(1 for h in get_items(rt.index, shown_cold, vectors=False) if int(h.payload.get("interactions", 0)))
    return record, report_of(spec, t, Catalogue(n_items, cold_now + warmed, n_items - cold_now))


def _epoch(conn: Connection) -> Callable[[Any], Any]:
    """Seconds since the Unix epoch of a datetime column, computed by the database (SQLite: to the millisecond)."""
    if conn.dialect.name == "postgresql":
        return lambda at: cast(func.extract("epoch", at), Float)
    return lambda at: (func.julianday(at) - 2440587.5) * 86400.0


def _n(flag: Any) -> Any:
    """1 where a boolean SQL expression holds, else 0 (for sums)."""
    return case((flag, 1), else_=0)


def _of(experiment_id: str) -> Any:
    """Exposures of the experiment, as a test on exposures found by an event's rec_id: the events drive the join.
    (On the bare column, SQLite without statistics walks every exposure of the experiment by its index instead.)"""
    return func.coalesce(Exposure.experiment_id, "") == experiment_id


CLICKED = Table(  # a report's clicked impressions, computed once per report in a temporary table of its connection
    "report_clicked",
    MetaData(),
    Column("rec_id", String(64)),
    Column("item_id", String(128)),
    Column("arm", String(64)),
    Column("cold", Boolean),
    Column("user_id", String(128)),
    Column("at", DateTime(timezone=True)),  # the first event's
    Column("conv", Integer),  # 1: one of the events is a conversion
    Column("events", Integer),
    prefixes=["TEMPORARY"],
)


def tally(session: Session, spec: ExperimentSpec, experiment_id: str, start: float) -> Tally:
    """The report's tally, aggregated in SQL: per arm and user, the running counts and the sums of the clicked
    impressions (events joined by rec_id, user and item); per arm, the items shown and the new ones' first clicks;
    per list with a click, the interleaving outcome. No query reads every exposure or impression: the cost grows with
    users, events and items shown."""
    conn = session.connection()
    CLICKED.create(conn)
    try:
        return _tally(conn, spec, experiment_id, start)
    finally:
        CLICKED.drop(conn)
        session.commit()  # the drop too: SQLite's driver commits DDL of its own, the pool reuses the connection


def _tally(conn: Connection, spec: ExperimentSpec, experiment_id: str, start: float) -> Tally:
    names = spec.names
    conn.execute(
        insert(CLICKED).from_select(
            [c.name for c in CLICKED.c],
            select(
                Interaction.rec_id,
                Interaction.item_id,
                Impression.arm,
                Impression.cold,
                Exposure.user_id,
                func.min(Interaction.created_at),
                func.max(_n(Interaction.kind.in_(sorted(CONVERSION_KINDS)))),
                func.count(),
            )
            .join(Exposure, and_(Exposure.rec_id == Interaction.rec_id, Exposure.user_id == Interaction.user_id))
            .join(Impression, and_(Impression.rec_id == Interaction.rec_id, Impression.item_id == Interaction.item_id))
            .where(Interaction.rec_id.is_not(None), _of(experiment_id))
            .group_by(Interaction.rec_id, Interaction.item_id, Impression.arm, Impression.cold, Exposure.user_id),
        )
    )
    clicked = CLICKED.c
    per_user: dict[str, dict[str, np.ndarray]] = {a: {} for a in names}
    exposures = dict.fromkeys(names, 0)
    for arm, user, n_exposures, n, n_cold in conn.execute(
        select(ArmUser.arm, ArmUser.user_id, ArmUser.exposures, ArmUser.impressions, ArmUser.impressions_cold).where(
            ArmUser.experiment_id == experiment_id
        )
    ):
        if arm in per_user:
            row = per_user[arm][user] = np.zeros(len(COUNTS))
            row[[IX["impressions"], IX["impressions_cold"], IX["impressions_warm"]]] = n, n_cold, n - n_cold
            exposures[arm] += n_exposures
    joined = 0
    for arm, user, n, n_cold, n_conv, n_conv_cold, n_events in conn.execute(
        select(
            clicked.arm,
            clicked.user_id,
            func.count(),
            func.sum(_n(clicked.cold)),
            func.sum(clicked.conv),
            func.sum(_n(and_(clicked.cold, clicked.conv == 1))),
            func.sum(clicked.events),
        ).group_by(clicked.arm, clicked.user_id)
    ):
        joined += n_events
        if arm in per_user:
            row = per_user[arm].setdefault(user, np.zeros(len(COUNTS)))
            figures = {
                "clicks": n,
                "clicks_cold": n_cold,
                "clicks_warm": n - n_cold,
                "conversions": n_conv,
                "conversions_cold": n_conv_cold,
                "conversions_warm": n_conv - n_conv_cold,
            }
            for key, value in figures.items():
                row[IX[key]] += value
    shown = {a: {"all": 0, "cold": 0, "warm": 0} for a in names}
    new_items = dict.fromkeys(names, 0)
    for arm, n, n_cold, n_warm, n_new in conn.execute(
        select(
            ArmItem.arm,
            func.count(),
            func.sum(_n(ArmItem.shown_cold)),
            func.sum(_n(ArmItem.shown_warm)),
            func.sum(_n(ArmItem.first_cold)),
        )
        .where(ArmItem.experiment_id == experiment_id)
        .group_by(ArmItem.arm)
    ):
        if arm in shown:
            shown[arm] = {"all": n, "cold": n_cold, "warm": n_warm}
            new_items[arm] = n_new
    first_click = (
        select(clicked.arm, clicked.item_id, func.min(clicked.at).label("at"))
        .group_by(clicked.arm, clicked.item_id)
        .subquery()
    )
    other = aliased(ArmItem)  # when a new item's age is unknown, its arrival is when any arm first showed it
    first_seen = (
        select(func.min(other.first_at))
        .where(other.experiment_id == experiment_id, other.item_id == ArmItem.item_id)
        .scalar_subquery()
    )
    hours: dict[str, list[float]] = {a: [] for a in names}
    epoch = _epoch(conn)
    for arm, first_at, age, seen, click in conn.execute(
        select(
            ArmItem.arm,
            epoch(ArmItem.first_at),
            ArmItem.first_age_s,
            epoch(case((ArmItem.first_age_s.is_(None), first_seen), else_=ArmItem.first_at)),
            epoch(first_click.c.at),
        )
        .join(first_click, and_(first_click.c.arm == ArmItem.arm, first_click.c.item_id == ArmItem.item_id))
        .where(ArmItem.experiment_id == experiment_id, ArmItem.first_cold)
    ):
        if arm in hours:
            hours[arm].append(new_item_hours(start, first_at, age, seen, click))
    outcomes_all: list[int] = []
    outcomes_cold: list[int] = []
    if spec.kind == "interleaving":
        treatment, control, cold = clicked.arm == spec.treatments[0], clicked.arm == spec.control, clicked.cold
        for a, b, a_cold, b_cold, n_cold in conn.execute(
            select(
                func.sum(_n(treatment)),
                func.sum(_n(control)),
                func.sum(_n(and_(treatment, cold))),
                func.sum(_n(and_(control, cold))),
                func.sum(_n(cold)),
            ).group_by(clicked.rec_id)
        ):
            outcomes_all.append(preference(a, b))
            if n_cold:
                outcomes_cold.append(preference(a_cold, b_cold))
    events = conn.scalar(
        select(func.count())
        .select_from(Interaction)
        .join(Exposure, Exposure.rec_id == Interaction.rec_id)
        .where(Interaction.rec_id.is_not(None), _of(experiment_id))
    )
    return Tally(
        per_user, exposures, shown, new_items, hours, outcomes_all, outcomes_cold, int(events or 0), int(joined)
    )
