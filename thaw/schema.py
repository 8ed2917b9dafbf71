"""The one schema module: item/user ids, modalities, vector names and point-id derivation."""

from __future__ import annotations

import re
import uuid
from typing import Literal, get_args

Modality = Literal["text", "image", "audio"]
MODALITIES: tuple[Modality, ...] = get_args(Modality)

# Named vectors of the items collection.
CF = "cf"  # learned (or folded-in) collaborative-filtering factors; items with interactions only
CONTENT = "content"  # factors predicted from content by the fused encoders
VectorName = Literal["content", "cf", "text", "image", "audio"]

ITEM_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$"
_ITEM_ID_RE = re.compile(ITEM_ID_PATTERN)
_NAMESPACE = uuid.UUID("6f1c1a52-6a8b-4f0e-9d8e-3c2b7f4a9e10")

# Text fields joined, in this order, into the text an encoder reads; other string fields follow.
TEXT_FIELDS_FIRST = ("title", "genres", "description", "director", "writer", "cast")
NON_TEXT_FIELDS = frozenset({"item_id", "image", "audio"})


class InvalidIdError(ValueError):
    """An item or user id that is empty, too long or has characters outside [A-Za-z0-9._:-]."""


def check_id(value: object, kind: str = "item_id") -> str:
    """Return `value` as a valid id string, or raise InvalidIdError saying what was expected."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidIdError(f"{kind} must be a string, got {type(value).__name__}")
    text = str(value)
    if not _ITEM_ID_RE.match(text):
        raise InvalidIdError(
            f"{kind} must be 1-128 characters of letters, digits, '.', '_', ':' or '-' "
            f"starting with a letter or digit; got {text[:40]!r}"
        )
    return text


def point_id(item_id: str) -> str:
    """Deterministic Qdrant point id for an item: a repeated upsert overwrites instead of duplicating."""
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
