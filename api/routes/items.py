"""API: ingest (POST /items), what is stored about an item, and similar items."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from api.deps import DispatcherDep, RuntimeDep, require_model
from api.schemas import (
    IngestAccepted,
    ItemCreate,
    ItemPatch,
    ItemPublic,
    ScoredItem,
    SimilarItems,
    check_metadata,
    parse_filter,
)
from services import items
from services.runtime import Runtime
from thaw.errors import InvalidInputError, TooLargeError, UnsupportedMediaError
from thaw.schema import VectorName, check_id

router = APIRouter(tags=["items"], dependencies=[Depends(require_model)])

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
        raise TooLargeError(f"{field} is larger than the {limit}-byte upload limit")
    if not data:
        raise InvalidInputError(f"{field} file is empty")
    return data


async def _multipart(request: Request, limit: int) -> tuple[str, dict[str, Any], dict[str, bytes]]:
    form = await request.form(max_files=2, max_fields=8)
    raw_id, raw_meta = form.get("item_id"), form.get("metadata") or "{}"
    if not isinstance(raw_id, str) or not isinstance(raw_meta, str):
        raise InvalidInputError("item_id and metadata must be form fields, not files")
    unknown = set(form.keys()) - {"item_id", "metadata", "image", "audio"}
    if unknown:
        raise InvalidInputError(f"unknown form fields {sorted(unknown)}; expected item_id, metadata, image, audio")
    try:
        metadata = check_metadata(json.loads(raw_meta))
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"metadata must be a JSON object: {exc}") from exc
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
    limit = rt.limits.max_upload_bytes
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > 3 * limit:
        raise TooLargeError(f"request body of {length} bytes exceeds the upload limit")
    ctype = request.headers.get("content-type", "")
    if ctype.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        item_id, metadata, media = await _multipart(request, limit)
    elif ctype.startswith("application/json"):
        try:
            body = ItemCreate.model_validate_json(await request.body())
        except ValidationError as exc:
            raise HTTPException(422, exc.errors(include_url=False, include_context=False, include_input=False)) from exc
        item_id, metadata, media = body.item_id, body.metadata, {}
    else:
        raise UnsupportedMediaError(f"send multipart/form-data or application/json, not {ctype or 'no content type'}")
    return check_id(item_id), metadata, media


@router.post("/items", status_code=202, response_model=IngestAccepted, openapi_extra=_INGEST_BODY)
async def create_item(request: Request, rt: RuntimeDep, dispatcher: DispatcherDep) -> JSONResponse:
    """Upload (or replace) an item; a worker embeds it. Poll GET /jobs/{job_id}."""
    item_id, metadata, media = await _parse(request, rt)
    job_id = await run_in_threadpool(items.submit, rt, dispatcher, item_id, metadata, media)  # decoding: off the loop
    return JSONResponse({"item_id": item_id, "job_id": job_id}, status_code=202)


@router.patch("/items/{item_id}", status_code=202, response_model=IngestAccepted)
def patch_item(item_id: str, body: ItemPatch, rt: RuntimeDep, dispatcher: DispatcherDep) -> JSONResponse:
    """Change an item's metadata (a field set to null is removed) and re-embed it with its kept media. Poll GET
    /jobs/{job_id}."""
    item_id = check_id(item_id)
    job_id = items.patch(rt, dispatcher, item_id, dict(body.metadata))
    return JSONResponse({"item_id": item_id, "job_id": job_id}, status_code=202)


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
