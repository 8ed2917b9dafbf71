"""Offline replay end to end on a small synthetic catalogue (text + images): every served list, click and count is
checked against the held-out data it came from; `thaw ab simulate` writes the JSON report and the chart."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from typer.testing import CliRunner

from encoders.features import Table, catalogue_features
from encoders.replay import replay
from encoders.training import TrainConfig
from entrypoints.cli import app
from thaw.datasets import load_dataset, split_items
from thaw.experiments.replay import ReplayConfig, holdout_split
from thaw.experiments.spec import parse_arms
from thaw.synthetic import generate_catalog


@pytest.fixture(scope="module")
def small_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 items, 100 users; audio left out so frozen-feature extraction and training take seconds."""
    root = generate_catalog(tmp_path_factory.mktemp("ab"), n_items=120, n_users=100, audio_seconds=0.5, seed=5)
    rows = [json.loads(line) for line in (root / "items.jsonl").read_text().splitlines()]
    (root / "items.jsonl").write_text(
        "".join(json.dumps({k: v for k, v in r.items() if k != "audio"}) + "\n" for r in rows)
    )
    return root


@pytest.fixture(scope="module")
def features(small_catalog: Path) -> Table:
    return catalogue_features(load_dataset(small_catalog), progress=False)


def test_holdout_keeps_cold_test_and_each_users_latest_warm_interactions_out_of_training(small_catalog: Path) -> None:
    ds = load_dataset(small_catalog)
    split = split_items(ds, seed=0)
    held = holdout_split(ds, split, 0.2)
    train = held.train.interactions
    assert not set(train.item_ids.tolist()) & set(split.cold_test)
    assert len(train) + len(held.events) == len(ds.interactions)
    assert list(held.events.timestamps) == sorted(held.events.timestamps)  # type: ignore[arg-type]
    warm = set(split.warm)
    for user in ("u0", "u7", "u42"):
        mine = [
            t
            for u, i, t in zip(
                ds.interactions.user_ids, ds.interactions.item_ids, ds.interactions.timestamps, strict=True
            )
            if u == user and i in warm
        ]  # type: ignore[arg-type]
        kept = [
            t
            for u, i, t in zip(train.user_ids, train.item_ids, train.timestamps, strict=True)
            if u == user and i in warm
        ]  # type: ignore[arg-type]
        assert len(mine) - len(kept) == int(0.2 * len(mine)) and max(kept) <= min(set(mine) - set(kept))


def test_replay_serves_each_user_their_arm_and_clicks_exactly_the_held_out_interactions(
    small_catalog: Path, features: Table
) -> None:
    ds = load_dataset(small_catalog)
    split = split_items(ds, seed=0)
    spec = parse_arms("thaw,cf_only,content_knn,popularity,random", control="cf_only", salt="t")
    config = ReplayConfig(k=10)
    res = replay(
        ds, split, spec, config, TrainConfig(epochs=3), features, interleave=("thaw", "random"), progress=False
    )
    held, report = res.held_out, res.summary["report"]
    history, positives = defaultdict(set), defaultdict(set)
    for u, i in zip(held.train.interactions.user_ids, held.train.interactions.item_ids, strict=True):
        history[u].add(i)
    for u, i in zip(held.events.user_ids, held.events.item_ids, strict=True):
        positives[u].add(i)
    ab = [e for e in res.exposures if e.arm is not None]
    assert len(ab) == len({e.user_id for e in ab}) == res.summary["protocol"]["users_replayed"]
    assert [e.at for e in ab] == sorted(e.at for e in ab)  # users arrive in time order
    expected_clicks = set()
    for e in res.exposures:
        items = [s.item_id for s in e.items]
        assert len(items) == len(set(items)) == config.k and not set(items) & history[e.user_id]
        if e.arm is not None:
            assert e.arm == spec.assign(e.user_id).name
        else:  # interleaved lists only for the users of the two interleaved arms, drafted by those two teams
            assert spec.assign(e.user_id).name in ("thaw", "random") and {s.team for s in e.items} == {"thaw", "random"}
        if e.arm == "cf_only":
            assert not any(s.cold for s in e.items)  # cf_only never shows an item without interactions
        expected_clicks |= {(e.rec_id, i) for i in items if i in positives[e.user_id]}
    assert {(ev.rec_id, ev.item_id) for ev in res.events} == expected_clicks
    by_arm = Counter(
        next(e.arm for e in ab if e.rec_id == ev.rec_id) for ev in res.events if ev.rec_id.startswith("ab:")
    )
    for arm in spec.names:
        assert report["arms"][arm]["counts"]["clicks"] == by_arm[arm]
        assert report["arms"][arm]["counts"]["impressions"] == config.k * report["arms"][arm]["exposures"]
    assert sum(a["users"] for a in report["arms"].values()) == len(ab)
    assert report["arms"]["thaw"]["counts"]["impressions_cold"] > 0 and not report["srm"]["mismatch"]
    assert report["catalogue"]["cold"] >= len(split.cold_test)  # cold-test items start with no interactions
    tdi = res.summary["interleaving"]["report"]["interleaving"]["all_clicks"]
    assert tdi["wins"] > 2 * tdi["losses"] and tdi["p_value"] < 0.01, tdi  # planted tastes: Thaw beats random


def test_ab_simulate_cli_writes_the_report_and_chart(
    small_catalog: Path, features: Table, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("encoders.features.catalogue_features", lambda ds: features)  # computed once per module
    out = tmp_path / "replay.json"
    args = ["ab", "simulate", "--data", str(small_catalog), "--json", str(out), "--epochs", "2", "--k", "10"]
    args += ["--arms", "thaw,cf_only,content_knn,popularity", "--control", "cf_only"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(out.read_text())
    report = summary["report"]
    assert list(report["arms"]) == ["thaw", "cf_only", "content_knn", "popularity"]
    assert set(report["vs_control"]) == {"thaw", "content_knn", "popularity"}
    assert summary["protocol"]["users_replayed"] == sum(a["users"] for a in report["arms"].values())
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert "difference from the control" in result.output and "sample-ratio check" in result.output
    bad = CliRunner().invoke(
        app, ["ab", "simulate", "--data", str(small_catalog), "--json", str(out), "--arms", "magic"]
    )
    assert bad.exit_code != 0 and "unknown policy" in bad.output
