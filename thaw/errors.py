"""The error kinds every layer raises; the API maps each kind to one HTTP status, once (api/errors.py)."""

from __future__ import annotations


class ThawError(Exception):
    """Base of the errors that carry a message meant for the caller."""


class InvalidInputError(ThawError, ValueError):
    """The request is malformed or its content is unusable (422): the message says what was expected."""


class UnsupportedMediaError(InvalidInputError):
    """An upload of a kind or content type that is not accepted (415)."""


class TooLargeError(InvalidInputError):
    """A body, file or batch over its limit (413)."""


class NotFoundError(ThawError, LookupError):
    """An id that names nothing (404)."""


class ConflictError(ThawError):
    """The request contradicts the state of the service (409): a job already running, a version not indexed."""


class UnavailableError(ThawError):
    """The service cannot answer now (503): no model served yet, the broker unreachable."""
