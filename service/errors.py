"""Errors the gateway reports to clients: a code, a message, the item it concerns, a status."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from models.judges import spec as judges

MAX_MESSAGE = 1000  # characters of a message sent back; a client's megabyte of text is not echoed


def shown(value: object, limit: int = 80) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters (and saying so)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class ServiceError(Exception):
    """Base class; subclasses fix the HTTP status. ``item`` is the request item's index."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, item: int | None = None, code: str | None = None) -> None:
        if len(message) > MAX_MESSAGE:
            message = message[:MAX_MESSAGE] + "... (cut)"
        super().__init__(message)
        self.message = message
        self.item = item
        self.others: list[ServiceError] = []  # further failed items of the same request
        if code:
            self.code = code

    def for_item(self, item: int) -> ServiceError:
        self.item = item
        return self

    def to_dict(self) -> dict:
        body: dict = {"code": self.code, "message": self.message, "item": self.item}
        if self.others:
            body["others"] = [{"code": e.code, "message": e.message, "item": e.item} for e in self.others]
        return body


class BadInput(ServiceError):
    status, code = 400, "bad_input"


class UnsupportedMedia(ServiceError):
    status, code = 415, "unsupported_media"


class Unprocessable(ServiceError):
    status, code = 422, "unprocessable_video"


class TooLarge(ServiceError):
    status, code = 413, "too_large"


class Overloaded(ServiceError):
    status, code = 429, "overloaded"

    def __init__(self, message: str, *, retry_after_s: float = 1.0, **kw) -> None:
        super().__init__(message, **kw)
        self.retry_after_s = retry_after_s


class BackendUnavailable(ServiceError):
    status, code = 503, "backend_unavailable"


class UpstreamUnavailable(ServiceError):
    """A judge's upstream is down, overloaded or timing out (after the client's retries)."""

    status, code = 503, "upstream_unavailable"

    def __init__(self, message: str, *, retry_after_s: float | None = None, **kw) -> None:
        super().__init__(message, **kw)
        self.retry_after_s = retry_after_s


class UpstreamRejected(ServiceError):
    """A judge's upstream refused the request or answered something else than a chat completion."""

    status, code = 502, "upstream_rejected"


def judge_failure(model: str, exc: judges.JudgeError) -> ServiceError:
    """A judge's failure on one item as the error the client gets: an answer the parser cannot read
    is the item's (422 ``judge_answer``, with the raw text), an upstream failure is the service's."""
    if isinstance(exc, judges.JudgeAnswerError):
        return Unprocessable(
            f"judge {model!r} answered in a form it cannot read ({exc.reason}); raw answer: {shown(exc.raw_text, 400)}",
            code="judge_answer",
        )
    if isinstance(exc, judges.UpstreamUnavailable):
        return UpstreamUnavailable(f"judge {model!r}: {exc}", retry_after_s=exc.retry_after_s)
    return UpstreamRejected(f"judge {model!r}: {exc}")


class Timeout(ServiceError):
    status, code = 504, "timeout"


class NotCached(ServiceError):
    """A ``{"sha256"}`` reference whose scores are no longer cached: the client sends the video."""

    status, code = 404, "not_cached"


class InvalidRequest(ServiceError):
    """The request does not match its schema; the message names the first invalid field."""

    status, code = 422, "invalid_request"

    @classmethod
    def from_errors(cls, errors: Sequence[Mapping[str, Any]]) -> InvalidRequest:
        """From pydantic's error list: the first error's field path, and its item index when inside
        one; ``others``: the first error of each other item that has one."""
        found = [cls._one(e) for e in errors] or [cls._one({"loc": (), "msg": "invalid request"})]
        first, seen = found[0], {found[0].item}
        for error in found[1:]:
            if error.item is not None and error.item not in seen:
                seen.add(error.item)
                first.others.append(error)
        return first

    @classmethod
    def _one(cls, error: Mapping[str, Any]) -> InvalidRequest:
        loc = [p for p in error.get("loc", ()) if p != "body"]
        item = loc[1] if len(loc) > 1 and loc[0] in ("items", "videos") and isinstance(loc[1], int) else None
        where = ".".join(str(p)[:80] for p in loc) or "body"
        return cls(f"{where}: {error.get('msg', 'invalid')}", item=item)
