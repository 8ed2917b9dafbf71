"""The cold-start protocol: JSON contract, every method ranked on the same split, Thaw far above random."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from entrypoints.cli import app

ROOT = Path(__file__).resolve().parents[2]
METRICS = {"recall@20", "ndcg@20", "precision@20", "recall@100", "ndcg@100", "precision@100", "coverage@20"}


def test_evaluate_meets_the_json_contract(catalog: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(app, ["evaluate", "--data", str(catalog), "--json", str(out), "--epochs", "10"])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["seeds"] == [0] and len(report["per_seed"]) == 1
    run = report["per_seed"][0]
    assert {"seed", "n_users", "n_cold_test_items", "scorer", "knn_weight", "scorer_grid"} <= set(run["protocol"])
    expected = {
        "thaw",
        "random",
        "content_knn",
        "ridge",
        "ridge_all",
        "mfcc_ridge",
        "thaw_text",
        "thaw_image",
        "thaw_audio",
    }
    assert expected <= set(run["methods"]) == set(report["mean"]) == set(report["std"])
    for metrics in run["methods"].values():
        assert set(metrics) == METRICS
    assert report["mean"]["thaw"] == run["methods"]["thaw"] and report["std"]["thaw"]["ndcg@20"] == 0
    # only 16 cold-test items here, so random already scores ~0.54: ask for a clear absolute margin
    assert run["methods"]["thaw"]["ndcg@20"] > run["methods"]["random"]["ndcg@20"] + 0.1
    assert run["timing_s"]["train_s"] > 0
    stages = run["train_stages"]
    assert {"als", "ridge", "audio_cnn", "heads", "tuning"} <= set(stages)
    assert all(s["peak_rss_mb"] > 0 and s["s"] >= 0 for s in stages.values())


@pytest.mark.slow
def test_movielens_thaw_beats_ridge_by_1_2x_and_the_poster_alone(movielens: Path, tmp_path: Path) -> None:
    """Real text + posters, seed 0 (1.31x ridge when measured). Fusion is *not* above the text head alone on this data
    (docs/evaluation.md): the poster adds nothing the metadata does not carry, so that is not asserted."""
    out = tmp_path / "ml.json"
    args = ["evaluate", "--data", str(movielens), "--min-rating", "4", "--json", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    methods = json.loads(out.read_text())["mean"]
    assert methods["thaw"]["ndcg@20"] > 2 * methods["random"]["ndcg@20"]
    assert methods["thaw"]["ndcg@20"] > 1.2 * methods["ridge"]["ndcg@20"]
    assert methods["thaw"]["ndcg@20"] > methods["thaw_image"]["ndcg@20"] + 0.1


def _figures(path: Path) -> dict[str, object]:
    """What an evaluation measured, without its wall times and memory."""
    report = json.loads(path.read_text())
    return {
        "seeds": report["seeds"],
        "mean": report["mean"],
        "std": report["std"],
        "per_seed": [{k: run[k] for k in ("protocol", "methods")} for run in report["per_seed"]],
    }


def test_evaluate_gives_identical_figures_on_a_rerun(tmp_path: Path) -> None:
    """Two processes with different hash seeds (set iteration order of strings differs) and the same --seed write
    the same figures, for two seeds in one run."""
    from thaw.synthetic import generate_catalog

    data = generate_catalog(tmp_path / "cat", n_items=40, n_users=30, audio_seconds=1.0, seed=5)
    outs = []
    for hash_seed in ("1", "2"):
        out = tmp_path / f"eval-{hash_seed}.json"
        args = ["evaluate", "--data", str(data), "--json", str(out), "--epochs", "2", "--seed", "0", "--seed", "1"]
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT)}
        done = subprocess.run([sys.executable, "-m", "entrypoints.cli", *args], env=env, cwd=ROOT, capture_output=True)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        outs.append(_figures(out))
    assert outs[0]["seeds"] == [0, 1]
    assert outs[0] == outs[1]
