"""The schema's revisions: a new database reaches exactly the models' schema; one created before the schema had
revisions gets what it lacks (the event join index among it) and keeps its rows."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

from services.db import MIGRATIONS, Base, make_engine, migrate

OLD_SCHEMA = """
CREATE TABLE items (item_id VARCHAR(128) NOT NULL PRIMARY KEY, metadata JSON NOT NULL, media JSON NOT NULL,
    revision INTEGER NOT NULL, created_at DATETIME NOT NULL, updated_at DATETIME NOT NULL);
CREATE TABLE jobs (job_id VARCHAR(32) NOT NULL PRIMARY KEY, kind VARCHAR(16) NOT NULL, item_id VARCHAR(128),
    revision INTEGER NOT NULL, status VARCHAR(16) NOT NULL, error TEXT, attempts INTEGER NOT NULL,
    model_version VARCHAR(64), created_at DATETIME NOT NULL, started_at DATETIME, finished_at DATETIME);
CREATE INDEX ix_jobs_item_id ON jobs (item_id);
CREATE TABLE interactions (id INTEGER NOT NULL PRIMARY KEY, user_id VARCHAR(128) NOT NULL,
    item_id VARCHAR(128) NOT NULL, weight FLOAT NOT NULL, kind VARCHAR(32) NOT NULL, created_at DATETIME NOT NULL);
CREATE INDEX ix_interactions_user_id ON interactions (user_id);
CREATE INDEX ix_interactions_item_id ON interactions (item_id);
INSERT INTO items VALUES ('i1', '{"title": "kept"}', '{}', 3, '2026-01-01 00:00:00', '2026-01-02 00:00:00');
INSERT INTO jobs VALUES ('j1', 'embed', 'i1', 3, 'succeeded', NULL, 1, 'v1', '2026-01-01 00:00:00', NULL, NULL);
INSERT INTO interactions VALUES (1, 'u1', 'i1', 1.0, 'click', '2026-01-03 00:00:00');
"""


def _head() -> str:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


def _differences(url: str) -> list[object]:
    engine = make_engine(url)
    with engine.connect() as conn:
        return list(compare_metadata(MigrationContext.configure(conn), Base.metadata))


def test_a_new_database_gets_exactly_the_models_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    assert _differences(url) == []
    engine = make_engine(url)  # a second start changes nothing
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT version_num FROM alembic_version")) == _head()


def test_a_database_from_before_the_revisions_is_upgraded_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(OLD_SCHEMA)
    url = f"sqlite:///{path}"
    engine = make_engine(url)
    with engine.connect() as conn:
        indexes = {i["name"]: i["column_names"] for i in inspect(conn).get_indexes("interactions")}
        assert indexes["ix_interactions_rec_user_item"] == ["rec_id", "user_id", "item_id"]
        assert "ix_interactions_rec_id" not in indexes
        assert set(inspect(conn).get_table_names()) >= {"experiments", "exposures", "reembed_items", "reembed_jobs"}
        assert conn.execute(text("SELECT item_id, metadata, revision FROM items")).all() == [
            ("i1", '{"title": "kept"}', 3)
        ]
        assert conn.execute(text("SELECT job_id, dispatches, dispatched_at, batch_id FROM jobs")).all() == [
            ("j1", 0, None, None)
        ]
        assert conn.execute(text("SELECT user_id, item_id, rec_id FROM interactions")).all() == [("u1", "i1", None)]
        assert conn.scalar(text("SELECT version_num FROM alembic_version")) == _head()
    # What is left differs from the models only where SQLite cannot alter a column in place (NOT NULL on the
    # columns added to existing tables): no table, column or index is missing.
    kinds = {diff[0] if isinstance(diff, tuple) else "modify" for diff in _differences(url)}
    assert kinds <= {"modify"}, kinds


def test_logged_exposures_move_into_the_report_tables(tmp_path: Path) -> None:
    """A database whose exposures hold their items as JSON (revision 0003) gets one impressions row per item, each
    user's counts per arm and the items each arm showed first (the older exposure first), and loses the JSON."""
    url = f"sqlite:///{tmp_path / 'logged.db'}"
    engine = create_engine(url)
    with engine.begin() as conn:
        migrate(conn, "0003")
        ab = [
            {"item_id": "a", "position": 0, "score": 0.9, "interactions": 0, "cold": True, "age_s": 60.0},
            {"item_id": "b", "position": 1, "score": 0.5, "interactions": 4, "cold": False, "age_s": None},
        ]
        inter = [
            {"item_id": "a", "position": 0, "score": 0.7, "interactions": 2, "cold": False, "team": "t"},
            {"item_id": "c", "position": 1, "score": 0.6, "interactions": 0, "cold": True, "team": "c"},
        ]
        rows = [
            ("r2", "e1", "t", "u2", json.dumps([ab[0]]), "2026-01-02 00:00:00"),
            ("r1", "e1", "t", "u1", json.dumps(ab), "2026-01-01 00:00:00"),
            ("r3", "e2", None, "u1", json.dumps(inter), "2026-01-03 00:00:00"),
        ]
        keys = ("rec_id", "experiment_id", "arm", "user_id", "items", "created_at")
        insert = text(f"INSERT INTO exposures ({', '.join(keys)}) VALUES ({', '.join(':' + k for k in keys)})")
        conn.execute(insert, [dict(zip(keys, row, strict=True)) for row in rows])
    engine = make_engine(url)
    with engine.connect() as conn:
        assert "items" not in {c["name"] for c in inspect(conn).get_columns("exposures")}
        assert conn.execute(
            text("SELECT rec_id, position, item_id, arm, cold FROM impressions ORDER BY 1, 2")
        ).all() == [
            ("r1", 0, "a", "t", 1),
            ("r1", 1, "b", "t", 0),
            ("r2", 0, "a", "t", 1),
            ("r3", 0, "a", "t", 0),
            ("r3", 1, "c", "c", 1),
        ]
        counts = "SELECT experiment_id, arm, user_id, exposures, impressions, impressions_cold FROM arm_users"
        assert conn.execute(text(counts + " ORDER BY 1, 2, 3")).all() == [
            ("e1", "t", "u1", 1, 2, 1),
            ("e1", "t", "u2", 1, 1, 1),
            ("e2", "c", "u1", 1, 1, 1),
            ("e2", "t", "u1", 1, 1, 0),
        ]
        shown = "SELECT experiment_id, arm, item_id, first_at, first_cold, first_age_s, shown_cold, shown_warm "
        assert conn.execute(text(shown + "FROM arm_items ORDER BY 1, 2, 3")).all() == [
            ("e1", "t", "a", "2026-01-01 00:00:00.000000", 1, 60.0, 1, 0),
            ("e1", "t", "b", "2026-01-01 00:00:00.000000", 0, None, 0, 1),
            ("e2", "c", "c", "2026-01-03 00:00:00.000000", 1, None, 1, 0),
            ("e2", "t", "a", "2026-01-03 00:00:00.000000", 0, None, 0, 1),
        ]
