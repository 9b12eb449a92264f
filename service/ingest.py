"""Ingest: what a client sent -> the engine's inputs. Every wire form of a video ends here.

The HTTP layer hands over the parsed request body (JSON text, or a multipart form's fields and
file parts); this module validates it into a wire request and turns each of its video references
into a ``VideoSource``:

- ``{"data"}`` base64 container, multipart container part -> ``EncodedVideo``
- ``{"frames", "fps"}`` base64 .npy, multipart ``application/x-npy`` part + ``fps`` -> ``RawFrames``
- ``{"url"}`` -> ``VideoURL`` (fetched by ``resolve``, in the engine, under its limits)
- ``{"sha256"}`` -> ``Digest`` (scored from the cache only; the engine answers ``not_cached`` else)

``.npy`` frames are checked from their header (no pickle, uint8 [T, H, W, 3], C order, size under
the limit) before anything is allocated; a binary part is then read straight into the one array.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import BinaryIO, TypeVar

import numpy as np
from pydantic import ValidationError
from vrs_wire import npy
from vrs_wire.schemas import NPY_MEDIA_TYPE, CompareRequest, RankRequest, ScoreRequest, VideoRef

from service.errors import BadInput, InvalidRequest, ServiceError, TooLarge, shown
from service.fetch import checked_url

WireRequest = TypeVar("WireRequest", ScoreRequest, CompareRequest, RankRequest)


@dataclass(frozen=True)
class EncodedVideo:
    """A video container (mp4, webm, ...): bytes, or a seekable file (an upload spooled to disk)."""

    data: bytes | BinaryIO
    _lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    @contextmanager
    def reading(self) -> Iterator[BinaryIO]:
        """The container as a stream from its start; a file is read by one thread at a time."""
        if isinstance(self.data, bytes):
            yield io.BytesIO(self.data)  # shares the bytes, no copy
            return
        with self._lock:
            self.data.seek(0)
            yield self.data


@dataclass(frozen=True)
class RawFrames:
    """Decoded frames uint8 [T, H, W, 3] and their frame rate."""

    frames: np.ndarray
    fps: float


@dataclass(frozen=True)
class VideoURL:
    url: str


@dataclass(frozen=True)
class Digest:
    """A video sent before, by content address (``vrs_wire.npy``); ``fps`` set for raw frames."""

    sha256: str
    fps: float | None = None


VideoSource = EncodedVideo | RawFrames | VideoURL | Digest


@dataclass(frozen=True)
class ScoreInput:
    """One video to score, with its prompt (if the models want one)."""

    source: VideoSource
    prompt: str | None = None


@dataclass(frozen=True)
class Upload:
    """A multipart file part: its content type and the (spooled) file holding its bytes."""

    content_type: str
    file: BinaryIO
    size: int | None = None

    @cached_property
    def video(self) -> EncodedVideo:
        """The part as a container, left spooled (one per part, so its readers share one lock)."""
        return EncodedVideo(self.file)


def json_budget(max_items: int) -> int:
    """How many JSON values (containers and list or object members) a request may hold: a request of
    ``max_items`` items needs a few dozen each; the rest is room for models, weights and prompts."""
    return 4096 + 64 * max_items


# A JSON string (escapes included, no backtracking) or a structural character outside strings.
_STRING_OR_STRUCTURE = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"|[\[{,]')


def json_values_over(raw: bytes, limit: int) -> bool:
    """Whether ``raw`` holds more than ``limit`` arrays, objects and member separators outside its
    strings. pydantic builds the whole document before it validates, at about 400 bytes per value
    (a 100 MB body of tiny items: 4.1 GB, loadtests/bench_json_values.py); this bounds that.
    Counting is three ``bytes.count`` passes; only a body whose raw count is over ``limit`` (many
    commas in prompts, or an attack) is scanned string-aware, stopping at ``limit``."""
    if raw.count(b"[") + raw.count(b"{") + raw.count(b",") <= limit:
        return False
    values = 0
    for match in _STRING_OR_STRUCTURE.finditer(raw):
        if match.end() - match.start() == 1:  # not a string (those are 2 or more bytes with their quotes)
            values += 1
            if values > limit:
                return True
    return False


def parse_json(kind: type[WireRequest], raw: bytes | str, max_values: int = json_budget(64)) -> WireRequest:
    """Validate a JSON request; one with more than ``max_values`` values is refused (413) unparsed."""
    raw = raw.encode() if isinstance(raw, str) else raw
    if json_values_over(raw, max_values):
        raise TooLarge(
            f"the JSON request holds more than {max_values} values (arrays, objects and their members); "
            "a request within the item limit needs far fewer"
        )
    try:
        return kind.model_validate_json(raw)
    except ValidationError as exc:
        raise InvalidRequest.from_errors(exc.errors()) from None


def parse_form(
    kind: type[WireRequest],
    fields: Mapping[str, Sequence[str]],
    uploads: Mapping[str, Upload],
    max_values: int = json_budget(64),
) -> WireRequest:
    """A multipart request: its ``request`` field (the JSON request), or plain fields that apply to
    every file part (``prompt``, ``model`` (repeatable), ``weights`` (JSON), ``preset``,
    ``normalise``, ``cache``, ``fps`` for ``application/x-npy`` parts, and for /v1/rank ``top_k``,
    ``advantage_eps``, ``advantage_std``). An empty field counts as not sent, as an HTML form sends
    every field it has, filled or not. Any other field is refused, as JSON refuses unknown keys: a
    misspelt option must not be silently ignored."""
    fields = {name: [v for v in values if v != ""] for name, values in fields.items()}
    first = {name: values[0] for name, values in fields.items() if values}
    known = FORM_FIELDS | (RANK_FORM_FIELDS if kind is RankRequest else set())
    if unknown := sorted(set(fields) - known):
        raise InvalidRequest(
            f"{shown(unknown[0][:80])}: not a form field of this endpoint (it takes {', '.join(sorted(known))})"
        )
    if "request" in first:
        if len(first) > 1:
            raise InvalidRequest("request: give the JSON request alone, or plain fields, not both")
        return parse_json(kind, first["request"], max_values)
    if not uploads:
        raise BadInput("multipart request has no file parts", code="no_items")
    try:
        weights = json.loads(first["weights"]) if "weights" in first else None
    except json.JSONDecodeError as exc:
        raise BadInput(f"weights: not JSON: {exc}", code="bad_weights") from None
    except (RecursionError, ValueError) as exc:  # nested too deep; an integer past Python's digit limit
        raise BadInput(f"weights: not a weights object ({type(exc).__name__})", code="bad_weights") from None
    fps = _number(first.get("fps"))  # form fields are text; the wire types are strict
    refs = [{"file": name, **({"fps": fps} if fps and _is_npy(u) else {})} for name, u in uploads.items()]
    prompt = first.get("prompt")
    request = {
        "models": list(fields.get("model", ())) or None,
        "weights": weights,
        "preset": first.get("preset"),
        "normalise": _boolean(first.get("normalise", "false")),
        "cache": first.get("cache") or "use",
    }
    if kind is RankRequest:
        request |= {"top_k": _number(first["top_k"], int)} if "top_k" in first else {}
        request |= {"advantage_eps": _number(first["advantage_eps"])} if "advantage_eps" in first else {}
        request |= {"advantage_std": first["advantage_std"]} if "advantage_std" in first else {}
    if kind is ScoreRequest:
        request["items"] = [{"video": ref, "prompt": prompt} for ref in refs]
    else:
        request |= {"videos": refs, "prompt": prompt}
    try:
        return kind.model_validate(request)
    except ValidationError as exc:
        raise InvalidRequest.from_errors(exc.errors()) from None


FORM_FIELDS = {"request", "prompt", "model", "weights", "preset", "normalise", "cache", "fps"}
RANK_FORM_FIELDS = {"top_k", "advantage_eps", "advantage_std"}


def _number(text: str | None, kind: type = float) -> int | float | str | None:
    """A form field as a ``kind`` when it reads as one; otherwise as given, for validation to name it."""
    try:
        return kind(text) if text else None
    except ValueError:
        return text


def _boolean(text: str) -> bool | str:
    """A form field as a bool when it reads as one (true/false, 1/0, yes/no); otherwise as given."""
    return {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(text.lower(), text)


def check_count(items: int, max_items: int) -> None:
    """413 for a request of more than ``max_items`` items."""
    if items > max_items:
        raise TooLarge(f"{items} items in one request; the limit is {max_items}")


def to_inputs(body: WireRequest, uploads: Mapping[str, Upload], max_bytes: int, max_items: int) -> list[ScoreInput]:
    """The request's videos as engine inputs; an error names the item it came from. The item count
    is checked first, so an oversized request is refused before any of its videos is decoded."""
    videos = body.videos_with_prompts()
    check_count(len(videos), max_items)
    inputs, errors = [], []
    for i, (video, prompt) in enumerate(videos):
        try:
            inputs.append(ScoreInput(source=to_source(video, uploads, max_bytes), prompt=prompt))
        except ServiceError as exc:
            errors.append(exc.for_item(i))
    if errors:  # the first bad item answers; `others` lists the rest
        errors[0].others = errors[1:]
        raise errors[0]
    return inputs


def to_source(ref: VideoRef, uploads: Mapping[str, Upload], max_bytes: int) -> VideoSource:
    """One wire video reference -> a source (base64 and .npy are decoded here, URLs are not fetched)."""
    if ref.url is not None:
        checked_url(ref.url)  # a malformed URL fails here, with the other ingest errors
        return VideoURL(ref.url)
    if ref.sha256 is not None:
        return Digest(ref.sha256, ref.fps)
    if ref.data is not None:
        return EncodedVideo(decode_base64(ref.data, max_bytes=max_bytes, what="data"))
    if ref.frames is not None:
        return parse_npy(decode_base64(ref.frames, max_bytes=max_bytes, what="frames"), ref.fps, max_bytes=max_bytes)
    upload = uploads.get(ref.file)  # type: ignore[arg-type]
    if upload is None:
        raise BadInput(f"no file part named {shown(ref.file)} in the upload", code="missing_file")
    if _is_npy(upload):
        return parse_npy(upload.file, ref.fps, max_bytes=max_bytes, what=f"file part {shown(ref.file)}")
    if ref.fps is not None:
        raise BadInput(
            f"fps is for raw frames; send file part {shown(ref.file)} as {NPY_MEDIA_TYPE}", code="bad_frames"
        )
    size = upload.size if upload.size is not None else upload.file.seek(0, io.SEEK_END)
    if size > max_bytes:
        raise TooLarge(f"file part {shown(ref.file)} is {size} bytes; the limit is {max_bytes}")
    return upload.video  # read from its spool file by the stages that need it, never whole into memory


def _is_npy(upload: Upload) -> bool:
    return upload.content_type.split(";")[0].strip().lower() == NPY_MEDIA_TYPE


def decode_base64(text: str, *, max_bytes: int, what: str) -> bytes:
    """Strictly decode standard base64 (a ``data:...;base64,`` prefix is allowed)."""
    if text.startswith("data:") and "," in text[:200]:
        text = text.split(",", 1)[1]
    if len(text) > (max_bytes + 2) // 3 * 4 + 4:
        raise TooLarge(f"{what} is larger than the limit of {max_bytes} bytes")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadInput(f"{what} is not valid base64: {exc}", code="bad_base64") from exc


def parse_npy(
    source: bytes | BinaryIO, fps: float | None, *, max_bytes: int | None = None, what: str = "frames"
) -> RawFrames:
    """A ``.npy`` holding uint8 [T, H, W, 3] frames, from bytes (viewed in place, not copied) or a
    file (read into one new array). The header is checked before any allocation."""
    f = io.BytesIO(source) if isinstance(source, bytes) else source
    f.seek(0)
    try:
        version = np.lib.format.read_magic(f)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in read_header:
            raise ValueError(f"unsupported .npy version {version}")
        shape, fortran_order, dtype = read_header[version](f)
    except Exception as exc:  # numpy raises ValueError / EOFError / OSError / SyntaxError for bad headers
        raise BadInput(f"{what} are not a readable .npy array: {exc}", code="bad_frames") from None
    if dtype != np.uint8 or dtype.hasobject:
        raise BadInput(f"{what} must have dtype uint8, got {dtype}", code="bad_frames")
    if len(shape) != 4 or shape[-1] != 3:
        raise BadInput(f"{what} must have shape [T, H, W, 3], got {list(shape)}", code="bad_frames")
    if fortran_order:
        raise BadInput(f"{what} must be C-ordered (np.save of a C-contiguous array)", code="bad_frames")
    if any(d < 0 for d in shape):  # numpy's header reader checks they are integers, not their sign
        raise BadInput(f"{what} must have a shape of non-negative integers, got {list(shape)}", code="bad_frames")
    if 0 in shape:
        raise BadInput(f"{what} are empty: shape {list(shape)}", code="no_frames")
    if fps is None or not fps > 0:
        raise BadInput(f"{what} need a positive fps, got {fps}", code="bad_frames")
    size = math.prod(shape)  # Python integers: a shape like (2**32, 2**32, 1, 3) cannot wrap to 0
    if max_bytes is not None and size > max_bytes:
        raise TooLarge(f"{what}: {list(shape)} is {size} bytes of frames; the limit is {max_bytes}")
    if isinstance(source, bytes):
        if len(source) - f.tell() < size:
            raise BadInput(f"{what} are truncated: {len(source) - f.tell()} of {size} bytes", code="bad_frames")
        frames = np.frombuffer(source, dtype=np.uint8, count=size, offset=f.tell()).reshape(shape)
    else:
        frames = np.empty(shape, dtype=np.uint8)
        got = _read_into(f, memoryview(frames).cast("B"))  # type: ignore[arg-type]  # numpy 1.x stubs: ndarray a Buffer only on 3.12+
        if got < size:
            raise BadInput(f"{what} are truncated: {got} of {size} bytes", code="bad_frames")
    return RawFrames(frames=frames, fps=float(fps))


def _read_into(f: BinaryIO, out: memoryview) -> int:
    done = 0
    while done < out.nbytes:
        chunk = f.read(min(npy.CHUNK, out.nbytes - done))
        if not chunk:
            break
        out[done : done + len(chunk)] = chunk
        done += len(chunk)
    return done
