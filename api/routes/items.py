"""API: ingest (POST /items), the catalogue page by page, what is stored about an item, deletion, and similar
items."""

from __future__ import annotations

import json
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from api.deps import DispatcherDep, RuntimeDep, require_model
from api.schemas import (
    DEFAULT_PAGE,
    MAX_BATCH_BYTES,
    MAX_BATCH_ITEMS,
    MAX_BATCH_METADATA_BYTES,
    MAX_METADATA_BYTES,
    MAX_PAGE,
    BatchAccepted,
    IngestAccepted,
    ItemCreate,
    ItemPage,
    ItemPatch,
    ItemPublic,
    ItemSummary,
    ScoredItem,
    SimilarItems,
    check_metadata,
    decode_cursor,
    encode_cursor,
    parse_filter,
)
from services import items, jobs
from services.batches import BatchItem, media_owner
from services.runtime import Runtime
from thaw.errors import InvalidInputError, TooLargeError, UnsupportedMediaError
from thaw.schema import Modality, VectorName, check_id

router = APIRouter(tags=["items"], dependencies=[Depends(require_model)])

_FORM_FIELDS = {
    "item_id": {"type": "string"},
    "metadata": {"type": "string", "description": "JSON object of text fields"},
}
_INGEST_BODY = {
    "requestBody": {
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["item_id"],
                    "properties": {
                        **_FORM_FIELDS,
                        "image": {"type": "string", "format": "binary"},
                        "audio": {"type": "string", "format": "binary"},
                    },
                }
            },
            "application/x-www-form-urlencoded": {
                "schema": {"type": "object", "required": ["item_id"], "properties": _FORM_FIELDS}
            },
            "application/json": {"schema": ItemCreate.model_json_schema()},
        },
        "required": True,
    }
}


class _StrictMultiPart(MultiPartParser):
    """Starlette's multipart parser, but a form field that is not UTF-8 is refused (Starlette reads it as Latin-1)."""

    def on_part_end(self) -> None:
        part = self._current_part
        if part.file is None:
            try:
                part.data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise MultiPartException(f"form field {part.field_name!r} is not UTF-8 text: {exc.reason}") from exc
        super().on_part_end()


async def _read_upload(upload: UploadFile, limit: int, field: str) -> bytes:
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise TooLargeError(f"{field} is larger than the {limit}-byte upload limit")
    if not data:
        raise InvalidInputError(f"{field} file is empty")
    return data


def _json(text: str, what: str) -> Any:
    """A JSON document with finite numbers only, nested at most a few hundred levels."""

    def refuse(constant: str) -> Any:
        raise InvalidInputError(f"{what} must be JSON with finite numbers, got {constant}")

    try:
        return json.loads(text, parse_constant=refuse)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{what} must be a JSON object: {exc}") from exc
    except RecursionError as exc:
        raise InvalidInputError(f"{what} is nested too deeply") from exc


async def _form(request: Request, stream: Any, *, max_files: int, max_fields: int, max_part_size: int) -> FormData:
    """A multipart body parsed strictly; a form field over `max_part_size` is 413, a malformed body 422."""
    parser = _StrictMultiPart(
        request.headers, stream, max_files=max_files, max_fields=max_fields, max_part_size=max_part_size
    )
    try:
        return await parser.parse()
    except MultiPartException as exc:
        if exc.message.startswith("Part exceeded maximum size"):
            raise TooLargeError(f"a form field is larger than the {max_part_size}-byte limit") from exc
        raise InvalidInputError(f"malformed multipart body: {exc.message}") from exc


async def _multipart(request: Request, limit: int) -> tuple[str, dict[str, Any], dict[str, bytes]]:
    form = await _form(request, request.stream(), max_files=2, max_fields=8, max_part_size=MAX_METADATA_BYTES)
    try:
        return await _form_item(form, limit)
    finally:
        await form.close()


async def _form_item(form: FormData, limit: int) -> tuple[str, dict[str, Any], dict[str, bytes]]:
    raw_id, raw_meta = form.get("item_id"), form.get("metadata") or "{}"
    if not isinstance(raw_id, str) or not isinstance(raw_meta, str):
        raise InvalidInputError("item_id and metadata must be form fields, not files")
    unknown = set(form.keys()) - {"item_id", "metadata", "image", "audio"}
    if unknown:
        raise InvalidInputError(f"unknown form fields {sorted(unknown)}; expected item_id, metadata, image, audio")
    metadata = check_metadata(_json(raw_meta, "metadata"))
    media: dict[str, bytes] = {}
    for field in ("image", "audio"):
        upload = form.get(field)
        if upload is None or upload == "":
            continue
        if not isinstance(upload, UploadFile):
            raise InvalidInputError(f"{field} must be a file upload")
        media[field] = await _read_upload(upload, limit, field)
    return raw_id, metadata, media


async def _parse(request: Request, rt: Runtime) -> tuple[str, dict[str, Any], dict[str, bytes]]:
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        item_id, metadata, media = await _multipart(request, rt.limits.max_upload_bytes)
    elif ctype.startswith("application/x-www-form-urlencoded"):  # a form without files (curl -d, httpx data=)
        try:
            text = (await request.body()).decode("utf-8")
            fields: list[tuple[str, str | UploadFile]] = list(parse_qsl(text, errors="strict", max_num_fields=8))
        except (UnicodeDecodeError, ValueError) as exc:
            raise InvalidInputError(f"malformed form body (UTF-8, at most 8 fields expected): {exc}") from exc
        item_id, metadata, media = await _form_item(FormData(fields), rt.limits.max_upload_bytes)
    elif ctype.startswith("application/json"):
        try:
            body = ItemCreate.model_validate_json(await request.body())
        except ValidationError as exc:
            raise RequestValidationError(exc.errors(include_url=False)) from exc
        item_id, metadata, media = body.item_id, check_metadata(body.metadata), {}
    else:
        expected = "multipart/form-data, application/x-www-form-urlencoded or application/json"
        raise UnsupportedMediaError(f"send {expected}, not {ctype or 'no content type'}")
    return check_id(item_id), metadata, media


@router.post("/items", status_code=202, response_model=IngestAccepted, openapi_extra=_INGEST_BODY)
async def create_item(request: Request, rt: RuntimeDep, dispatcher: DispatcherDep) -> JSONResponse:
    """Upload (or replace) an item; a worker embeds it. Poll GET /jobs/{job_id}."""
    item_id, metadata, media = await _parse(request, rt)
    job_id = await run_in_threadpool(items.submit, rt, dispatcher, item_id, metadata, media)  # decoding: off the loop
    return JSONResponse({"item_id": item_id, "job_id": job_id}, status_code=202)


_BATCH_BODY = {
    "requestBody": {
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["metadata"],
                    "properties": {
                        "metadata": {
                            "type": "string",
                            "description": "NDJSON: one JSON object per line, item_id and the item's text fields",
                        },
                    },
                    "additionalProperties": {
                        "type": "string",
                        "format": "binary",
                        "description": "media files, each part named image:<item_id> or audio:<item_id>",
                    },
                }
            }
        },
        "required": True,
    }
}


def _ndjson(text: str) -> list[tuple[str, dict[str, Any] | str]]:
    """The lines of a batch: (item id, its metadata, or why the metadata is refused). A line that is not a JSON object
    with a valid item_id refuses the whole request (422), naming the line."""
    out: list[tuple[str, dict[str, Any] | str]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        row = _json(line, f"metadata line {lineno}")
        if not isinstance(row, dict):
            raise InvalidInputError(f"metadata line {lineno} must be a JSON object, got {type(row).__name__}")
        try:
            item_id = check_id(row.pop("item_id", None))
        except InvalidInputError as exc:
            raise InvalidInputError(f"metadata line {lineno}: {exc}") from exc
        try:
            out.append((item_id, check_metadata(row)))
        except InvalidInputError as exc:  # this item fails; the others go on
            out.append((item_id, str(exc)))
    if not out:
        raise InvalidInputError("the metadata part has no item: send one JSON object per line")
    if len(out) > MAX_BATCH_ITEMS:
        raise TooLargeError(f"the batch has {len(out)} items, more than the {MAX_BATCH_ITEMS}-item limit")
    return out


async def _limited(request: Request) -> Any:
    """The request body, refused (413) past MAX_BATCH_BYTES."""
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > MAX_BATCH_BYTES:
            raise TooLargeError(f"a batch is at most {MAX_BATCH_BYTES} bytes")
        yield chunk


async def _batch(request: Request, limit: int) -> list[BatchItem]:
    """A batch's items (one per line) with their media, and why an item is refused already."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise UnsupportedMediaError("send multipart/form-data: a metadata part (NDJSON) and the media files")
    if int(request.headers.get("content-length") or 0) > MAX_BATCH_BYTES:
        raise TooLargeError(f"a batch is at most {MAX_BATCH_BYTES} bytes")
    form = await _form(
        request,
        _limited(request),
        max_files=2 * MAX_BATCH_ITEMS + 1,
        max_fields=1,
        max_part_size=MAX_BATCH_METADATA_BYTES,
    )
    try:
        raw = form.get("metadata")
        if isinstance(raw, UploadFile):
            raw = (await raw.read(MAX_BATCH_METADATA_BYTES + 1)).decode("utf-8", errors="strict")
        if not isinstance(raw, str):
            raise InvalidInputError("a batch needs a metadata part: NDJSON, one item per line")
        lines = _ndjson(raw)
        known = dict(lines)
        refused: dict[str, str] = {}
        media: dict[str, dict[str, bytes]] = {}
        for name, part in form.multi_items():
            if name == "metadata":
                continue
            modality, item_id = media_owner(name, known)
            if not isinstance(part, UploadFile):
                raise InvalidInputError(f"{name} must be a file upload")
            try:
                media.setdefault(item_id, {})[modality] = await _read_upload(part, limit, name)
            except InvalidInputError as exc:  # too large or empty: this item fails
                refused.setdefault(item_id, str(exc))
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"the metadata part is not UTF-8 text: {exc.reason}") from exc
    finally:
        await form.close()
    return [
        BatchItem(i, {}, error=m) if isinstance(m, str) else BatchItem(i, m, media.get(i, {}), refused.get(i))
        for i, m in lines
    ]


@router.post("/items:batch", status_code=202, response_model=BatchAccepted, openapi_extra=_BATCH_BODY)
async def create_items(request: Request, rt: RuntimeDep, dispatcher: DispatcherDep) -> JSONResponse:
    """Upload (or replace) many items in one multipart request: a `metadata` part of NDJSON (one JSON object per line
    with `item_id` and the item's text fields) and the media files, each part named `image:<item_id>` or
    `audio:<item_id>`. One job embeds the batch on the workers in chunks; GET /jobs/{job_id} lists each item's status.
    An item with bad media, bad metadata or an id sent twice fails alone, with the reason; a line that is not JSON
    with a valid item_id, or a file for no item, refuses the request (422); over 1000 items or 256 MiB: 413."""
    batch = await _batch(request, rt.limits.max_upload_bytes)
    submitted = await run_in_threadpool(jobs.submit_batch, rt, dispatcher, batch)
    body = {"job_id": submitted.job_id, "total": submitted.total, "failed": submitted.failed}
    return JSONResponse(body, status_code=202)


@router.patch("/items/{item_id}", status_code=202, response_model=IngestAccepted)
def patch_item(item_id: str, body: ItemPatch, rt: RuntimeDep, dispatcher: DispatcherDep) -> JSONResponse:
    """Change an item's metadata (a field set to null is removed) and re-embed it with its kept media. Poll GET
    /jobs/{job_id}."""
    item_id = check_id(item_id)
    job_id = items.patch(rt, dispatcher, item_id, dict(body.metadata))
    return JSONResponse({"item_id": item_id, "job_id": job_id}, status_code=202)


@router.get("/items", response_model=ItemPage)
def list_items(
    rt: RuntimeDep,
    cursor: Annotated[str | None, Query(max_length=1024, description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE,
    modality: Annotated[Modality | None, Query(description="items uploaded with this modality")] = None,
    filter: Annotated[
        str | None, Query(description='metadata fields, JSON: {"genres": "Drama"} (a list field holds the value)')
    ] = None,
) -> ItemPage:
    """Every uploaded item (indexed or not) in item-id order, page by page. A page reads at most 5000 items: under a
    rare filter it may hold fewer than `limit` and still have a `next_cursor`; the listing ends when that is null."""
    key = decode_cursor("items", cursor, str)
    after = None if key is None else check_id(key[0])
    page, last = items.catalogue(rt, after, limit, modality=modality, match=parse_filter(filter))
    return ItemPage(
        items=[
            ItemSummary(
                item_id=i.item_id,
                metadata=i.metadata,
                modalities=i.modalities,
                revision=i.revision,
                indexed=i.indexed,
                created_at=i.created_at,
                updated_at=i.updated_at,
            )
            for i in page
        ],
        next_cursor=None if last is None else encode_cursor("items", last),
    )


@router.delete("/items/{item_id}", status_code=204, response_class=Response)
def delete_item(item_id: str, rt: RuntimeDep) -> Response:
    """Delete an item: its point in every model version's collection, its originals in the media store, its record,
    jobs and events, and its place in experiment exposures. 204 when something of it was deleted; 404 when nothing of
    it exists, so a repeated delete answers 404. A delete cut off by an unavailable index (503) is finished by sending
    it again."""
    items.delete(rt, check_id(item_id))
    return Response(status_code=204)


@router.get("/items/{item_id}", response_model=ItemPublic)
def read_item(item_id: str, rt: RuntimeDep) -> ItemPublic:
    stored = items.read(rt, check_id(item_id))
    payload = stored.hit.payload if stored.hit else {}
    return ItemPublic(
        item_id=stored.item_id,
        metadata=stored.metadata,
        modalities=payload.get("modalities", []),
        indexed=stored.hit is not None,
        model_version=payload.get("model_version"),
        interactions=int(payload.get("interactions", 0)),
        created_at=stored.created_at,
        job=stored.job,
    )


@router.get("/items/{item_id}/similar", response_model=SimilarItems)
def similar_items(
    item_id: str,
    rt: RuntimeDep,
    k: Annotated[int, Query(ge=1, le=1000)] = 10,
    using: VectorName = "content",
    filter: Annotated[str | None, Query(description='payload filter, JSON: {"modalities": "image"}')] = None,
) -> SimilarItems:
    """The k items most similar to this one by the `using` vector; scores are cosine similarities in [-1, 1] for
    every vector (cf and content compare directions, so a large-norm item is no hub)."""
    item_id = check_id(item_id)
    hits = items.similar_items(rt, item_id, using, k, parse_filter(filter))
    return SimilarItems(
        item_id=item_id, using=using, items=[ScoredItem(item_id=h.item_id, score=h.score) for h in hits]
    )
