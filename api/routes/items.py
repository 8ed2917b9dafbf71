"""API: ingest (POST /items), item lookup and similar items."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.orm import Session
from starlette.datastructures import UploadFile

from api.deps import RuntimeDep
from api.schemas import IngestAccepted, ItemCreate, ItemPublic, ScoredItem, SimilarItems, check_metadata
from indexer.search import NotIndexedError, get_item, similar
from thaw.db import ItemRecord, Job, utcnow
from thaw.runtime import Runtime
from thaw.schema import InvalidIdError, VectorName, check_id, item_text
from workers.media import AUDIO_KINDS, IMAGE_KINDS, MediaError, decode_audio, decode_image, sniff_kind

router = APIRouter(tags=["items"])

_INGEST_BODY = {
    "requestBody": {
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["item_id"],
                    "properties": {
                        "item_id": {"type": "string"},
                        "metadata": {"type": "string", "description": "JSON object of text fields"},
                        "image": {"type": "string", "format": "binary"},
                        "audio": {"type": "string", "format": "binary"},
                    },
                }
            },
            "application/json": {"schema": ItemCreate.model_json_schema()},
        },
        "required": True,
    }
}


async def _read_upload(upload: UploadFile, limit: int, field: str) -> bytes:
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, f"{field} is larger than the {limit}-byte upload limit")
    return data


def _check_media(rt: Runtime, field: str, data: bytes) -> None:
    kind = sniff_kind(data)
    allowed = IMAGE_KINDS if field == "image" else AUDIO_KINDS
    if kind not in allowed:
        raise HTTPException(415, f"{field} must be one of {', '.join(allowed)}; got {kind or 'unrecognised bytes'}")
    try:
        if field == "image":
            decode_image(data, max_pixels=rt.max_image_pixels)
        else:
            decode_audio(data, max_seconds=rt.max_audio_seconds)
    except MediaError as exc:
        raise HTTPException(422, f"{field}: {exc}") from exc


async def _parse(request: Request, rt: Runtime) -> tuple[str, dict[str, Any], dict[str, bytes]]:
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > 3 * rt.max_upload_bytes:
        raise HTTPException(413, f"request body of {length} bytes exceeds the upload limit")
    ctype = request.headers.get("content-type", "")
    media: dict[str, bytes] = {}
    if ctype.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        form = await request.form(max_files=2, max_fields=8)
        raw_id, raw_meta = form.get("item_id"), form.get("metadata") or "{}"
        if not isinstance(raw_id, str) or not isinstance(raw_meta, str):
            raise HTTPException(422, "item_id and metadata must be form fields, not files")
        try:
            metadata = check_metadata(json.loads(raw_meta))
        except json.JSONDecodeError as exc:
            raise HTTPException(422, f"metadata must be a JSON object: {exc}") from exc
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc
        unknown = set(form.keys()) - {"item_id", "metadata", "image", "audio"}
        if unknown:
            raise HTTPException(422, f"unknown form fields {sorted(unknown)}; expected item_id, metadata, image, audio")
        for field in ("image", "audio"):
            upload = form.get(field)
            if upload is None or upload == "":
                continue
            if not isinstance(upload, UploadFile):
                raise HTTPException(422, f"{field} must be a file upload")
            media[field] = await _read_upload(upload, rt.max_upload_bytes, field)
            if not media[field]:
                raise HTTPException(422, f"{field} file is empty")
        item_id = raw_id
    elif ctype.startswith("application/json"):
        try:
            body = ItemCreate.model_validate_json(await request.body())
        except ValidationError as exc:
            raise HTTPException(422, exc.errors(include_url=False, include_context=False, include_input=False)) from exc
        item_id, metadata = body.item_id, body.metadata
    else:
        raise HTTPException(415, f"send multipart/form-data or application/json, not {ctype or 'no content type'}")
    try:
        item_id = check_id(item_id)
    except InvalidIdError as exc:
        raise HTTPException(422, str(exc)) from exc
    for field, data in media.items():
        _check_media(rt, field, data)
    if not media and not item_text(metadata):
        raise HTTPException(422, "an item needs text fields in metadata, an image or audio; none was given")
    return item_id, metadata, media


@router.post("/items", status_code=202, response_model=IngestAccepted, openapi_extra=_INGEST_BODY)
async def create_item(request: Request, rt: RuntimeDep) -> JSONResponse:
    """Upload (or replace) an item; a worker embeds it. Poll GET /jobs/{job_id}."""
    item_id, metadata, media = await _parse(request, rt)
    hashes = {field: rt.store.put(item_id, field, data).sha256 for field, data in media.items()}
    with Session(rt.engine) as session:
        record = session.get(ItemRecord, item_id)
        if record is None:
            record = ItemRecord(item_id=item_id, revision=1)
            session.add(record)
        else:
            record.revision += 1
            record.updated_at = utcnow()
        record.metadata_, record.media = metadata, hashes
        job = Job(kind="embed", item_id=item_id, revision=record.revision, status="queued")
        session.add(job)
        session.commit()
        job_id = job.job_id
    try:
        request.app.state.celery.send_task("thaw.embed_item", args=[item_id, job_id])
    except Exception as exc:  # broker down: the job stays queued and is re-sent on restart
        raise HTTPException(503, f"job {job_id} recorded but the broker is unreachable: {exc}") from exc
    return JSONResponse({"item_id": item_id, "job_id": job_id}, status_code=202)


def _valid_id(item_id: str) -> str:
    try:
        return check_id(item_id)
    except InvalidIdError as exc:
        raise HTTPException(422, str(exc)) from exc


@router.get("/items/{item_id}", response_model=ItemPublic)
def read_item(item_id: str, rt: RuntimeDep) -> ItemPublic:
    item_id = _valid_id(item_id)
    hit = get_item(rt.index, item_id)
    with Session(rt.engine) as session:
        record = session.get(ItemRecord, item_id)
        job = session.query(Job).filter(Job.item_id == item_id).order_by(Job.created_at.desc()).first()
        job_info = None if job is None else {"job_id": job.job_id, "status": job.status, "error": job.error}
    if hit is None and record is None:
        raise HTTPException(404, f"item {item_id!r} does not exist")
    payload = hit.payload if hit else {}
    return ItemPublic(
        item_id=item_id,
        metadata=(record.metadata_ if record else payload.get("metadata")) or {},
        modalities=payload.get("modalities", []),
        indexed=hit is not None,
        model_version=payload.get("model_version"),
        interactions=int(payload.get("interactions", 0)),
        created_at=record.created_at if record else payload.get("created_at"),
        job=job_info,
    )


@router.get("/items/{item_id}/similar", response_model=SimilarItems)
def similar_items(
    item_id: str,
    rt: RuntimeDep,
    k: Annotated[int, Query(ge=1, le=1000)] = 10,
    using: VectorName = "content",
    filter: Annotated[str | None, Query(description='payload filter, JSON: {"modalities": "image"}')] = None,
) -> SimilarItems:
    item_id = _valid_id(item_id)
    match = None
    if filter:
        try:
            match = json.loads(filter)
        except json.JSONDecodeError as exc:
            raise HTTPException(422, f"filter must be a JSON object: {exc}") from exc
        if not isinstance(match, dict) or not all(isinstance(v, str | int | bool) for v in match.values()):
            raise HTTPException(422, "filter must be a JSON object of field: string|number|bool")
    try:
        hits = similar(rt.index, item_id, using, k, match)
    except NotIndexedError as exc:
        raise HTTPException(404, str(exc)) from exc
    return SimilarItems(
        item_id=item_id, using=using, items=[ScoredItem(item_id=h.item_id, score=h.score) for h in hits]
    )
