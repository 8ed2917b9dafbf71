"""Experiment reports aggregated in SQL (services.reports.tally over the exposures, impressions and events a
service logged) equal the report of the same records in memory (thaw.experiments.report.tally), for A/B and
interleaving experiments with cold and warm items, unknown ages, conversions, repeated and unjoinable events."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from services.db import Interaction, ItemRecord, make_engine
from services.experiments import log_exposure
from services.reports import tally
from services.serving import Served
from thaw.experiments.policies import make_policy
from thaw.experiments.report import Catalogue, EventLog, ExposureLog, Shown, build_report, report_of
from thaw.experiments.spec import Arm, ExperimentSpec

T0 = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.mark.parametrize("kind", ["ab", "interleaving"])
def test_the_sql_report_equals_the_report_of_the_same_records_in_memory(tmp_path: Path, kind: str) -> None:
    check_sql_report(f"sqlite:///{tmp_path / 'thaw.db'}", kind)


def check_sql_report(url: str, kind: str) -> None:
    """Log random lists and events of an experiment of this kind into the database at `url` as the service does, and
    compare its SQL report with the in-memory report of the same records."""
    rng = random.Random(7)
    spec = ExperimentSpec((Arm("t", make_policy("thaw"), 0.5), Arm("c", make_policy("cf_only"), 0.5)), "c", "s", kind)
    items = [f"i{j}" for j in range(30)]
    created = {i: T0 - timedelta(hours=rng.uniform(1, 48)) for i in items[:20]}  # the others: age unknown
    warm_at = {i: T0 + timedelta(minutes=rng.uniform(-30, 120)) for i in items}
    engine = make_engine(url)
    exposures: list[ExposureLog] = []
    events: list[EventLog] = []
    with Session(engine) as session:
        session.add_all(ItemRecord(item_id=i, metadata_={}, media={}, created_at=c) for i, c in created.items())
        for j in range(80):
            at, user, rec = T0 + timedelta(minutes=1.5 * j), f"u{rng.randrange(15)}", f"r{j}"
            shown = rng.sample(items, rng.randrange(0, 6))  # an empty list too
            inter = [0 if at < warm_at[i] else rng.randrange(1, 9) for i in shown]
            teams = [rng.choice("tc") for _ in shown] if kind == "interleaving" else None
            arm = None if kind == "interleaving" else rng.choice("tc")
            served = Served(make_policy("thaw"), "v1", None, shown, [rng.random() for _ in shown], inter)
            log_exposure(session, "e1", rec, arm, user, served, teams, at=at)
            logged = [
                Shown(
                    i, n == 0, (at - created[i]).total_seconds() if i in created else None, teams[p] if teams else None
                )
                for p, (i, n) in enumerate(zip(shown, inter, strict=True))
            ]
            exposures.append(ExposureLog(rec, arm, user, at.timestamp(), logged))
            for i in shown:
                for _ in range(rng.choice([0, 0, 1, 2])):  # repeated events on one impression
                    when = at + timedelta(minutes=rng.uniform(0, 90))
                    events.append(EventLog(rec, user, i, rng.choice(["click", "click", "purchase"]), when.timestamp()))
            events.append(EventLog(rec, "someone-else", rng.choice(items), "click", (at + timedelta(1)).timestamp()))
            events.append(EventLog(rec, user, "not-shown", "click", (at + timedelta(1)).timestamp()))
        events.append(EventLog("r-unknown", "u1", items[0], "click", T0.timestamp()))
        session.add_all(
            Interaction(
                user_id=e.user_id,
                item_id=e.item_id,
                kind=e.kind,
                rec_id=e.rec_id,
                created_at=datetime.fromtimestamp(e.at, UTC),
            )
            for e in events
        )
        session.commit()
        catalogue = Catalogue(30, 25, 20)
        in_sql = report_of(spec, tally(session, spec, "e1", T0.timestamp()), catalogue)
    with Session(engine) as session:  # a second report on the same pooled connection
        assert report_of(spec, tally(session, spec, "e1", T0.timestamp()), catalogue) == in_sql
    in_memory = build_report(
        spec, exposures, [e for e in events if e.rec_id != "r-unknown"], catalogue, start=T0.timestamp()
    )
    assert in_sql == in_memory
    arms = in_sql["arms"]
    assert sum(arms[a]["counts"]["clicks"] for a in "tc") > 20 and sum(arms[a]["new_items"]["items"] for a in "tc")
    assert in_sql["events_not_joined"] >= 160  # the other user's and the unshown item's events of each list
