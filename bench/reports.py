"""Experiment report at scale: an A/B experiment's exposures (served lists of `--k` items) and events in SQLite, and
the report aggregated in SQL (`services.reports.tally`, then the report's statistics) next to the baseline of the
same run: the same report computed in memory from the same records (`thaw.experiments.report.build_report`, what
the service ran before the SQL aggregation), which must give the identical report.

The records are written in bulk in the layout that the serving path writes (`log_exposure`): exposures, impressions,
each user's running counts per arm and the items each arm has shown; events carry the rec_id of a list, most on one
of its items by the same user, some by another user. The SQL report is timed on a new database connection, twice."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.db import make_engine  # noqa: E402
from services.reports import tally  # noqa: E402
from thaw.experiments.policies import make_policy  # noqa: E402
from thaw.experiments.report import Catalogue, EventLog, ExposureLog, Shown, build_report, report_of  # noqa: E402
from thaw.experiments.spec import Arm, ExperimentSpec  # noqa: E402

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SPEC = ExperimentSpec((Arm("thaw", make_policy("thaw"), 0.5), Arm("cf", make_policy("cf_only"), 0.5)), "cf", "s")
ARMS = np.array(["thaw", "cf"])


def stamp(seconds: np.ndarray) -> list[str]:
    """Datetimes as SQLAlchemy stores them in SQLite (UTC, naive, microseconds)."""
    return [(T0 + timedelta(seconds=float(s))).strftime("%Y-%m-%d %H:%M:%S.%f") for s in seconds]


def generate(n: int, k: int, n_events: int, n_users: int, n_items: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    at = np.arange(n, dtype=float) * 0.5  # two lists a second
    users = rng.integers(0, n_users, n)
    arm = users % 2  # the user's arm
    items = rng.integers(0, n_items, (n, k))
    dup = np.any(np.diff(np.sort(items, axis=1), axis=1) == 0, axis=1)
    items[dup] = np.arange(k) + rng.integers(0, n_items - k, (int(dup.sum()), 1))  # distinct within a list
    created = -rng.uniform(0, 7 * 86400, n_items)
    warm_at = rng.uniform(0, 2 * at[-1], n_items)
    cold = at[:, None] < warm_at[items]
    age = at[:, None] - created[items]
    ev = rng.integers(0, n, n_events)
    ev_pos = rng.integers(0, k, n_events)
    ev_user = np.where(rng.random(n_events) < 0.05, (users[ev] + 1) % n_users, users[ev])  # 5 %: another user
    ev_at = at[ev] + rng.uniform(0, 3600, n_events)
    ev_kind = np.where(rng.random(n_events) < 0.1, "purchase", "click")
    return {
        "at": at,
        "users": users,
        "arm": arm,
        "items": items,
        "cold": cold,
        "age": age,
        "events": (ev, ev_pos, ev_user, ev_at, ev_kind),
    }


def write(path: Path, d: dict[str, Any]) -> None:
    """The records in the service's tables (the schema from its migrations), in bulk."""
    make_engine(f"sqlite:///{path}").dispose()
    n, k = d["items"].shape
    at, users, arm, items, cold, age = d["at"], d["users"], d["arm"], d["items"], d["cold"], d["age"]
    when = stamp(at)
    con = sqlite3.connect(path)
    con.executemany(
        "INSERT INTO exposures (rec_id, experiment_id, arm, user_id, created_at) VALUES (?, 'e', ?, ?, ?)",
        ((f"r{j}", ARMS[arm[j]], f"u{users[j]}", when[j]) for j in range(n)),
    )
    con.executemany(
        "INSERT INTO impressions VALUES (?, ?, ?, ?, ?, ?, 0.5, ?)",
        (
            (f"r{j}", p, f"i{items[j, p]}", ARMS[arm[j]], bool(cold[j, p]), float(age[j, p]), int(not cold[j, p]))
            for j in range(n)
            for p in range(k)
        ),
    )
    lists = np.bincount(users)  # a user's arm is fixed (users % 2)
    n_cold = np.bincount(users, weights=cold.sum(axis=1))
    con.executemany(
        "INSERT INTO arm_users VALUES ('e', ?, ?, ?, ?, ?)",
        ((ARMS[u % 2], f"u{u}", int(lists[u]), int(k * lists[u]), int(n_cold[u])) for u in np.flatnonzero(lists)),
    )
    key = (np.repeat(arm, k) * (items.max() + 1) + items.ravel()).astype(np.int64)
    flat_cold = cold.ravel()
    uniq, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    any_cold = np.bincount(inverse, weights=flat_cold, minlength=len(uniq)) > 0
    any_warm = np.bincount(inverse, weights=~flat_cold, minlength=len(uniq)) > 0
    first_at = stamp(at[first // k])
    con.executemany(
        "INSERT INTO arm_items VALUES ('e', ?, ?, ?, ?, ?, ?, ?)",
        (
            (
                ARMS[arm[f // k]],
                f"i{items.ravel()[f]}",
                first_at[u],
                bool(flat_cold[f]),
                float(age.ravel()[f]),
                bool(any_cold[u]),
                bool(any_warm[u]),
            )
            for u, f in enumerate(first)
        ),
    )
    ev, pos, ev_user, ev_at, kind = d["events"]
    con.executemany(
        "INSERT INTO interactions (user_id, item_id, weight, kind, rec_id, created_at) VALUES (?, ?, 1.0, ?, ?, ?)",
        ((f"u{ev_user[e]}", f"i{items[ev[e], pos[e]]}", kind[e], f"r{ev[e]}", t) for e, t in enumerate(stamp(ev_at))),
    )
    con.commit()
    con.close()


def in_memory(d: dict[str, Any]) -> tuple[list[ExposureLog], list[EventLog]]:
    """The same records as the in-memory report reads them."""
    n, k = d["items"].shape
    at, users, arm, items, cold, age = d["at"], d["users"], d["arm"], d["items"], d["cold"], d["age"]
    start = T0.timestamp()
    exposures = [
        ExposureLog(
            f"r{j}",
            str(ARMS[arm[j]]),
            f"u{users[j]}",
            start + at[j],
            [Shown(f"i{items[j, p]}", bool(cold[j, p]), float(age[j, p])) for p in range(k)],
        )
        for j in range(n)
    ]
    ev, pos, ev_user, ev_at, kind = d["events"]
    events = [
        EventLog(f"r{ev[e]}", f"u{ev_user[e]}", f"i{items[ev[e], pos[e]]}", str(kind[e]), start + ev_at[e])
        for e in range(len(ev))
    ]
    return exposures, events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exposures", type=int, default=1_000_000)
    parser.add_argument("--k", type=int, default=10, help="items per served list")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    d = generate(args.exposures, args.k, args.events, args.users, args.items, args.seed)
    catalogue = Catalogue(args.items, args.items, args.items)
    with tempfile.TemporaryDirectory(prefix="thaw-reports-") as tmp:
        path = Path(tmp) / "thaw.db"
        t = time.perf_counter()
        write(path, d)
        write_s = time.perf_counter() - t
        sql_s = []
        for _ in range(2):
            engine = make_engine(f"sqlite:///{path}")
            t = time.perf_counter()
            with Session(engine) as session:
                sql_report = report_of(SPEC, tally(session, SPEC, "e", T0.timestamp()), catalogue)
            sql_s.append(time.perf_counter() - t)
            engine.dispose()
        db_bytes = path.stat().st_size
    exposures, events = in_memory(d)
    t = time.perf_counter()
    memory_report = build_report(SPEC, exposures, events, catalogue, start=T0.timestamp())
    memory_s = time.perf_counter() - t
    out = {
        "exposures": args.exposures,
        "impressions": args.exposures * args.k,
        "events": args.events,
        "users": args.users,
        "sql_report_s": [round(s, 3) for s in sql_s],
        "in_memory_report_s": round(memory_s, 3),
        "speedup": round(memory_s / min(sql_s), 2),
        "same_report": sql_report == memory_report,
        "events_joined": sql_report["events_joined"],
        "write_s": round(write_s, 1),
        "db_mib": round(db_bytes / 2**20, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_avg": os.getloadavg(),
    }
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    if not out["same_report"]:
        raise SystemExit("the SQL report differs from the in-memory report of the same records")


if __name__ == "__main__":
    main()
