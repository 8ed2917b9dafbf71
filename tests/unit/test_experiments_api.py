"""Experiments over the API on an embedded runtime (real embedded Qdrant, real SQLite) with planted vectors: every
policy's top item is known, and the report counts exactly what was served and clicked."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from entrypoints.runtime import build_runtime, create_app
from indexer.collections import activate, ensure_collections
from indexer.writer import ItemPoint, upsert_items, upsert_users
from services.db import Interaction, ItemRecord
from services.runtime import Runtime
from tests.helpers import plant_version
from thaw.experiments.assignment import assign
from thaw.schema import CF_SOURCE
from thaw.settings import Settings

DIMS = {"text": 3, "image": 2, "audio": 2}
U = np.array([1.0, 0.0, 0.0, 0.0], np.float32)
POPULARITY = {"w0": 50, "w1": 40, "w2": 30, "w3": 20, "w4": 10, "w5": 5}
USERS = [f"u{i:02d}" for i in range(40)]


def _vec(*x: float) -> np.ndarray:
    return np.array(x, np.float32)


def _index_version(rt: Runtime, version: str, top_cold: str) -> None:
    """Warm items w0..w5 (w3 is the CF favourite of every user), cold items c0..c3 (`top_cold` has the content
    vector closest to the users; c2 shares the text and image of w5, every user's one history item)."""
    plant_version(rt.registry.root, version, dim=4, embedding_dims=DIMS)
    items, users = ensure_collections(rt.index, version, 4, DIMS)
    points = []
    for j, (item, n) in enumerate(POPULARITY.items()):
        cf = _vec(1.0, 0, 0, 0) if item == "w3" else _vec(0.1, 0.2 * j, 0.5, 0)
        text, image = (_vec(1, 0, 0), _vec(1, 0)) if item == "w5" else (_vec(0, 1, 0), _vec(0, 1))
        vectors = {"cf": cf, "content": cf, "text": text, "image": image}
        points.append(ItemPoint(item, vectors, {"interactions": n, CF_SOURCE: "als", "modalities": ["text", "image"]}))
    for j in range(4):
        item = f"c{j}"
        content = _vec(3.0, 0, 0, 0) if item == top_cold else _vec(0.0, 0.1 * j, 1.0, 0)
        text, image = (_vec(1, 0, 0), _vec(1, 0)) if item == "c2" else (_vec(0, 0, 1), _vec(0.3, 1))
        points.append(ItemPoint(item, {"content": content, "text": text, "image": image}, {"interactions": 0}))
    upsert_items(rt.index, items, points, keep_cf=False)
    upsert_users(rt.index, users, USERS, np.stack([U] * len(USERS)), [{"source": "als"}] * len(USERS))


@pytest.fixture()
def planted(tmp_path: Path) -> Iterator[tuple[TestClient, Runtime]]:
    settings = Settings(data_dir=tmp_path)
    rt = build_runtime(settings)
    _index_version(rt, "v1", top_cold="c0")
    activate(rt.index, "v1")
    created = datetime.now(UTC) - timedelta(hours=1)
    with Session(rt.engine) as session:
        for item in [*POPULARITY, "c0", "c1", "c2", "c3"]:
            session.add(ItemRecord(item_id=item, metadata_={}, media={}, created_at=created))
        for user in USERS:
            session.add(Interaction(user_id=user, item_id="w5", weight=1.0))
        session.commit()
    yield TestClient(create_app(settings, runtime=rt)), rt
    rt.close()


ARMS = [
    {"name": "thaw", "policy": "thaw", "share": 0.2, "alpha": 1.0},
    {"name": "cf", "policy": "cf_only", "share": 0.2},
    {"name": "knn", "policy": "content_knn", "share": 0.2},
    {"name": "pop", "policy": "popularity", "share": 0.2},
    {"name": "rnd", "policy": "random", "share": 0.2},
]
TOP = {"thaw": "c0", "cf": "w3", "knn": "c2", "pop": "w0"}


def _create(client: TestClient, **body: Any) -> dict[str, Any]:
    resp = client.post("/experiments", json={"name": "cold start", "arms": ARMS, "control": "cf", **body})
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def test_ab_serves_sticky_arms_logs_exposures_and_reports_exactly_what_was_sent(
    planted: tuple[TestClient, Runtime],
) -> None:
    client, _ = planted
    exp = _create(client)
    assert client.get(f"/experiments/{exp['experiment_id']}").json()["arms"] == exp["arms"]
    assert exp["status"] == "running" and exp["salt"] == exp["experiment_id"]
    shares = [(a["name"], a["share"]) for a in ARMS]
    expected: dict[str, Counter[str]] = {a["name"]: Counter() for a in ARMS}
    events, served = [], {}
    for n, user in enumerate(USERS):
        resp = client.get(f"/users/{user}/recommendations", params={"experiment": exp["experiment_id"], "k": 4})
        assert resp.status_code == 200, resp.text
        rec = resp.json()
        arm = rec["arm"]
        assert arm == assign(user, exp["salt"], shares)  # deterministic: the salted hash decides
        again = client.get(f"/users/{user}/recommendations", params={"experiment": exp["experiment_id"], "k": 4})
        assert again.json()["arm"] == arm and again.json()["rec_id"] != rec["rec_id"]  # sticky, a new exposure
        ids = [i["item_id"] for i in rec["items"]]
        assert "w5" not in ids and len(ids) == len(set(ids)) == 4  # the user's history is never served
        if arm in TOP:
            assert ids[0] == TOP[arm], (arm, ids)
        if arm == "cf":
            assert not any(i["cold"] for i in rec["items"])  # cf_only never shows an item without interactions
        if arm == "pop":
            assert ids[:3] == ["w0", "w1", "w2"]
        for r in (rec, again.json()):
            expected[arm]["exposures"] += 1
            expected[arm]["impressions"] += len(r["items"])
            expected[arm]["impressions_cold"] += sum(i["cold"] for i in r["items"])
        served[user] = rec
        first = rec["items"][0]
        events.append({"user_id": user, "item_id": first["item_id"], "rec_id": rec["rec_id"]})
        expected[arm]["clicks"] += 1
        expected[arm]["clicks_cold"] += first["cold"]
        if n % 3 == 0:  # a purchase of the same item: one more conversion, not one more click
            events.append({"user_id": user, "item_id": first["item_id"], "rec_id": rec["rec_id"], "type": "purchase"})
            expected[arm]["conversions"] += 1
    not_joined = [
        {"user_id": "u00", "item_id": "w0", "rec_id": "no-such-rec"},  # unknown rec_id: stored, not counted
        {"user_id": "u01", "item_id": served["u02"]["items"][0]["item_id"], "rec_id": served["u02"]["rec_id"]},
        {"user_id": "u03", "item_id": "w5", "rec_id": served["u03"]["rec_id"]},  # not in that list
    ]
    resp = client.post("/events", json=events + not_joined)
    assert resp.json() == {"accepted": len(events) + 3, "joined": len(events)}

    report = client.get(f"/experiments/{exp['experiment_id']}/report").json()
    assert report["events_joined"] == len(events) and report["events_not_joined"] == 2  # the two with its rec_ids
    users_per_arm = Counter(assign(u, exp["salt"], shares) for u in USERS)
    for arm, want in expected.items():
        got = report["arms"][arm]
        assert got["users"] == users_per_arm[arm] and got["exposures"] == want["exposures"]
        for key in ("impressions", "impressions_cold", "clicks", "clicks_cold", "conversions"):
            assert got["counts"][key] == want[key], (arm, key)
        if want["impressions"]:
            assert got["metrics"]["ctr"]["value"] == pytest.approx(want["clicks"] / want["impressions"], abs=1e-6)
    assert report["arms"]["thaw"]["counts"]["clicks_cold"] == report["arms"]["thaw"]["counts"]["clicks"] > 0
    assert set(report["vs_control"]) == {"thaw", "knn", "pop", "rnd"}
    assert report["srm"]["observed_users"] == dict(users_per_arm) | {a: 0 for a in expected if a not in users_per_arm}
    clicked_cold = {e["item_id"] for e in events + not_joined if e["item_id"].startswith("c")}
    assert {"c0", "c2"} <= clicked_cold  # Thaw's and content_knn's top picks, warm now
    assert report["catalogue"] == {"items": 10, "cold": 4, "warm": 6 + len(clicked_cold)}
    chart = client.get(f"/experiments/{exp['experiment_id']}/report.png")
    assert chart.headers["content-type"] == "image/png" and chart.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_interleaving_credits_each_click_to_the_team_that_drafted_it(planted: tuple[TestClient, Runtime]) -> None:
    client, _ = planted
    arms = [{"name": "thaw", "policy": "thaw", "alpha": 1.0}, {"name": "pop", "policy": "popularity"}]
    exp = _create(client, kind="interleaving", arms=arms, control="pop")
    events = []
    for user in USERS[:12]:
        rec = client.get(f"/users/{user}/recommendations", params={"experiment": exp["experiment_id"], "k": 6}).json()
        assert rec["arm"] is None and rec["alpha"] is None
        teams = {i["item_id"]: i["team"] for i in rec["items"]}
        assert teams["c0"] == "thaw" and teams["w0"] == "pop"  # each team's top pick, drafted in the first round
        assert Counter(teams.values()) == {"thaw": 3, "pop": 3}
        events.append({"user_id": user, "item_id": "c0", "rec_id": rec["rec_id"]})  # the user prefers Thaw's pick
    assert client.post("/events", json=events).json()["joined"] == 12
    report = client.get(f"/experiments/{exp['experiment_id']}/report").json()
    inter = report["interleaving"]
    assert inter["treatment"] == "thaw" and inter["control"] == "pop"
    assert inter["all_clicks"]["wins"] == 12 and inter["all_clicks"]["losses"] == 0
    assert inter["all_clicks"]["p_value"] == pytest.approx(2 * 0.5**12)
    assert inter["cold_clicks"]["wins"] == 12  # c0 was cold in every list: all were served before any event
    assert report["arms"]["thaw"]["counts"]["clicks"] == 12 and report["arms"]["pop"]["counts"]["clicks"] == 0
    assert report["arms"]["thaw"]["counts"]["impressions"] == 36 and report["srm"] is None


def test_window_versions_and_bad_definitions(planted: tuple[TestClient, Runtime]) -> None:
    client, rt = planted
    past = datetime.now(UTC) - timedelta(days=2)
    ended = _create(client, start_at=past.isoformat(), end_at=(past + timedelta(days=1)).isoformat())
    assert ended["status"] == "ended"
    rec = client.get("/users/u00/recommendations", params={"experiment": ended["experiment_id"]}).json()
    assert rec["experiment_id"] is None and rec["arm"] is None and rec["items"]  # the default, not logged
    assert client.get(f"/experiments/{ended['experiment_id']}/report").json()["arms"]["cf"]["exposures"] == 0
    assert client.get("/users/u00/recommendations", params={"experiment": "nope"}).status_code == 404
    resp = client.get("/users/u00/recommendations", params={"experiment": ended["experiment_id"], "alpha": 0.3})
    assert resp.status_code == 422 and "alpha" in resp.json()["detail"]
    stranger = client.get("/users/stranger/recommendations", params={"experiment": ended["experiment_id"]}).json()
    assert stranger["fallback"] == "popularity" and stranger["experiment_id"] is None  # not logged

    def problems(**body: Any) -> str:
        resp = client.post("/experiments", json={"name": "x", "arms": ARMS, "control": "cf", **body})
        assert resp.status_code == 422, resp.text
        return json.dumps(resp.json()["detail"])

    assert "sum to 1" in problems(arms=[{**a, "share": 0.1} for a in ARMS])
    assert "unique" in problems(arms=[ARMS[0], ARMS[0] | {"share": 0.8}])
    assert "unknown policy" in problems(arms=[ARMS[0] | {"policy": "magic", "share": 0.5}, ARMS[1] | {"share": 0.5}])
    assert "control must name" in problems(control="nobody")
    assert "apply to the thaw policy only" in problems(
        arms=[ARMS[0] | {"share": 0.5}, ARMS[1] | {"share": 0.5, "alpha": 0.1}]
    )
    assert "after start_at" in problems(start_at="2030-01-02T00:00:00Z", end_at="2030-01-01T00:00:00Z")
    assert "time zone" in problems(start_at="2030-01-02T00:00:00")
    assert "exactly 2 arms" in problems(kind="interleaving")

    two = [ARMS[0] | {"name": "thaw_v2", "model_version": "v2", "share": 0.5}, ARMS[1] | {"share": 0.5}]
    resp = client.post("/experiments", json={"name": "v2", "arms": two, "control": "cf"})
    assert resp.status_code == 422 and "not trained" in resp.json()["detail"]
    plant_version(rt.registry.root, "v2", dim=4, embedding_dims=DIMS)
    resp = client.post("/experiments", json={"name": "v2", "arms": two, "control": "cf"})
    assert resp.status_code == 422 and "no indexed collections" in resp.json()["detail"]
    _index_version(rt, "v2", top_cold="c1")  # v2's content vectors favour c1; v1 stays active
    exp = _create(client, arms=two)
    user = next(u for u in USERS if assign(u, exp["salt"], [("thaw_v2", 0.5), ("cf", 0.5)]) == "thaw_v2")
    rec = client.get(f"/users/{user}/recommendations", params={"experiment": exp["experiment_id"]}).json()
    assert rec["model_version"] == "v2" and rec["items"][0]["item_id"] == "c1"
    default = client.get(f"/users/{user}/recommendations", params={"alpha": 1.0}).json()
    assert default["model_version"] == "v1" and default["items"][0]["item_id"] == "c0"


def test_recommendation_pages_filters_and_event_timestamps_work_or_are_refused(
    planted: tuple[TestClient, Runtime],
) -> None:
    client, rt = planted
    whole = [i["item_id"] for i in client.get("/users/u00/recommendations", params={"k": 6}).json()["items"]]
    page = client.get("/users/u00/recommendations", params={"k": 3, "offset": 2}).json()["items"]
    assert [i["item_id"] for i in page] == whole[2:5]
    images = client.get("/users/u00/recommendations", params={"k": 9, "filter": '{"modalities": "image"}'}).json()
    assert {i["item_id"] for i in images["items"]} == {"w0", "w1", "w2", "w3", "w4"}  # only warm items have the field
    for bad in ({"filter": "[1]"}, {"filter": "{"}, {"offset": -1}, {"page": 2}):
        assert client.get("/users/u00/recommendations", params=bad).status_code == 422, bad
    events = [
        {"user_id": "u01", "item_id": "c1", "timestamp": "2020-01-01T00:00:00Z"},
        {"user_id": "u02", "item_id": "c1", "timestamp": 1577836800},
    ]
    assert client.post("/events", json=events).status_code == 200
    with Session(rt.engine) as session:
        stamps = session.scalars(select(Interaction.created_at).where(Interaction.item_id == "c1")).all()
    assert [s.replace(tzinfo=UTC) for s in stamps] == [datetime(2020, 1, 1, tzinfo=UTC)] * 2
    for bad_event in (
        {"user_id": "u01", "item_id": "c1", "when": 1},
        {"user_id": "u01", "item_id": "c1", "timestamp": "soon"},
    ):
        assert client.post("/events", json=bad_event).status_code == 422, bad_event


def test_an_experiment_reports_every_problem_at_once_and_can_be_stopped(planted: tuple[TestClient, Runtime]) -> None:
    client, _ = planted
    arms = [
        {"name": "a", "policy": "no_such_policy", "share": 0.5},
        {"name": "b", "policy": "thaw"},
        {"name": "a", "policy": "random", "share": 0.5},
    ]
    resp = client.post("/experiments", json={"name": "bad", "arms": arms, "control": "z"})
    assert resp.status_code == 422
    detail = json.dumps(resp.json()["detail"])
    for problem in ("unknown policy 'no_such_policy'", "arm 'b' needs a share", "repeated: ['a']", "control must name"):
        assert problem in detail, (problem, detail)
    exp = _create(client)
    rec = client.get("/users/u00/recommendations", params={"experiment": exp["experiment_id"]}).json()
    assert rec["experiment_id"] == exp["experiment_id"]
    stopped = client.post(f"/experiments/{exp['experiment_id']}/stop")
    assert stopped.status_code == 200 and stopped.json()["status"] == "ended" and stopped.json()["end_at"]
    rec = client.get("/users/u00/recommendations", params={"experiment": exp["experiment_id"]}).json()
    assert rec["experiment_id"] is None and rec["arm"] is None  # the default list, not logged
    assert client.post(f"/experiments/{exp['experiment_id']}/stop").json()["end_at"] == stopped.json()["end_at"]
    later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    scheduled = _create(client, start_at=later)
    assert scheduled["status"] == "scheduled"
    assert client.post(f"/experiments/{scheduled['experiment_id']}/stop").json()["status"] == "ended"
    assert client.post("/experiments/nope/stop").status_code == 404
