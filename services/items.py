"""Services: items — ingest (media checked by decoding, originals kept, the record and a queued job written in one
transaction, then the job sent to the workers), metadata changes, what is stored about an item, the catalogue page by
page, deletion, and similar items."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete as sql_delete
from sqlalchemy import select, update

from indexer.collections import active_collection_version
from indexer.search import Hit, get_item, get_items, similar
from indexer.writer import delete_items
from services import experiments
from services.db import (
    Interaction,
    ItemRecord,
    Job,
    ReembedItem,
    ReembedJob,
    covered,
    log_job,
    record_dispatch,
    utcnow,
)
from services.dispatch import BrokerUnavailableError, Dispatcher
from services.runtime import Runtime
from thaw.errors import InvalidInputError, NotFoundError, UnsupportedMediaError
from thaw.media import AUDIO_KINDS, IMAGE_KINDS, MEDIA_MODALITIES, decode_audio, decode_image, sniff_kind
from thaw.schema import MODALITIES, JobStatus, Modality, item_text

log = logging.getLogger(__name__)
_DECODES = threading.BoundedSemaphore(max(1, (os.cpu_count() or 2) // 2))  # decodes at once (memory and CPU)


def check_media(rt: Runtime, field: str, data: bytes) -> None:
    """A file is accepted when its magic bytes name an allowed kind and it decodes whole within the limits. Called
    off the event loop; a bounded number of decodes run at once."""
    kind = sniff_kind(data)
    allowed = IMAGE_KINDS if field == "image" else AUDIO_KINDS
    if kind not in allowed:
        raise UnsupportedMediaError(f"{field} must be one of {', '.join(allowed)}; got {kind or 'unrecognised bytes'}")
    limits = rt.limits
    with _DECODES:
        if field == "image":
            decode_image(data, max_pixels=limits.max_image_pixels)
        else:
            decode_audio(data, max_seconds=limits.max_audio_seconds)


def check_modalities(rt: Runtime, metadata: dict[str, Any], media: Mapping[str, bytes]) -> None:
    """An upload in a modality the served model was not trained on is refused: its head never learned, so its
    vectors would land anywhere in the CF space (and outrank every trained item)."""
    config = rt.view().config
    sent = (["text"] if item_text(metadata) else []) + sorted(media)
    untrained = [m for m in sent if m not in config.modalities]
    if untrained:
        raise InvalidInputError(
            f"model {config.version} was trained on {', '.join(config.modalities) or 'no modality'}, not on "
            f"{', '.join(untrained)}: leave {'it' if len(untrained) == 1 else 'them'} out, or train a model on a "
            "catalogue that has them"
        )


def submit(
    rt: Runtime, dispatcher: Dispatcher, item_id: str, metadata: dict[str, Any], media: Mapping[str, bytes]
) -> str:
    """Ingest (or replace) an item; returns the id of the job that embeds it. A re-upload replaces the metadata and
    the media it sends, and keeps the item's other originals (a JSON re-upload keeps its image and audio). The job
    is recorded (the outbox) before it is sent: when the broker does not take the message, the job sweep sends it
    later."""
    check_modalities(rt, metadata, media)
    for field, data in media.items():
        check_media(rt, field, data)
    hashes = {field: rt.store.put(item_id, field, data).sha256 for field, data in media.items()}
    return _save(rt, dispatcher, item_id, lambda old_metadata, old_media: (metadata, {**old_media, **hashes}))


def patch(rt: Runtime, dispatcher: Dispatcher, item_id: str, changes: dict[str, Any]) -> str:
    """Change an item's metadata (a field set to null is removed; media are kept) and re-embed it; returns the job's
    id. NotFoundError for an item never uploaded."""
    merged: dict[str, Any] = {}

    def update(old_metadata: dict[str, Any] | None, old_media: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
        if old_metadata is None:
            raise NotFoundError(f"item {item_id!r} does not exist: upload it with POST /items first")
        merged.update({k: v for k, v in {**old_metadata, **changes}.items() if v is not None})
        return merged, old_media

    check_modalities(rt, {k: v for k, v in changes.items() if v is not None}, {})
    return _save(rt, dispatcher, item_id, update)


def _save(
    rt: Runtime,
    dispatcher: Dispatcher,
    item_id: str,
    update: Callable[[dict[str, Any] | None, dict[str, str]], tuple[dict[str, Any], dict[str, str]]],
) -> str:
    """Write the item's record as `update(old metadata or None, old media)` says, with a new revision and a queued
    embedding job, in one transaction; then send the job, unless enough queued jobs' messages cover it (covered)."""
    with rt.session() as session:
        record = session.get(ItemRecord, item_id)
        metadata, media = update(
            None if record is None else dict(record.metadata_ or {}), dict(record.media or {}) if record else {}
        )
        if not media and not item_text(metadata):
            raise InvalidInputError("an item needs text fields in metadata, an image or audio; none was given")
        if record is None:
            record = ItemRecord(item_id=item_id, revision=1)
            session.add(record)
        else:
            record.revision += 1
            record.updated_at = utcnow()
        record.metadata_, record.media = metadata, media
        job = Job(kind="embed", item_id=item_id, revision=record.revision, status=JobStatus.QUEUED)
        send = not covered(session)  # else the tasks of the queued jobs' messages take it in a batch
        if send:
            record_dispatch(job)
        else:
            job.dispatched_at = utcnow()
        session.add(job)
        session.commit()
        log_job(job, "queued")
        job_id = job.job_id
    if not send:
        return job_id
    try:
        dispatcher.embed(item_id, job_id)
    except BrokerUnavailableError as exc:
        log.warning("job %s recorded; the broker did not take it (%s): the job sweep sends it later", job_id, exc)
    return job_id


@dataclass
class StoredItem:
    item_id: str
    metadata: dict[str, Any]
    hit: Hit | None  # the point in the served collection
    created_at: datetime | None
    job: dict[str, Any] | None  # the item's latest job: id, status, error


def read(rt: Runtime, item_id: str) -> StoredItem:
    hit = get_item(rt.index, item_id) if active_collection_version(rt.index) is not None else None
    with rt.session() as session:
        record = session.get(ItemRecord, item_id)
        job = session.scalars(select(Job).where(Job.item_id == item_id).order_by(Job.created_at.desc())).first()
        job_info = None if job is None else {"job_id": job.job_id, "status": job.status, "error": job.error}
        if hit is None and record is None:
            raise NotFoundError(f"item {item_id!r} does not exist")
        payload = hit.payload if hit else {}
        metadata = (record.metadata_ if record else payload.get("metadata")) or {}
        created = record.created_at if record else payload.get("created_at")
    return StoredItem(item_id, metadata, hit, created, job_info)


def similar_items(
    rt: Runtime, item_id: str, using: str, k: int, match: Mapping[str, str | int | bool] | None
) -> list[Hit]:
    rt.active_version()  # 503 before any model is served
    return similar(rt.index, item_id, using, k, match)


MAX_SCANNED = 5000  # records a catalogue page reads at most (a rare filter may give a short page, with a cursor)


@dataclass
class ListedItem:
    item_id: str
    metadata: dict[str, Any]
    modalities: list[Modality]
    revision: int
    created_at: datetime
    updated_at: datetime
    indexed: bool  # has a point in the served collection


def modalities_of(record: ItemRecord) -> list[Modality]:
    """The modalities an item was uploaded with: text when its metadata has text fields, and its originals."""
    sent = {"text"} if item_text(record.metadata_ or {}) else set()
    return [m for m in MODALITIES if m in sent or m in (record.media or {})]


def _matches(metadata: dict[str, Any], match: Mapping[str, str | int | bool]) -> bool:
    """Each field equals its value, or, for a list field, holds it (as a payload filter matches)."""
    for key, want in match.items():
        value = metadata.get(key)
        values = value if isinstance(value, list) else [value]
        if not any(v == want and isinstance(v, bool) == isinstance(want, bool) for v in values):
            return False
    return True


def catalogue(
    rt: Runtime,
    after: str | None,
    limit: int,
    *,
    modality: str | None = None,
    match: Mapping[str, str | int | bool] | None = None,
) -> tuple[list[ListedItem], str | None]:
    """The uploaded items in item-id order after `after`, those with `modality` and whose metadata matches `match`;
    returns a page of at most `limit` and the id to continue after (None at the end). A page reads at most
    MAX_SCANNED records: under a rare filter it may hold fewer than `limit` items and still have a continuation."""
    page: list[ItemRecord] = []
    scanned, last = 0, after
    with rt.session() as session:
        while len(page) < limit and scanned < MAX_SCANNED:
            query = select(ItemRecord).order_by(ItemRecord.item_id).limit(min(500, MAX_SCANNED - scanned))
            batch = list(session.scalars(query if last is None else query.where(ItemRecord.item_id > last)))
            if not batch:
                last = None
                break
            for record in batch:
                scanned, last = scanned + 1, record.item_id
                if (modality is None or modality in modalities_of(record)) and _matches(
                    record.metadata_ or {}, match or {}
                ):
                    page.append(record)
                    if len(page) == limit:
                        break
        if (
            last is not None
            and session.scalar(select(ItemRecord.item_id).where(ItemRecord.item_id > last).limit(1)) is None
        ):
            last = None  # nothing after it: the end
        served = active_collection_version(rt.index) is not None
        indexed = (
            {h.item_id for h in get_items(rt.index, [r.item_id for r in page], vectors=False, fields=["item_id"])}
            if served
            else set()
        )
        listed = [
            ListedItem(
                r.item_id,
                dict(r.metadata_ or {}),
                modalities_of(r),
                r.revision,
                r.created_at,
                r.updated_at,
                r.item_id in indexed,
            )
            for r in page
        ]
    return listed, last


def delete(rt: Runtime, item_id: str) -> None:
    """Erase an item: its record, its jobs, its events, its rows in re-embedding jobs and its place in experiment
    exposures (one transaction), then its point in every version's items collection, then its originals. The database
    goes first, so an embedding that races the deletion finds the record gone and takes its point back
    (services.embedding.drop_deleted). NotFoundError when nothing of the item is left anywhere (a repeated delete);
    a delete cut off half-way (index unavailable) is finished by sending it again."""
    with rt.session() as session:
        found = session.get(ItemRecord, item_id) is not None
        rows = session.execute(select(ReembedItem.job_id).where(ReembedItem.item_id == item_id)).scalars().all()
        for job_id in rows:  # done + failed + pending stays the job's total
            session.execute(
                update(ReembedJob)
                .where(ReembedJob.job_id == job_id, ReembedJob.total.is_not(None))
                .values(total=ReembedJob.total - 1)
            )
        session.execute(sql_delete(ReembedItem).where(ReembedItem.item_id == item_id))
        session.execute(sql_delete(Interaction).where(Interaction.item_id == item_id))
        session.execute(sql_delete(Job).where(Job.item_id == item_id))
        experiments.forget_item(session, item_id)
        session.execute(sql_delete(ItemRecord).where(ItemRecord.item_id == item_id))
        session.commit()
    held = delete_items(rt.index, [item_id])
    media = [m for m in MEDIA_MODALITIES if rt.store.info(item_id, m) is not None]
    rt.store.delete(item_id)
    if not (found or held or media):
        raise NotFoundError(f"item {item_id!r} does not exist (or was deleted already)")
