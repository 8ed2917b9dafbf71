"""The one schema module: item/user ids, modalities, vector names and point-id derivation."""

from __future__ import annotations

import functools
import re
import uuid
from enum import StrEnum
from typing import Literal, get_args

from thaw.errors import InvalidInputError

Modality = Literal["text", "image", "audio"]
MODALITIES: tuple[Modality, ...] = get_args(Modality)

# Named vectors of the items collection.
CF = "cf"  # learned (or folded-in) collaborative-filtering factors; items with interactions only
CONTENT = "content"  # factors predicted from content by the fused encoders
# Item-to-item similarity compares directions: it searches a cosine twin of `cf` and `content`, written with each,
# so an item with a large norm cannot top every similar list (scoring users against items keeps the dot product).
SIMILARITY_VECTORS = {CF: f"{CF}_cosine", CONTENT: f"{CONTENT}_cosine"}
CF_SOURCE = "cf_source"  # payload key: "als" where the CF vector is the version's learned factors (events keep it)
VectorName = Literal["content", "cf", "text", "image", "audio"]


class JobStatus(StrEnum):
    """A job's life: queued -> running -> succeeded | failed (a transient failure puts it back to queued)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED)


UNFINISHED = (JobStatus.QUEUED, JobStatus.RUNNING)
JobKind = Literal["embed", "reembed", "batch"]  # one item's embedding; a re-embedding with a version; a batch upload


class ItemStatus(StrEnum):
    """One item of a re-embedding job: pending -> done | failed."""

    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


ITEM_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$"
_ITEM_ID_RE = re.compile(ITEM_ID_PATTERN)
_NAMESPACE = uuid.UUID("6f1c1a52-6a8b-4f0e-9d8e-3c2b7f4a9e10")

# Text fields joined, in this order, into the text an encoder reads; other string fields follow.
TEXT_FIELDS_FIRST = ("title", "genres", "description", "director", "writer", "cast")
NON_TEXT_FIELDS = frozenset({"item_id", "image", "audio"})
FREE_TEXT_FIELDS = frozenset({"title", "description"})  # prose: read by the text encoder, never tokenised as tags
MAX_TAG_CHARS = 48
_YEAR_RE = re.compile(r"\b(1[89]\d\d|20\d\d)\b")
WORD_PREFIX = "words:"  # item_words' tokens: `words:field=word`
_WORD_RE = re.compile(r"[^\W_]{2,}")  # runs of two or more letters or digits


class InvalidIdError(InvalidInputError):
    """An item or user id that is empty, too long or has characters outside [A-Za-z0-9._:-]."""


def check_id(value: object, kind: str = "item_id") -> str:
    """Return `value` as a valid id string, or raise InvalidIdError saying what was expected."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidIdError(f"{kind} must be a string, got {type(value).__name__}")
    text = str(value)
    if not _ITEM_ID_RE.fullmatch(text):  # `$` alone would let a trailing newline through
        raise InvalidIdError(
            f"{kind} must be 1-128 characters of letters, digits, '.', '_', ':' or '-' "
            f"starting with a letter or digit; got {text[:40]!r}"
        )
    return text


@functools.lru_cache(maxsize=1 << 16)
def point_id(item_id: str) -> str:
    """Deterministic Qdrant point id for an item: a repeated upsert overwrites instead of duplicating. Cached: a
    request maps every item of the user's history (up to 500) to excluded point ids."""
    return str(uuid.uuid5(_NAMESPACE, f"item:{item_id}"))


def user_point_id(user_id: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"user:{user_id}"))


def item_text(fields: dict[str, object]) -> str:
    """Flatten an item's text fields (strings and lists of strings) into one passage for the text encoder."""
    keys = [k for k in TEXT_FIELDS_FIRST if k in fields]
    keys += sorted(k for k in fields if k not in keys and k not in NON_TEXT_FIELDS)
    parts: list[str] = []
    for key in keys:
        value = fields[key]
        if isinstance(value, str) and value.strip():
            parts.append(value.strip() if key in ("title", "description") else f"{key}: {value.strip()}")
        elif isinstance(value, list):
            words = [str(v).strip() for v in value if isinstance(v, str | int | float) and str(v).strip()]
            if words:
                parts.append(f"{key}: {', '.join(words)}")
    return ". ".join(parts)


def item_tags(fields: dict[str, object]) -> frozenset[str]:
    """Categorical tokens of an item's metadata for the tag features beside the text embedding:

    - `field=value` for every element of a list field and every short string field (`genres=Comedy`,
      `director=John Lasseter`, `age_rating=PG`); prose fields (title, description) are left to the text encoder;
    - `year=1995` and `decade=199x` for every four-digit year in any string field (release dates, titles);
    - `has:field` and `len:field=b` (b = bit length of the field's length) for every non-empty field, so how much
      is known about an item is a feature too.
    """
    tags: set[str] = set()
    for key, value in fields.items():
        if key in NON_TEXT_FIELDS or value is None or value == "" or value == []:
            continue
        tags.add(f"has:{key}")
        if isinstance(value, list):
            words = [str(v).strip() for v in value if isinstance(v, str | int | float) and str(v).strip()]
            tags.update(f"{key}={w}" for w in words if len(w) <= MAX_TAG_CHARS)
            tags.add(f"len:{key}={len(words).bit_length()}")
        elif isinstance(value, str):
            text = value.strip()
            if key not in FREE_TEXT_FIELDS and len(text) <= MAX_TAG_CHARS:
                tags.add(f"{key}={text}")
            tags.add(f"len:{key}={len(text).bit_length()}")
            for year in _YEAR_RE.findall(text):
                tags.update((f"year={year}", f"decade={year[:3]}x"))
        elif isinstance(value, bool | int):
            tags.add(f"{key}={value}")
    return frozenset(tags)


def item_words(fields: dict[str, object]) -> frozenset[str]:
    """Word tokens of an item's prose, for the tags' target encoding (`encoders.tags.TagFactors`; never in the TF-IDF
    tag vocabulary): `words:field=word` for every lower-cased run of two or more letters or digits in each string
    field that `item_tags` does not take whole (title, description and strings longer than MAX_TAG_CHARS)."""
    tokens: set[str] = set()
    for key, value in fields.items():
        if key in NON_TEXT_FIELDS or not isinstance(value, str):
            continue
        text = value.strip()
        if key in FREE_TEXT_FIELDS or len(text) > MAX_TAG_CHARS:
            words = _WORD_RE.findall(text.lower())
            tokens.update(f"{WORD_PREFIX}{key}={w}" for w in words if len(w) <= MAX_TAG_CHARS)
    return frozenset(tokens)


def item_tokens(fields: dict[str, object]) -> frozenset[str]:
    """Everything an item's metadata gives the tag features: `item_tags` and `item_words`."""
    return item_tags(fields) | item_words(fields)
