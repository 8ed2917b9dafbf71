"""Client side of the HTTP API: helpers for programs that talk to a running Thaw service (the CLI, the demo)."""

from __future__ import annotations

import time
from typing import Any

import httpx

FINISHED = ("succeeded", "failed")


def wait_job(client: httpx.Client, job_id: str, timeout: float = 120.0, poll_s: float = 0.01) -> dict[str, Any]:
    """Poll GET /jobs/{job_id} until the job has succeeded or failed; TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
        if job["status"] in FINISHED:
            return job
        time.sleep(poll_s)
    raise TimeoutError(f"job {job_id} did not finish in {timeout}s")
