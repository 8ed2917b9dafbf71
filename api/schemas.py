"""API: request and response models, built on thaw.schema's ids and vector names."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from thaw.schema import VectorName, check_id

MetadataValue = str | int | float | bool | list[str | int | float] | None


def check_metadata(value: object) -> dict[str, Any]:
    """Metadata must be a JSON object of text fields (strings, numbers, lists of them)."""
    if not isinstance(value, dict):
        raise ValueError(f"metadata must be a JSON object of text fields, got {type(value).__name__}")
    for key, v in value.items():
        ok = (
            isinstance(v, str | int | float | bool)
            or v is None
            or (isinstance(v, list) and all(isinstance(x, str | int | float) for x in v))
        )
        if not ok:
            raise ValueError(f"metadata field {key!r} must be a string, number or list of them, got {type(v).__name__}")
    return value


class ItemBase(BaseModel):
    item_id: str
    metadata: dict[str, MetadataValue] = Field(default_factory=dict)

    @field_validator("item_id", mode="before")
    @classmethod
    def _id(cls, v: object) -> str:
        return check_id(v)


class ItemCreate(ItemBase):
    """JSON body for a text-only item."""


class IngestAccepted(BaseModel):
    item_id: str
    job_id: str


class ItemPublic(ItemBase):
    modalities: list[str]
    indexed: bool
    model_version: str | None = None
    interactions: int = 0
    created_at: datetime | None = None
    job: dict[str, Any] | None = None


class JobPublic(BaseModel):
    job_id: str
    kind: str
    status: Literal["queued", "running", "succeeded", "failed"]
    error: str | None = None
    item_id: str | None = None
    attempts: int = 0
    model_version: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class ScoredItem(BaseModel):
    item_id: str
    score: float


class SimilarItems(BaseModel):
    item_id: str
    using: VectorName
    items: list[ScoredItem]


class Recommendations(BaseModel):
    rec_id: str
    user_id: str
    alpha: float
    model_version: str
    items: list[ScoredItem]


class EventIn(BaseModel):
    user_id: str
    item_id: str
    weight: float = Field(default=1.0, gt=0, le=1000)
    type: str = Field(default="interaction", max_length=32)
    rec_id: str | None = Field(default=None, max_length=64)

    @field_validator("user_id", "item_id", mode="before")
    @classmethod
    def _ids(cls, v: object) -> str:
        return check_id(v, "id")


class EventsAccepted(BaseModel):
    accepted: int
