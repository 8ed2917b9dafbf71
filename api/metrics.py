"""API: the service's metrics read when /metrics is scraped — jobs by kind and status from the database (so they are
right whichever process ran the jobs) and the served model version — beside the encode latency this process observes."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from indexer.collections import active_collection_version
from services import embedding, jobs
from services.runtime import Runtime
from thaw.schema import UNFINISHED, JobKind, JobStatus

KINDS: tuple[str, ...] = JobKind.__args__  # type: ignore[attr-defined]
ENDED = (JobStatus.SUCCEEDED, JobStatus.FAILED)
log = logging.getLogger(__name__)


class ServiceCollector(Collector):
    """One grouped count of the jobs table and one alias read per scrape; every (kind, status) pair is reported, zero
    included, so the label sets are fixed."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        try:
            with self.runtime.session() as session:
                counts = jobs.status_counts(session)
            version = active_collection_version(self.runtime.index)
        except Exception:  # the database or index is unreachable: /metrics still answers, with the HTTP metrics
            log.warning("service metrics unavailable", exc_info=True)
            return
        depth = GaugeMetricFamily(
            "thaw_job_queue_depth", "Jobs waiting (queued) or being worked on (running)", labels=["kind", "status"]
        )
        ended = GaugeMetricFamily(
            "thaw_jobs_finished",
            "Jobs recorded as finished, by outcome (an item's deletion removes its jobs)",
            labels=["kind", "status"],
        )
        for kind in KINDS:
            for status in UNFINISHED:
                depth.add_metric([kind, status.value], counts.get((kind, status.value), 0))
            for status in ENDED:
                ended.add_metric([kind, status.value], counts.get((kind, status.value), 0))
        yield depth
        yield ended
        model = InfoMetricFamily("thaw_model", "The model version served (absent before the first one is indexed)")
        if version is not None:
            model.add_metric([], {"version": version})
        yield model


def register(registry: CollectorRegistry, runtime: Runtime) -> None:
    """The service's metrics and this process's encode latency, on the API's registry."""
    registry.register(ServiceCollector(runtime))
    registry.register(embedding.ENCODE_SECONDS)
