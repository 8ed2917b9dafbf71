"""API: request and response models, built on thaw.schema's ids and vector names."""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from thaw.errors import InvalidInputError, TooLargeError
from thaw.schema import ItemStatus, JobStatus, Modality, VectorName, check_id

MetadataValue = str | int | float | bool | list[str | int | float] | None
MAX_METADATA_BYTES = 1024 * 1024  # an item's metadata as JSON, however it arrives
MAX_BATCH_ITEMS = 1000  # items in one POST /items:batch
MAX_BATCH_BYTES = 256 * 1024 * 1024  # one POST /items:batch request body
MAX_BATCH_METADATA_BYTES = 16 * 1024 * 1024  # the NDJSON part of a batch
MAX_BODY_BYTES = 4 * 1024 * 1024  # any request body but an upload's
FILTER_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def _text(value: str, where: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(f"{where} must be valid Unicode text, got a lone surrogate at {exc.start}") from exc
    return value


def _scalar(value: object, where: str) -> bool:
    if isinstance(value, str):
        _text(value, where)
    elif isinstance(value, float) and not math.isfinite(value):
        raise InvalidInputError(f"{where} must be a finite number, got {value}")
    return isinstance(value, str | int | float | bool)


def check_metadata(value: object) -> dict[str, Any]:
    """Metadata must be a JSON object of text fields (strings, finite numbers, lists of them), valid Unicode,
    at most MAX_METADATA_BYTES as JSON."""
    if not isinstance(value, dict):
        raise InvalidInputError(f"metadata must be a JSON object of text fields, got {type(value).__name__}")
    for key, v in value.items():
        _text(key, "a metadata field name")
        where = f"metadata field {key!r}"
        ok = v is None or _scalar(v, where) or (isinstance(v, list) and all(_scalar(x, where) for x in v))
        if not ok or isinstance(v, list) and any(isinstance(x, bool) for x in v):
            raise InvalidInputError(f"{where} must be a string, number or list of them, got {type(v).__name__}")
    size = len(json.dumps(value, ensure_ascii=False).encode("utf-8"))
    if size > MAX_METADATA_BYTES:
        raise TooLargeError(f"metadata is {size} bytes as JSON, more than the {MAX_METADATA_BYTES}-byte limit")
    return value


def check_filter(match: dict[str, Any] | None) -> dict[str, Any] | None:
    """A payload filter's keys are plain field names (letters, digits, '_'); its values strings, numbers, bools."""
    for key, v in (match or {}).items():
        if not FILTER_KEY.fullmatch(key):
            raise InvalidInputError(f"filter keys must be field names of letters, digits and '_', got {key[:40]!r}")
        if isinstance(v, float) and not math.isfinite(v):
            raise InvalidInputError(f"filter value of {key!r} must be finite, got {v}")
        if isinstance(v, str):
            _text(v, f"filter value of {key!r}")
    return match


def _utc(moment: datetime) -> datetime:
    """Datetimes go out in UTC with their offset (SQLite gives them back naive: they were written in UTC)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_utc)]


class ValidationIssue(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(BaseModel):
    """Every error: a message, or the list of what failed validation."""

    detail: str | list[ValidationIssue]


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": what}
    for code, what in (
        (400, "Malformed request (e.g. a broken multipart body)"),
        (401, "Missing or invalid API key"),
        (404, "Not found"),
        (409, "Conflicts with the state of the service"),
        (413, "Body, file or metadata over its limit"),
        (415, "Unsupported media type"),
        (422, "Invalid input"),
        (503, "Not available now (no model served yet, broker unreachable)"),
    )
}


class ItemBase(BaseModel):
    item_id: str
    metadata: dict[str, MetadataValue] = Field(default_factory=dict)

    @field_validator("item_id", mode="before")
    @classmethod
    def _id(cls, v: object) -> str:
        return check_id(v)


class ItemCreate(ItemBase):
    """JSON body for a text-only item."""


def _refuse_constant(constant: str) -> Any:
    raise InvalidInputError(f"filter values must be finite, got {constant}")


def parse_filter(raw: str | None) -> dict[str, str | int | bool] | None:
    """A `filter` query parameter: a JSON object of payload field -> string, number or bool (None when absent)."""
    if not raw:
        return None
    try:
        match = json.loads(raw, parse_constant=_refuse_constant)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise InvalidInputError(f"filter must be a flat JSON object: {exc}") from exc
    if not isinstance(match, dict) or not all(isinstance(v, str | int | bool) for v in match.values()):
        raise InvalidInputError(
            'filter must be a JSON object of field: string|number|bool, e.g. {"modalities": "image"}'
        )
    return check_filter(match)


MAX_PAGE = 500  # items, events or jobs per page
DEFAULT_PAGE = 50


def encode_cursor(kind: str, *key: str | int) -> str:
    """An opaque page cursor: where the previous page stopped, for one listing (`kind`), as URL-safe base64."""
    raw = json.dumps([kind, *key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(kind: str, cursor: str | None, *types: type) -> tuple[Any, ...] | None:
    """The key an `encode_cursor(kind, ...)` cursor holds, its parts of `types` (None without a cursor);
    InvalidInputError for anything else (another listing's cursor, an edited one)."""
    if not cursor:
        return None
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, RecursionError):
        raw = None
    ok = isinstance(raw, list) and len(raw) == len(types) + 1 and raw[0] == kind
    if not ok or not all(isinstance(v, t) and not isinstance(v, bool) for v, t in zip(raw[1:], types, strict=True)):
        raise InvalidInputError(f"cursor is not one this API gave for {kind}: pass next_cursor of the previous page")
    return tuple(raw[1:])


def moment_cursor(kind: str, cursor: str | None, tiebreak: type) -> tuple[datetime, Any] | None:
    """A cursor holding (an ISO 8601 UTC moment, a tie-breaking id)."""
    key = decode_cursor(kind, cursor, str, tiebreak)
    if key is None:
        return None
    try:
        moment = datetime.fromisoformat(key[0])
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None or (tiebreak is str and check_id_or_none(key[1]) is None):
        raise InvalidInputError(f"cursor is not one this API gave for {kind}: pass next_cursor of the previous page")
    return moment.astimezone(UTC), key[1]


def check_id_or_none(value: object) -> str | None:
    try:
        return check_id(value)
    except InvalidInputError:
        return None


class ItemPatch(BaseModel):
    """PATCH /items/{item_id}: metadata fields to set (null removes a field); the item's media are kept."""

    model_config = ConfigDict(extra="forbid")
    metadata: dict[str, MetadataValue]


class IngestAccepted(BaseModel):
    item_id: str
    job_id: str


class BatchAccepted(BaseModel):
    """POST /items:batch: the one job of the batch; `failed` items were refused at once (the job lists why)."""

    job_id: str
    total: int
    failed: int


class ItemPublic(ItemBase):
    modalities: list[str]
    indexed: bool
    model_version: str | None = None
    interactions: int = 0
    created_at: UtcDatetime | None = None
    job: dict[str, Any] | None = None


class ItemSummary(ItemBase):
    """An item as the catalogue lists it (from the database): its modalities as uploaded, and whether the served
    version holds its point."""

    modalities: list[Modality]
    revision: int
    indexed: bool
    created_at: UtcDatetime
    updated_at: UtcDatetime


class ItemPage(BaseModel):
    items: list[ItemSummary]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null: the last page")


class ItemFailure(BaseModel):
    item_id: str
    error: str


class BatchItemStatus(BaseModel):
    item_id: str
    status: ItemStatus
    error: str | None = None


class JobProgress(BaseModel):
    """A re-embedding or batch upload job's progress: done + failed + pending = total; `skipped` (unchanged content
    already in the version) are counted in `done`; `failures` lists the first 100 failed items with their reasons;
    a batch job lists every item's status in `items`."""

    total: int
    done: int
    failed: int
    pending: int
    skipped: int
    items_per_s: float | None = None
    eta_s: float | None = None
    source_version: str | None = None
    target_version: str | None = None
    filter: dict[str, Any] | None = None
    switched: bool = False
    failures: list[ItemFailure] = Field(default_factory=list)
    items: list[BatchItemStatus] | None = None


class JobPublic(BaseModel):
    job_id: str
    kind: str
    status: JobStatus
    error: str | None = None
    item_id: str | None = None
    attempts: int = 0
    batch_id: str | None = Field(default=None, description="embedding jobs: the job whose task encoded it in a batch")
    model_version: str | None = None
    created_at: UtcDatetime
    started_at: UtcDatetime | None = None
    finished_at: UtcDatetime | None = None
    progress: JobProgress | None = None


class JobPage(BaseModel):
    jobs: list[JobPublic] = Field(description="newest first; without `progress` (GET /jobs/{job_id} has it)")
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null: the last page")


PayloadMatch = dict[str, str | int | bool]


class ReembedCreate(BaseModel):
    """POST /jobs/reembed: re-embed every item (or those whose served payload matches `filter`) with a version."""

    model_version: str = Field(min_length=1, max_length=64)
    filter: PayloadMatch | None = None
    chunk_size: int | None = Field(default=None, ge=1, le=1000)
    max_failed_share: float | None = Field(default=None, ge=0.0, le=1.0)

    @field_validator("filter")
    @classmethod
    def _filter(cls, v: PayloadMatch | None) -> PayloadMatch | None:
        return check_filter(v)


class ReembedAccepted(BaseModel):
    job_id: str
    model_version: str
    total: int
    chunks: int


class JobResumed(BaseModel):
    job_id: str
    chunks: int


class ModelVersionPublic(BaseModel):
    version: str
    dim: int | None = None
    embedding_dims: dict[str, int] = Field(default_factory=dict)
    indexed: bool  # its items and users collections exist
    items: int | None = None  # points in its items collection
    served: bool
    trained_at: UtcDatetime | None = None
    alpha: float | None = Field(default=None, description="the CF/content blend chosen on validation")
    data: dict[str, int | None] = Field(
        default_factory=dict, description="what it was trained on: items (warm), users, interactions"
    )
    validation: dict[str, float] = Field(
        default_factory=dict, description="internal validation figures: cold_val_ndcg@20, n_val_users"
    )


class ModelVersions(BaseModel):
    served: str | None  # where the `items`/`users` aliases point: the serving truth
    running_job: str | None = None
    versions: list[ModelVersionPublic]


class Activated(BaseModel):
    served: str
    previous: str | None
    catch_up_job: str | None = None  # re-embeds, in place, items changed while the version was not served


class ScoredItem(BaseModel):
    item_id: str
    score: float


class SimilarItems(BaseModel):
    item_id: str
    using: VectorName
    items: list[ScoredItem]


class Explanation(BaseModel):
    """Why an item is in the list (with `explain=true`)."""

    source: str = Field(
        description='"history": `items` are the user\'s history items whose content vectors are closest to this '
        "item's, the largest terms of the content similarity in its score, with their cosines in `similarity`; "
        'otherwise the signal that ranked it alone: "cf" (the user\'s CF factors), "popularity" (the fallback), or '
        "an experiment arm's policy"
    )
    items: list[str] = Field(default_factory=list, description="history item ids, the strongest first (up to 3)")
    similarity: list[float] = Field(default_factory=list)


class RecommendedItem(ScoredItem):
    cold: bool | None = None  # no interactions when served
    team: str | None = None  # interleaving: the arm that drafted this position
    because: Explanation | None = Field(default=None, description="with explain=true: why this item is here")


class Recommendations(BaseModel):
    rec_id: str
    user_id: str
    alpha: float | None  # None for policies other than thaw
    model_version: str
    items: list[RecommendedItem]
    experiment_id: str | None = None  # set when the list was served (and logged) for a running experiment
    arm: str | None = None  # the user's arm (None in an interleaving experiment: both arms are in the list)
    fallback: str | None = Field(
        default=None, description='"popularity" for a user the model cannot place: the most-interacted warm items'
    )


class EventIn(BaseModel):
    """One interaction; `timestamp` (ISO 8601 or Unix seconds) says when it happened (default: when received).
    Unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")
    user_id: str
    item_id: str
    weight: float = Field(default=1.0, gt=0, le=1000)
    type: str = Field(default="interaction", max_length=32)
    rec_id: str | None = Field(default=None, max_length=64)
    timestamp: AwareDatetime | None = None

    @field_validator("timestamp", mode="before")
    @classmethod
    def _epoch(cls, v: object) -> object:
        return datetime.fromtimestamp(v, UTC) if isinstance(v, int | float) and not isinstance(v, bool) else v

    @field_validator("user_id", "item_id", mode="before")
    @classmethod
    def _ids(cls, v: object) -> str:
        return check_id(v, "id")


class PastEventPublic(BaseModel):
    item_id: str
    weight: float
    type: str
    rec_id: str | None = None
    timestamp: UtcDatetime


class UserHistory(BaseModel):
    user_id: str
    events: list[PastEventPublic] = Field(description="newest first")
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null: the last page")


class EventsAccepted(BaseModel):
    accepted: int
    joined: int = 0  # events whose rec_id names an exposure of the same user that showed the item


class ArmIn(BaseModel):
    name: str
    policy: str
    share: float | None = Field(default=None, description="traffic share (A/B); unused in interleaving")
    alpha: float | None = Field(default=None, description="thaw only: the CF/content blend (default: the model's)")
    model_version: str | None = Field(default=None, description="thaw only: a trained, indexed version")


class ExperimentCreate(BaseModel):
    """An experiment: `ab` splits users between arms by a salted hash of their id in proportion to the shares;
    `interleaving` serves every user a team-draft interleaving of exactly two arms."""

    name: str = Field(min_length=1, max_length=128)
    kind: Literal["ab", "interleaving"] = "ab"
    arms: list[ArmIn] = Field(min_length=1, max_length=20)
    control: str
    salt: str | None = Field(default=None, max_length=64, description="default: the experiment id")
    start_at: datetime | None = Field(default=None, description="default: now")
    end_at: datetime | None = None

    @model_validator(mode="after")
    def _valid(self) -> ExperimentCreate:
        from thaw.experiments.policies import make_policy
        from thaw.experiments.spec import Arm, spec_problems

        problems, arms = [], []  # every problem at once: each arm's, then the definition's as a whole
        missing_share = False
        for a in self.arms:
            if self.kind == "ab" and a.share is None:
                problems.append(f"arm {a.name!r} needs a share in an A/B experiment")
                missing_share = True
            try:
                policy = make_policy(a.policy, a.alpha, a.model_version)
            except ValueError as exc:
                problems.append(f"arm {a.name!r}: {exc}")
                policy = make_policy("random")  # stands in, so the names, control and shares are checked too
            arms.append(Arm(a.name, policy, a.share or 0.5))
        whole = spec_problems(self.kind, arms, self.control)
        problems += [p for p in whole if not (missing_share and "share" in p)]  # a missing share is said once
        start, end = self.start_at, self.end_at
        for label, moment in (("start_at", start), ("end_at", end)):
            if moment is not None and moment.tzinfo is None:
                problems.append(f"{label} must carry a time zone (e.g. 2025-01-31T12:00:00Z), got {moment}")
        if start is not None and end is not None and start.tzinfo and end.tzinfo and end <= start:
            problems.append(f"end_at ({end}) must be after start_at ({start})")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class ExperimentPublic(BaseModel):
    experiment_id: str
    name: str
    kind: str
    control: str
    salt: str
    arms: list[dict[str, Any]]
    start_at: UtcDatetime
    end_at: UtcDatetime | None
    created_at: UtcDatetime
    status: Literal["scheduled", "running", "ended"]
