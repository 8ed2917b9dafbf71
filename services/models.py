"""Services: model versions — which are trained and indexed and which is served, and activation (rollback) by one
atomic alias swap, followed by a catch-up job for what changed while the version was not served."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from indexer.collections import ITEMS, active_collection_version, collection_name, indexed_versions
from indexer.search import count
from services import jobs, reembed
from services.db import running_reembeds
from services.dispatch import BrokerUnavailableError, Dispatcher
from services.runtime import Runtime, VersionNotIndexedError
from thaw.errors import ConflictError
from thaw.registry import ModelConfig

log = logging.getLogger(__name__)


@dataclass
class VersionInfo:
    config: ModelConfig
    indexed: bool  # its items and users collections exist
    items: int | None  # points in its items collection
    served: bool
    interactions: int | None = None  # what training read (None for a version trained before it was recorded)
    validation: dict[str, float] = field(default_factory=dict)  # the internal validation run's figures


def _figures(metrics: dict[str, Any]) -> tuple[int | None, dict[str, float]]:
    val = metrics.get("validation", {})
    keep = {k: v for k, v in val.items() if ("@" in k or k == "n_val_users") and isinstance(v, int | float)}
    return metrics.get("n_interactions"), keep


def versions(rt: Runtime) -> tuple[str | None, str | None, list[VersionInfo]]:
    """The served version, the running re-embedding job (if any), and every trained version."""
    served = active_collection_version(rt.index)
    indexed = set(indexed_versions(rt.index))
    counts: dict[str, int] = {}
    for version in indexed:
        counts[version] = count(rt.index, collection=collection_name(ITEMS, version))
    out = [
        VersionInfo(rt.registry.config(v), v in indexed, counts.get(v), v == served, *_figures(rt.registry.metrics(v)))
        for v in rt.registry.versions()
    ]
    with rt.session() as session:
        running = running_reembeds(session)
    return served, running[0][0] if running else None, out


def activate(
    rt: Runtime, dispatcher: Dispatcher, defaults: jobs.ReembedDefaults, version: str
) -> tuple[str | None, str | None]:
    """Serve a kept version at once (rollback). A version receives no writes while it is not served, so a catch-up
    job then re-embeds into it, in place, the items uploaded or changed since (unchanged ones are skipped by their
    content hash). Returns the version served before and the catch-up job's id."""
    rt.registry.path(version)  # UnknownVersionError
    if version not in indexed_versions(rt.index):
        raise VersionNotIndexedError(
            f"version {version} has no collections (never indexed, or removed by keep-N retention); "
            f're-embed the catalogue with it first: POST /jobs/reembed {{"model_version": "{version}"}}'
        )
    with rt.session() as session:
        running = running_reembeds(session)
    if any(target == version for _, target in running):
        raise ConflictError(f"job {running[0][0]} is still re-embedding into {version}; it switches when done")
    previous = rt.activate(version)
    catch_up = None
    if previous != version and not running:
        try:
            catch_up = jobs.start_reembed(rt, dispatcher, defaults, version).job_id
        except reembed.JobConflictError as exc:  # a job started in between: it dual-writes into this version
            log.warning("no catch-up job for %s: %s", version, exc)
        except BrokerUnavailableError:  # the job is recorded and re-sent once it is found stalled
            log.exception("catch-up job for %s recorded but not sent", version)
    return previous, catch_up
