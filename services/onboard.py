"""Services: onboarding items in batches — each batch's records written in one transaction, its items encoded with
every version being written (one forward pass per modality per batch) and upserted once per version; an item whose
point in a version already carries its content hash is skipped there. `thaw ingest --data` runs a dataset through
here, and the chunks of a batch upload job (POST /items:batch) too."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import select

from indexer.collections import ITEMS, collection_name
from indexer.search import get_items
from indexer.writer import upsert_items
from services.db import ItemRecord, utcnow
from services.embedding import (
    PermanentError,
    content_hash,
    drop_deleted,
    each,
    encode,
    item_input,
    item_point,
    prefetch,
    record_payload,
    write_versions,
)
from services.runtime import Runtime
from thaw.datasets import Item

if TYPE_CHECKING:
    from encoders.artifacts import ThawModel
    from encoders.features import EncodedItem, ItemInput

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What a batch did to each of its items."""

    embedded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # unchanged content already in every version written
    failed: dict[str, str] = field(default_factory=dict)  # item id -> reason

    def add(self, other: Outcome) -> None:
        self.embedded += other.embedded
        self.skipped += other.skipped
        self.failed.update(other.failed)


def encode_each(model: ThawModel, inputs: list[ItemInput]) -> list[EncodedItem | str]:
    """The batch encoded in one pass; when the batch fails, each item alone, so only the items the encoder fails on
    fail (their entry is the reason)."""
    return [
        f"the {model.version} encoder failed on it: {type(e).__name__}: {e}" if isinstance(e, Exception) else e
        for e in each(lambda batch: encode(model, batch), inputs)
    ]


def stored_hashes(rt: Runtime, version: str, item_ids: list[str]) -> dict[str, str | None]:
    """The content hash each item's point in `version` carries (items without a point are absent)."""
    collection = collection_name(ITEMS, version)
    hits = get_items(rt.index, item_ids, vectors=False, collection=collection, fields=["item_id", "content_hash"])
    return {h.item_id: h.payload.get("content_hash") for h in hits}


@dataclass
class Pending:
    """A batch of records on its way into the index: what each version must encode (`todo`), the decoded inputs,
    the encoder's results once `encode_pending` ran, and the failures so far."""

    records: Sequence[ItemRecord]
    todo: dict[str, list[ItemRecord]]  # version -> its records whose stored point lacks their content hash
    inputs: dict[str, ItemInput]
    out: Outcome
    encoded: dict[str, list[EncodedItem | str]] = field(default_factory=dict)


def plan_records(
    rt: Runtime,
    records: Sequence[ItemRecord],
    versions: list[str],
    stored: dict[str, dict[str, str | None]] | None = None,
) -> Pending:
    """Which versions must encode which records (a version skips a record whose point already carries its content
    hash; `stored` gives each version's stored hashes when the caller has just read them), and their inputs decoded;
    a bad original fails its item only."""
    out = Outcome()
    hashes = {r.item_id: content_hash(r.metadata_ or {}, r.media or {}) for r in records}
    todo: dict[str, list[ItemRecord]] = {}
    for version in versions:
        held = stored[version] if stored is not None else stored_hashes(rt, version, [r.item_id for r in records])
        todo[version] = [r for r in records if held.get(r.item_id) != hashes[r.item_id]]
    inputs: dict[str, ItemInput] = {}
    wanted = {r.item_id: r for rs in todo.values() for r in rs}
    prefetch(rt, wanted.values())
    for record in wanted.values():
        try:
            inputs[record.item_id] = item_input(rt, record)
        except PermanentError as exc:
            out.failed[record.item_id] = str(exc)
    return Pending(records, {v: [r for r in rs if r.item_id in inputs] for v, rs in todo.items()}, inputs, out)


def encode_pending(rt: Runtime, pending: Pending) -> None:
    """The encoders' part: one pass per version over its records (no index or database access)."""
    for version, recs in pending.todo.items():
        pending.encoded[version] = encode_each(rt.model(version), [pending.inputs[r.item_id] for r in recs])


def write_pending(rt: Runtime, pending: Pending) -> Outcome:
    """The encoded records upserted once per version, then the tally: an item deleted meanwhile is taken back out
    and fails; one that no version had to encode is skipped."""
    out = pending.out
    written: set[str] = set()
    for version, recs in pending.todo.items():
        model = rt.model(version)
        points = []
        for record, enc in zip(recs, pending.encoded[version], strict=True):
            if isinstance(enc, str):
                out.failed[record.item_id] = enc
            else:
                points.append(item_point(model, record.item_id, enc, record_payload(record)))
        upsert_items(rt.index, collection_name(ITEMS, version), points)
        written.update(p.item_id for p in points)
    gone = drop_deleted(rt, sorted(written))
    for record in pending.records:
        if record.item_id in gone:
            out.failed[record.item_id] = f"item {record.item_id!r} was deleted while it was embedded"
        elif record.item_id in out.failed:
            continue
        elif record.item_id in written:
            out.embedded.append(record.item_id)
        else:
            out.skipped.append(record.item_id)
    return out


def embed_records(rt: Runtime, records: Sequence[ItemRecord], versions: list[str]) -> Outcome:
    """Encode the records with each version into its items collection, skipping a version where the item's point
    already carries the record's content hash; one encode and one upsert per version. Transient errors (index or
    database unreachable) are raised; bad originals fail their item only."""
    pending = plan_records(rt, records, versions)
    encode_pending(rt, pending)
    return write_pending(rt, pending)


# ---- thaw ingest --data -----------------------------------------------------------------------------------------


def _staged(item: Item) -> tuple[dict[str, bytes], dict[str, str]]:
    """An item's originals read from the dataset, and their sha256s."""
    data = {m: p.read_bytes() for m, p in (("image", item.image), ("audio", item.audio)) if p is not None}
    return data, {m: hashlib.sha256(b).hexdigest() for m, b in data.items()}


def stage_batch(rt: Runtime, items: Sequence[Item]) -> Pending:
    """One batch of dataset items up to its encoding: those whose content hash every version written already holds
    are skipped; the others' originals go to the media store, their records (new, or a new revision of a changed
    one) are written in one transaction, and they are planned (`plan_records`)."""
    with rt.session() as session:
        versions = write_versions(rt, session)
    staged = {item.item_id: _staged(item) for item in items}
    wanted = {i.item_id: content_hash(i.fields, staged[i.item_id][1]) for i in items}
    held = {v: stored_hashes(rt, v, list(wanted)) for v in versions}
    changed = [i for i in items if any(h.get(i.item_id) != wanted[i.item_id] for h in held.values())]
    skipped = sorted(set(wanted) - {i.item_id for i in changed})
    if not changed:
        return Pending([], {}, {}, Outcome(skipped=skipped))
    for item in changed:
        for modality, data in staged[item.item_id][0].items():
            rt.store.put(item.item_id, modality, data)
    with rt.session() as session:
        ids = [i.item_id for i in changed]
        records = {r.item_id: r for r in session.scalars(select(ItemRecord).where(ItemRecord.item_id.in_(ids)))}
        for item in changed:
            media = staged[item.item_id][1]
            record = records.get(item.item_id)
            if record is None:
                records[item.item_id] = record = ItemRecord(item_id=item.item_id, revision=1)
                session.add(record)
            elif content_hash(record.metadata_ or {}, record.media or {}) != wanted[item.item_id]:
                record.revision, record.updated_at = record.revision + 1, utcnow()
            record.metadata_, record.media = item.fields, media
        session.commit()
        fresh = {r.item_id: r for r in session.scalars(select(ItemRecord).where(ItemRecord.item_id.in_(ids)))}
        batch = [fresh[i] for i in ids]
        session.expunge_all()
        session.commit()  # no read transaction stays open while the batch is encoded
    pending = plan_records(rt, batch, versions, held)  # the records now carry the hashes `held` was compared with
    pending.out.skipped += skipped
    return pending


def ingest(rt: Runtime, items: Iterable[Item], batch_size: int) -> Generator[tuple[int, Outcome], None, None]:
    """Onboard dataset items in batches (`batches`), yielding each batch's size and outcome as it lands. The
    encoder runs in the calling thread; one writer thread does the rest of each batch beside it (the content-hash
    lookup, the records' transaction, the upsert), so while batch n is encoded, batch n-1 is written and batch n+1
    staged. An item counts as embedded only once its point is in the index, so an interrupted run loses nothing: a
    rerun skips what landed. On any exception (KeyboardInterrupt included) the writer's current task finishes
    before it is raised."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="thaw-ingest-writer") as writer:
        chunks = batches(items, batch_size)
        first = next(chunks, None)
        staging = writer.submit(stage_batch, rt, first) if first is not None else None
        writing: tuple[int, Future[Outcome]] | None = None
        try:
            while staging is not None:
                pending = staging.result()
                size = len(pending.records) + len(pending.out.skipped)
                upcoming = next(chunks, None)
                staging = writer.submit(stage_batch, rt, upcoming) if upcoming is not None else None
                encode_pending(rt, pending)
                if writing is not None:
                    yield writing[0], writing[1].result()
                writing = size, writer.submit(write_pending, rt, pending)
            if writing is not None:
                yield writing[0], writing[1].result()
        except BaseException:
            writer.shutdown(wait=True, cancel_futures=True)
            raise


def batches(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    """The items in batches of `size`, in order of text length: a batch's texts are padded to its longest, so
    texts of like length together make the least padding (the order of onboarding is otherwise arbitrary)."""
    batch: list[Item] = []
    for item in sorted(items, key=lambda i: (len(i.text), i.item_id)):
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
