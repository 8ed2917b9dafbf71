"""Bulk onboarding: `thaw ingest --data` killed mid-run and run again embeds every item exactly once."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import ROOT

pytestmark = pytest.mark.integration


def _ingest(env: dict[str, str], catalog: Path, *options: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "entrypoints.cli", "ingest", "--data", str(catalog), "--batch-size", "8", *options]
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _records(db: Path) -> int:
    with sqlite3.connect(db, timeout=30) as conn:
        return int(conn.execute("SELECT count(*) FROM items").fetchone()[0])


def test_ingest_killed_mid_run_then_rerun_embeds_every_item_once(
    tmp_path: Path, catalog: Path, trained: tuple[Any, Any, Any]
) -> None:
    from encoders.artifacts import save_version
    from entrypoints.runtime import build_runtime
    from indexer.search import get_items
    from services.embedding import content_hash, index_dataset
    from thaw.datasets import load_items
    from thaw.settings import Settings

    ds, split, model = trained
    data_dir = tmp_path / "thaw"
    rt = build_runtime(Settings(data_dir=data_dir))
    save_version(model, rt.registry)
    warm = split.warm[:40]
    index_dataset(rt, model, ds, warm)
    rt.close()
    env = {**os.environ, "THAW_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT)}
    items = load_items(catalog)

    proc = _ingest(env, catalog)
    deadline = time.monotonic() + 300
    while _records(data_dir / "services.db") < len(warm) + 24 and proc.poll() is None:
        assert time.monotonic() < deadline, "ingest wrote no records"
        time.sleep(0.05)
    assert proc.poll() is None, f"ingest finished before it could be killed: {proc.communicate()[0]}"
    proc.send_signal(signal.SIGKILL)  # a crash: no cleanup of any kind
    proc.wait(30)

    out = _ingest(env, catalog).communicate(timeout=600)[0]
    assert "0 failed" in out, out
    summary = out.strip().splitlines()[-1]
    embedded, skipped = (int(summary.split(": ")[1].split(", ")[i].split()[0]) for i in (0, 1))
    assert embedded + skipped == len(items)
    assert skipped >= len(warm) + 8  # the warm items and at least the first batch embedded before the crash

    again = _ingest(env, catalog, "--build-index").communicate(timeout=600)[0]
    assert f"0 embedded, {len(items)} unchanged" in again and "search graphs built" in again, again

    rt = build_runtime(Settings(data_dir=data_dir))
    try:
        hits = {h.item_id: h for h in get_items(rt.index, sorted(items), vectors=["content"])}
        with rt.session() as session:
            from services.db import ItemRecord

            records = {r.item_id: r for r in session.query(ItemRecord)}
    finally:
        rt.close()
    assert sorted(hits) == sorted(items)  # every item once (point ids are derived from item ids)
    for item_id, hit in hits.items():
        record = records[item_id]
        assert record.revision == 1
        assert hit.payload["content_hash"] == content_hash(record.metadata_, record.media)
        assert "content" in hit.vectors
