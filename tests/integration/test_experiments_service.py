"""An experiment over HTTP against the served API (real Redis broker, real worker, trained model), reported by
`thaw ab report` from the command line."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from entrypoints.cli import app
from tests.integration.conftest import Worker
from thaw.experiments.assignment import assign

pytestmark = pytest.mark.integration


def test_experiment_served_clicked_and_reported_from_the_cli(
    client: httpx.Client, worker: Worker, api_url: str, tmp_path: Path
) -> None:
    arms = [
        {"name": "thaw", "policy": "thaw", "share": 0.25},
        {"name": "cf", "policy": "cf_only", "share": 0.25},
        {"name": "knn", "policy": "content_knn", "share": 0.25},
        {"name": "pop", "policy": "popularity", "share": 0.25},
    ]
    resp = client.post("/experiments", json={"name": "it", "arms": arms, "control": "cf"})
    assert resp.status_code == 201, resp.text
    exp = resp.json()
    clicks: Counter[str] = Counter()
    impressions: Counter[str] = Counter()
    events = []
    for u in range(24):
        user = f"u{u}"
        rec = client.get(f"/users/{user}/recommendations", params={"experiment": exp["experiment_id"], "k": 5}).json()
        assert rec["arm"] == assign(user, exp["salt"], [(a["name"], a["share"]) for a in arms])
        assert len(rec["items"]) == 5
        impressions[rec["arm"]] += 5
        if u % 2 == 0:
            events.append({"user_id": user, "item_id": rec["items"][1]["item_id"], "rec_id": rec["rec_id"]})
            clicks[rec["arm"]] += 1
    assert client.post("/events", json=events).json() == {"accepted": len(events), "joined": len(events)}
    out, chart = tmp_path / "report.json", tmp_path / "report.png"
    args = ["ab", "report", exp["experiment_id"], "--url", api_url, "--json", str(out), "--chart", str(chart)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    for arm in report["arms"]:
        assert report["arms"][arm]["counts"]["clicks"] == clicks[arm]
        assert report["arms"][arm]["counts"]["impressions"] == impressions[arm]
    assert chart.read_bytes()[:4] == b"\x89PNG" and "sample-ratio check" in result.output
    assert worker.alive()
